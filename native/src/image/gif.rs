//! Logical screen descriptor, then blocks (images, extensions) walked to the 0x3B trailer.

use super::{check_limit, corrupt, le16, Cursor, ImageFormat, Result};

const F: ImageFormat = ImageFormat::Gif;
const IMAGE: u8 = 0x2C;
const EXTENSION: u8 = 0x21;
const TRAILER: u8 = 0x3B;
const COLOR_TABLE_FLAG: u8 = 0x80;

/// `max_side` also bounds every frame's extent: decoders size their buffers by it, and
/// some grow the canvas to fit a frame that overflows the logical screen.
pub(super) fn parse(data: &[u8], max_side: u32) -> Result<(u32, u32)> {
    let mut cur = Cursor::new(data, 6, F);
    let screen: [u8; 7] = cur.array("logical screen descriptor")?;
    let size = (le16(&screen[0..2]), le16(&screen[2..4]));
    // Checked here too so that an oversized screen is reported as such, not by its frames.
    check_limit("image", size.0, size.1, max_side)?;
    skip_color_table(&mut cur, screen[4], "global color table")?;
    let mut frames = 0usize;
    loop {
        let start = cur.pos;
        match cur.u8("block introducer (the GIF has no trailer)")? {
            TRAILER if frames == 0 => {
                return Err(corrupt(
                    F,
                    format_args!("trailer at byte {start} comes before any image"),
                ));
            }
            TRAILER => return Ok(size),
            IMAGE => {
                let desc: [u8; 9] = cur.array("image descriptor")?;
                let right = le16(&desc[0..2]) + le16(&desc[4..6]);
                let bottom = le16(&desc[2..4]) + le16(&desc[6..8]);
                let frame = format!("GIF frame at byte {start}, offset plus size,");
                check_limit(&frame, right, bottom, max_side)?;
                skip_color_table(&mut cur, desc[8], "local color table")?;
                let code_size = cur.u8("LZW minimum code size")?;
                if !(1..=11).contains(&code_size) {
                    return Err(corrupt(
                        F,
                        format_args!(
                            "image at byte {start} declares LZW code size {code_size}, \
                             outside 1..=11"
                        ),
                    ));
                }
                skip_sub_blocks(&mut cur, "image data")?;
                frames += 1;
            }
            EXTENSION => {
                cur.u8("extension label")?;
                skip_sub_blocks(&mut cur, "extension data")?;
            }
            other => {
                return Err(corrupt(
                    F,
                    format_args!(
                        "byte {start} is {other:02x}, expected an image (2c), an extension \
                         (21) or the trailer (3b)"
                    ),
                ));
            }
        }
    }
}

fn skip_color_table(cur: &mut Cursor<'_>, packed: u8, what: &str) -> Result<()> {
    if packed & COLOR_TABLE_FLAG != 0 {
        let entries = 2usize << (packed & 0x07);
        cur.take(3 * entries, what)?;
    }
    Ok(())
}

/// Skips a chain of length-prefixed sub-blocks ending with an empty one.
fn skip_sub_blocks(cur: &mut Cursor<'_>, what: &str) -> Result<()> {
    loop {
        let start = cur.pos;
        let n = cur.u8(what)?;
        if n == 0 {
            return Ok(());
        }
        cur.skip_declared(u64::from(n), start, format_args!("{what} sub-block"))?;
    }
}
