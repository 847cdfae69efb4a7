//! Image sniffing from headers (placeholder API; the full parser replaces this file).

use std::fmt;

/// Default cap on either side of an image, in pixels.
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

/// Reads format and dimensions from `data`'s headers.
pub fn sniff(_data: &[u8], _max_side: u32) -> Result<ImageHeader, ImageError> {
    Err(ImageError("image sniffing is not built yet".into()))
}
