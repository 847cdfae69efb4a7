//! Signature, `IHDR` first (CRC-checked), then chunk lengths walked to `IEND`.

use super::{corrupt, Cursor, FourCc, ImageFormat, Result, PNG_SIGNATURE};

const F: ImageFormat = ImageFormat::Png;
/// PNG caps lengths and dimensions at 2^31 - 1 so they fit a signed 32-bit integer.
const MAX_VALUE: u32 = i32::MAX as u32;

pub(super) fn parse(data: &[u8]) -> Result<(u32, u32)> {
    let mut cur = Cursor::new(data, PNG_SIGNATURE.len(), F);
    let (width, height) = ihdr(&mut cur)?;
    let mut seen_idat = false;
    loop {
        let start = cur.pos;
        let head: [u8; 8] = cur.array("chunk header")?;
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let kind = [head[4], head[5], head[6], head[7]];
        if !kind.iter().all(u8::is_ascii_alphabetic) {
            return Err(corrupt(
                F,
                format_args!(
                    "chunk type at byte {} is {}, not four ASCII letters",
                    start + 4,
                    FourCc(kind)
                ),
            ));
        }
        if len > MAX_VALUE {
            return Err(corrupt(
                F,
                format_args!(
                    "chunk {} at byte {start} declares {len} bytes, above the 2^31-1 limit",
                    FourCc(kind)
                ),
            ));
        }
        // Only IHDR's CRC is verified: checking every chunk would cost as much as hashing
        // the file, and truncation is caught by the lengths.
        cur.skip_declared(
            u64::from(len),
            start,
            format_args!("chunk {}", FourCc(kind)),
        )?;
        cur.take(4, "chunk CRC")?;
        match &kind {
            b"IDAT" => seen_idat = true,
            b"IHDR" => {
                return Err(corrupt(
                    F,
                    format_args!("second IHDR chunk at byte {start}"),
                ));
            }
            b"IEND" if len != 0 => {
                return Err(corrupt(
                    F,
                    format_args!("IEND chunk at byte {start} declares {len} bytes, expected 0"),
                ));
            }
            b"IEND" if !seen_idat => {
                return Err(corrupt(
                    F,
                    format_args!("IEND at byte {start} comes before any IDAT image data"),
                ));
            }
            b"IEND" => return Ok((width, height)),
            _ => {}
        }
    }
}

/// Reads and validates the header chunk, which the format requires to come first.
fn ihdr(cur: &mut Cursor<'_>) -> Result<(u32, u32)> {
    let start = cur.pos;
    let head: [u8; 8] = cur.array("IHDR chunk header")?;
    let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    let kind = [head[4], head[5], head[6], head[7]];
    if &kind != b"IHDR" {
        return Err(corrupt(
            F,
            format_args!(
                "first chunk at byte {start} is {}, expected IHDR",
                FourCc(kind)
            ),
        ));
    }
    if len != 13 {
        return Err(corrupt(
            F,
            format_args!("IHDR at byte {start} declares {len} bytes, expected 13"),
        ));
    }
    let body: [u8; 13] = cur.array("IHDR chunk")?;
    let stored = u32::from_be_bytes(cur.array("IHDR CRC")?);
    let computed = crc32(&[&kind, &body]);
    if stored != computed {
        return Err(corrupt(
            F,
            format_args!(
                "IHDR CRC at byte {} is {stored:08x}, but the chunk's CRC is {computed:08x}",
                start + 21
            ),
        ));
    }
    let width = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
    let height = u32::from_be_bytes([body[4], body[5], body[6], body[7]]);
    let (depth, color, compression, filter, interlace) =
        (body[8], body[9], body[10], body[11], body[12]);
    if width > MAX_VALUE || height > MAX_VALUE {
        return Err(corrupt(
            F,
            format_args!("IHDR declares {width}x{height}, above the 2^31-1 limit"),
        ));
    }
    let depth_ok = match color {
        0 => matches!(depth, 1 | 2 | 4 | 8 | 16),
        3 => matches!(depth, 1 | 2 | 4 | 8),
        2 | 4 | 6 => matches!(depth, 8 | 16),
        _ => {
            return Err(corrupt(
                F,
                format_args!("IHDR color type {color} is not defined"),
            ));
        }
    };
    if !depth_ok {
        return Err(corrupt(
            F,
            format_args!("IHDR bit depth {depth} is not allowed with color type {color}"),
        ));
    }
    if compression != 0 || filter != 0 || interlace > 1 {
        return Err(corrupt(
            F,
            format_args!(
                "IHDR compression {compression}, filter {filter} or interlace {interlace} \
                 method is not defined"
            ),
        ));
    }
    Ok((width, height))
}

/// The CRC-32 (ISO 3309, as PNG uses) lookup table, built at compile time.
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut n = 0;
    while n < 256 {
        let mut c = n as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[n] = c;
        n += 1;
    }
    table
};

/// CRC-32 over the concatenation of `parts`.
pub(super) fn crc32(parts: &[&[u8]]) -> u32 {
    let mut c = u32::MAX;
    for part in parts {
        for &b in *part {
            c = CRC_TABLE[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8);
        }
    }
    !c
}
