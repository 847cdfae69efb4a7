//! RIFF container (its size checked against the data), then the chunks inside it: a simple
//! file's `VP8 ` or `VP8L` bitstream header, or an extended file's `VP8X` canvas.

use super::{corrupt, le16, le24, le32, truncated, FourCc, ImageFormat, Result};

const F: ImageFormat = ImageFormat::Webp;
const RIFF_HEADER: usize = 12;
const VP8X_ANIMATION: u8 = 0x02;

struct Chunk<'a> {
    start: usize,
    kind: [u8; 4],
    payload: &'a [u8],
}

/// The chunks of a RIFF payload, each padded to an even length.
struct Chunks<'a> {
    riff: &'a [u8],
    pos: usize,
}

impl<'a> Chunks<'a> {
    fn next(&mut self) -> Result<Option<Chunk<'a>>> {
        let start = self.pos;
        let rest = self.riff.get(start..).unwrap_or_default();
        if rest.is_empty() {
            return Ok(None);
        }
        let Some(head) = rest.get(..8) else {
            return Err(truncated(
                F,
                format_args!(
                    "chunk header at byte {start} needs 8 bytes but only {} remain in the \
                     RIFF payload",
                    rest.len()
                ),
            ));
        };
        let kind = [head[0], head[1], head[2], head[3]];
        let size = le32(&head[4..8]) as usize;
        let padded = size.checked_add(size & 1);
        let Some(payload) = padded
            .and_then(|p| rest[8..].get(..p))
            .map(|bytes| &bytes[..size])
        else {
            return Err(truncated(
                F,
                format_args!(
                    "chunk {} at byte {start} declares {size} bytes (padded to even) but \
                     only {} remain in the RIFF payload",
                    FourCc(kind),
                    rest.len() - 8
                ),
            ));
        };
        self.pos = start + 8 + payload.len() + (size & 1);
        Ok(Some(Chunk {
            start,
            kind,
            payload,
        }))
    }
}

pub(super) fn parse(data: &[u8]) -> Result<(u32, u32)> {
    let riff_size = le32(&data[4..8]) as usize;
    if riff_size < 4 {
        return Err(corrupt(
            F,
            format_args!("RIFF size {riff_size} is too small to hold the WEBP form type"),
        ));
    }
    let present = data.len() - 8;
    let Some(riff) = (8usize)
        .checked_add(riff_size)
        .and_then(|end| data.get(..end))
    else {
        return Err(truncated(
            F,
            format_args!(
                "the RIFF header declares {riff_size} bytes after byte 8 but only \
                 {present} are present"
            ),
        ));
    };
    let mut chunks = Chunks {
        riff,
        pos: RIFF_HEADER,
    };
    let Some(first) = chunks.next()? else {
        return Err(corrupt(F, format_args!("the RIFF payload holds no chunk")));
    };
    let size = match &first.kind {
        b"VP8 " => vp8(&first)?,
        b"VP8L" => vp8l(&first)?,
        b"VP8X" => return extended(&first, &mut chunks),
        _ => {
            return Err(corrupt(
                F,
                format_args!(
                    "first chunk at byte {} is {}, expected VP8, VP8L or VP8X",
                    first.start,
                    FourCc(first.kind)
                ),
            ));
        }
    };
    // A simple file holds nothing else that matters, but its chunk list must still be whole.
    while chunks.next()?.is_some() {}
    Ok(size)
}

/// Lossy bitstream: a key frame's 3-byte frame tag, start code, then 14-bit dimensions.
fn vp8(chunk: &Chunk<'_>) -> Result<(u32, u32)> {
    let p = chunk.payload;
    let at = chunk.start;
    if p.len() < 10 {
        return Err(corrupt(
            F,
            format_args!(
                "VP8 chunk at byte {at} has {} bytes, too few for a frame header",
                p.len()
            ),
        ));
    }
    let tag = le24(p);
    if tag & 1 != 0 {
        return Err(corrupt(
            F,
            format_args!("VP8 frame at byte {at} is not a key frame"),
        ));
    }
    if (tag >> 1) & 7 > 3 {
        return Err(corrupt(
            F,
            format_args!(
                "VP8 frame at byte {at} has unknown version {}",
                (tag >> 1) & 7
            ),
        ));
    }
    if (tag >> 4) & 1 == 0 {
        return Err(corrupt(
            F,
            format_args!("VP8 frame at byte {at} is not shown"),
        ));
    }
    if p[3..6] != [0x9D, 0x01, 0x2A] {
        return Err(corrupt(
            F,
            format_args!("VP8 frame at byte {at} lacks the 9d 01 2a start code"),
        ));
    }
    let partition = (tag >> 5) as usize;
    if partition > p.len() - 10 {
        return Err(truncated(
            F,
            format_args!(
                "VP8 frame at byte {at} declares a {partition}-byte first partition but \
                 only {} bytes follow its header",
                p.len() - 10
            ),
        ));
    }
    // The top two bits of each dimension are an upscaling hint, not part of the size.
    Ok((le16(&p[6..8]) & 0x3FFF, le16(&p[8..10]) & 0x3FFF))
}

/// Lossless bitstream: signature 0x2f, then width-1 and height-1 in 14 bits each.
fn vp8l(chunk: &Chunk<'_>) -> Result<(u32, u32)> {
    let p = chunk.payload;
    let at = chunk.start;
    if p.len() < 5 || p[0] != 0x2F {
        return Err(corrupt(
            F,
            format_args!("VP8L chunk at byte {at} lacks the 2f signature and 4-byte header"),
        ));
    }
    let bits = le32(&p[1..5]);
    if bits >> 29 != 0 {
        return Err(corrupt(
            F,
            format_args!("VP8L chunk at byte {at} has unknown version {}", bits >> 29),
        ));
    }
    Ok(((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1))
}

/// Extended file: the `VP8X` canvas is the size. An animation must hold a frame (`ANMF`);
/// a still image must hold a bitstream whose size matches the canvas.
fn extended(header: &Chunk<'_>, chunks: &mut Chunks<'_>) -> Result<(u32, u32)> {
    let p = header.payload;
    if p.len() != 10 {
        return Err(corrupt(
            F,
            format_args!(
                "VP8X chunk at byte {} has {} bytes, expected 10",
                header.start,
                p.len()
            ),
        ));
    }
    let animated = p[0] & VP8X_ANIMATION != 0;
    let canvas = (le24(&p[4..7]) + 1, le24(&p[7..10]) + 1);
    let mut frames = 0usize;
    let mut bitstream = None;
    while let Some(chunk) = chunks.next()? {
        match &chunk.kind {
            b"ANMF" if chunk.payload.len() < 16 => {
                return Err(corrupt(
                    F,
                    format_args!(
                        "ANMF chunk at byte {} has {} bytes, too few for a frame header",
                        chunk.start,
                        chunk.payload.len()
                    ),
                ));
            }
            b"ANMF" => frames += 1,
            b"VP8 " if bitstream.is_none() => bitstream = Some((chunk.start, vp8(&chunk)?)),
            b"VP8L" if bitstream.is_none() => bitstream = Some((chunk.start, vp8l(&chunk)?)),
            _ => {}
        }
    }
    if animated {
        if frames == 0 {
            return Err(corrupt(
                F,
                format_args!("VP8X declares an animation but the file holds no ANMF frame"),
            ));
        }
        return Ok(canvas);
    }
    match bitstream {
        None => Err(corrupt(
            F,
            format_args!("VP8X still image holds no VP8 or VP8L bitstream"),
        )),
        Some((_, size)) if size == canvas => Ok(canvas),
        Some((at, (w, h))) => Err(corrupt(
            F,
            format_args!(
                "VP8X canvas is {}x{} but the bitstream at byte {at} is {w}x{h}",
                canvas.0, canvas.1
            ),
        )),
    }
}
