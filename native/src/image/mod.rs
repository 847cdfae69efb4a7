//! Image sniffing from headers: format and dimensions of PNG, JPEG, WebP and GIF data.
//!
//! The data is never decoded. Each format's container structure is walked from the signature to
//! its end marker (PNG `IEND`, JPEG `EOI`, the RIFF size for WebP, GIF's trailer) so that a
//! truncated or structurally corrupt upload is rejected here rather than by whatever decodes it
//! later. The walk skips payloads by their declared lengths and, for JPEG entropy-coded data,
//! searches for `0xFF` with `memchr`, so it costs a small fraction of hashing the same bytes.
//! Nothing is allocated or copied except to build an error message, and every offset is
//! bounds-checked: any input, however hostile, yields a header or an [`ImageError`].
//!
//! One module per format (`png`, `jpeg`, `webp`, `gif`) walks that format's structure; this
//! module holds what they share (the result and error types, format detection, the bounds-checked
//! cursor) and dispatches to them.
//!
//! Bytes after a format's end marker are tolerated, as every mainstream decoder does; they are
//! still covered by the digest the gateway computes over the whole upload.

use std::fmt;

mod gif;
mod jpeg;
mod png;
mod webp;

#[cfg(test)]
mod tests;

/// Default cap on either side of an image, in pixels, and the most a caller may configure
/// (`bounds.max_image_side` may not exceed it).
///
/// 16384 is the largest texture side mainstream GPUs and browser canvases handle and just above
/// WebP's own limit of 16383; a decoder's buffer for 16384 x 16384 RGBA pixels is already 1 GiB.
/// A side beyond it is not a picture anyone can display but a decompression bomb, so headers
/// claiming one are refused before anything downstream allocates for them.
pub const DEFAULT_MAX_SIDE: u32 = 16_384;

/// The container formats we recognise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Png,
    Jpeg,
    Webp,
    Gif,
}

impl ImageFormat {
    /// The lowercase name used across the gateway (`"png"`, `"jpeg"`, `"webp"`, `"gif"`).
    pub fn as_str(self) -> &'static str {
        match self {
            ImageFormat::Png => "png",
            ImageFormat::Jpeg => "jpeg",
            ImageFormat::Webp => "webp",
            ImageFormat::Gif => "gif",
        }
    }

    /// The name used in error messages.
    fn label(self) -> &'static str {
        match self {
            ImageFormat::Png => "PNG",
            ImageFormat::Jpeg => "JPEG",
            ImageFormat::Webp => "WebP",
            ImageFormat::Gif => "GIF",
        }
    }
}

/// What the headers say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageHeader {
    pub format: ImageFormat,
    pub width: u32,
    pub height: u32,
}

/// Why data is not an acceptable image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageError(pub String);

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ImageError {}

type Result<T> = std::result::Result<T, ImageError>;

/// Reads format and dimensions from `data`'s headers, after checking that its structure is
/// complete, and that neither side is zero or above `max_side` pixels.
pub fn sniff(data: &[u8], max_side: u32) -> Result<ImageHeader> {
    let format = detect(data)?;
    let (width, height) = match format {
        ImageFormat::Png => png::parse(data)?,
        ImageFormat::Jpeg => jpeg::parse(data)?,
        ImageFormat::Webp => webp::parse(data)?,
        ImageFormat::Gif => gif::parse(data, max_side)?,
    };
    if width == 0 || height == 0 {
        return Err(ImageError(format!(
            "image is {width}x{height}: the {} header declares a side of zero pixels",
            format.label()
        )));
    }
    check_limit("image", width, height, max_side)?;
    Ok(ImageHeader {
        format,
        width,
        height,
    })
}

fn check_limit(what: &str, width: u32, height: u32, max_side: u32) -> Result<()> {
    if width > max_side || height > max_side {
        return Err(ImageError(format!(
            "{what} is {width}x{height}, larger than the {max_side}-pixel limit per side"
        )));
    }
    Ok(())
}

const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
const JPEG_SIGNATURE: &[u8] = b"\xff\xd8\xff";
/// `RIFF`, four bytes of size (any value), `WEBP`.
const WEBP_SIGNATURE: &[u8] = b"RIFF\0\0\0\0WEBP";
const WEBP_SIZE_FIELD: std::ops::Range<usize> = 4..8;
const GIF_SIGNATURES: [&[u8]; 2] = [b"GIF87a", b"GIF89a"];

/// Whether `data` starts with `signature`, or is a non-empty proper prefix of it (`partial`).
fn signature_match(data: &[u8], signature: &[u8], wildcard: std::ops::Range<usize>) -> Match {
    let n = data.len().min(signature.len());
    let same = (0..n).all(|i| wildcard.contains(&i) || data[i] == signature[i]);
    match (same, n == signature.len()) {
        (true, true) => Match::Full,
        (true, false) if n > 0 => Match::Partial,
        _ => Match::None,
    }
}

#[derive(PartialEq, Eq)]
enum Match {
    Full,
    Partial,
    None,
}

fn detect(data: &[u8]) -> Result<ImageFormat> {
    let candidates = [
        (ImageFormat::Png, PNG_SIGNATURE, 0..0),
        (ImageFormat::Jpeg, JPEG_SIGNATURE, 0..0),
        (ImageFormat::Webp, WEBP_SIGNATURE, WEBP_SIZE_FIELD),
        (ImageFormat::Gif, GIF_SIGNATURES[0], 0..0),
        (ImageFormat::Gif, GIF_SIGNATURES[1], 0..0),
    ];
    let mut partial = None;
    for (format, signature, wildcard) in candidates {
        match signature_match(data, signature, wildcard) {
            Match::Full => return Ok(format),
            Match::Partial => partial = partial.or(Some(format)),
            Match::None => {}
        }
    }
    if let Some(format) = partial {
        return Err(ImageError(format!(
            "truncated {}: the data ends after {} bytes, inside the signature",
            format.label(),
            data.len()
        )));
    }
    let first = if data.is_empty() {
        "the data is empty".to_owned()
    } else {
        format!("first bytes {}", Hex(&data[..data.len().min(4)]))
    };
    Err(ImageError(format!(
        "unknown image format: expected PNG, JPEG, WebP or GIF ({first})"
    )))
}

/// Space-separated lowercase hex, for quoting bytes in messages.
struct Hex<'a>(&'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// A four-character chunk name (PNG, RIFF), quoted as text when printable and as hex otherwise.
struct FourCc([u8; 4]);

impl fmt::Display for FourCc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
            // Every byte is ASCII, so this is valid UTF-8.
            f.write_str(std::str::from_utf8(&self.0).unwrap_or("????"))
        } else {
            write!(f, "({})", Hex(&self.0))
        }
    }
}

fn corrupt(format: ImageFormat, detail: fmt::Arguments<'_>) -> ImageError {
    ImageError(format!("corrupt {}: {detail}", format.label()))
}

fn truncated(format: ImageFormat, detail: fmt::Arguments<'_>) -> ImageError {
    ImageError(format!("truncated {}: {detail}", format.label()))
}

/// A bounds-checked forward reader; running out of data is reported as truncation of `what`.
struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
    format: ImageFormat,
}

impl<'a> Cursor<'a> {
    fn new(data: &'a [u8], pos: usize, format: ImageFormat) -> Self {
        Cursor { data, pos, format }
    }

    fn remaining(&self) -> usize {
        self.data.len().saturating_sub(self.pos)
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let rest = self.data.get(self.pos..).unwrap_or_default();
        match rest.get(..n) {
            Some(bytes) => {
                self.pos += n;
                Ok(bytes)
            }
            None => Err(truncated(
                self.format,
                format_args!(
                    "{what} at byte {} needs {n} bytes but only {} remain",
                    self.pos,
                    rest.len()
                ),
            )),
        }
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let bytes = self.take(N, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.array::<1>(what)?[0])
    }

    /// Skips a payload of `len` bytes that the structure starting at `start` declares.
    fn skip_declared(&mut self, len: u64, start: usize, what: fmt::Arguments<'_>) -> Result<()> {
        match usize::try_from(len) {
            Ok(n) if n <= self.remaining() => {
                self.pos += n;
                Ok(())
            }
            _ => Err(truncated(
                self.format,
                format_args!(
                    "{what} at byte {start} declares {len} bytes but only {} remain",
                    self.remaining()
                ),
            )),
        }
    }
}

fn be16(b: [u8; 2]) -> u32 {
    u32::from(u16::from_be_bytes(b))
}

fn le16(b: &[u8]) -> u32 {
    u32::from(b[0]) | u32::from(b[1]) << 8
}

fn le24(b: &[u8]) -> u32 {
    le16(b) | u32::from(b[2]) << 16
}

fn le32(b: &[u8]) -> u32 {
    le24(b) | u32::from(b[3]) << 24
}
