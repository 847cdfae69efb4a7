//! Marker segments walked from SOI to EOI, with entropy-coded scan data searched for the
//! next marker: progressive files interleave DHT and further SOS segments between scans.
//! A frame header of height 0, which defers the height to a DNL segment after the first
//! scan, is reported as a zero side: no mainstream encoder writes one.

use super::{be16, corrupt, truncated, ImageFormat, Result};
use std::fmt;

const F: ImageFormat = ImageFormat::Jpeg;
const SOI: u8 = 0xD8;
const EOI: u8 = 0xD9;
const SOS: u8 = 0xDA;
const TEM: u8 = 0x01;

/// A marker's conventional name, for messages.
struct Marker(u8);

impl fmt::Display for Marker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            0xC4 => f.write_str("DHT"),
            0xCC => f.write_str("DAC"),
            m @ 0xC0..=0xCF => write!(f, "SOF{}", m - 0xC0),
            m @ 0xD0..=0xD7 => write!(f, "RST{}", m - 0xD0),
            SOI => f.write_str("SOI"),
            EOI => f.write_str("EOI"),
            SOS => f.write_str("SOS"),
            0xDB => f.write_str("DQT"),
            0xDC => f.write_str("DNL"),
            0xDD => f.write_str("DRI"),
            m @ 0xE0..=0xEF => write!(f, "APP{}", m - 0xE0),
            0xFE => f.write_str("COM"),
            m => write!(f, "marker ff {m:02x}"),
        }
    }
}

/// Start-of-frame markers that carry the image size: SOF0..SOF15 less DHT, JPG and DAC.
fn is_sof(marker: u8) -> bool {
    matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC)
}

pub(super) fn parse(data: &[u8]) -> Result<(u32, u32)> {
    let mut pos = 2; // after SOI
    let mut frame: Option<(u32, u32)> = None;
    let mut scans = 0usize;
    loop {
        let (start, marker) = next_marker(data, pos)?;
        pos = start + 2;
        match marker {
            EOI => {
                let Some(size) = frame else {
                    return Err(corrupt(
                        F,
                        format_args!("EOI at byte {start} comes before any frame header (SOF)"),
                    ));
                };
                if scans == 0 {
                    return Err(corrupt(
                        F,
                        format_args!("EOI at byte {start} comes before any scan (SOS)"),
                    ));
                }
                return Ok(size);
            }
            SOI => {
                return Err(corrupt(
                    F,
                    format_args!("second SOI marker at byte {start}"),
                ));
            }
            0x00 => {
                return Err(corrupt(
                    F,
                    format_args!("stuffed byte ff 00 at byte {start} outside entropy-coded data"),
                ));
            }
            // Standalone markers: no length field follows.
            TEM | 0xD0..=0xD7 => continue,
            _ => {}
        }
        let Some(len_bytes) = data.get(pos..pos + 2) else {
            return Err(truncated(
                F,
                format_args!(
                    "{} segment at byte {start} is cut before its 2-byte length",
                    Marker(marker)
                ),
            ));
        };
        let len = be16([len_bytes[0], len_bytes[1]]) as usize;
        if len < 2 {
            return Err(corrupt(
                F,
                format_args!(
                    "{} segment at byte {start} declares length {len}, less than its own \
                     2-byte length field",
                    Marker(marker)
                ),
            ));
        }
        let Some(body) = data.get(pos + 2..pos + len) else {
            return Err(truncated(
                F,
                format_args!(
                    "{} segment at byte {start} declares {len} bytes but only {} remain",
                    Marker(marker),
                    data.len() - pos
                ),
            ));
        };
        pos += len;
        if is_sof(marker) {
            if frame.is_some() {
                return Err(corrupt(
                    F,
                    format_args!("second frame header {} at byte {start}", Marker(marker)),
                ));
            }
            frame = Some(frame_size(body, marker, start)?);
        } else if marker == SOS {
            if frame.is_none() {
                return Err(corrupt(
                    F,
                    format_args!("scan (SOS) at byte {start} comes before any frame header"),
                ));
            }
            check_scan_header(body, start)?;
            scans += 1;
            pos = skip_entropy_coded(data, pos)?;
        }
    }
}

/// Finds the marker expected at `pos`, skipping fill bytes (`0xFF` repeated); returns the
/// offset of the `0xFF` that immediately precedes the marker code, and the code.
fn next_marker(data: &[u8], pos: usize) -> Result<(usize, u8)> {
    match data.get(pos) {
        None => {
            return Err(truncated(
                F,
                format_args!("the data ends at byte {pos} before the EOI marker"),
            ));
        }
        Some(0xFF) => {}
        Some(&b) => {
            return Err(corrupt(
                F,
                format_args!("expected a marker (ff) at byte {pos}, found {b:02x}"),
            ));
        }
    }
    let fill = data[pos..].iter().take_while(|&&b| b == 0xFF).count();
    let start = pos + fill - 1;
    match data.get(start + 1) {
        Some(&marker) => Ok((start, marker)),
        None => Err(truncated(
            F,
            format_args!("the data ends at byte {} inside a marker", data.len()),
        )),
    }
}

/// Reads a frame header: precision, height, width, then three bytes per component.
fn frame_size(body: &[u8], marker: u8, start: usize) -> Result<(u32, u32)> {
    let components = body.get(5).copied().unwrap_or(0);
    if components == 0 || body.len() != 6 + 3 * usize::from(components) {
        return Err(corrupt(
            F,
            format_args!(
                "{} frame header at byte {start} has {} bytes, which does not fit {} \
                 components",
                Marker(marker),
                body.len(),
                components
            ),
        ));
    }
    let height = be16([body[1], body[2]]);
    let width = be16([body[3], body[4]]);
    Ok((width, height))
}

fn check_scan_header(body: &[u8], start: usize) -> Result<()> {
    let components = body.first().copied().unwrap_or(0);
    if !(1..=4).contains(&components) || body.len() != 4 + 2 * usize::from(components) {
        return Err(corrupt(
            F,
            format_args!(
                "scan header (SOS) at byte {start} has {} bytes, which does not fit {} \
                 components",
                body.len(),
                components
            ),
        ));
    }
    Ok(())
}

/// Skips entropy-coded data from `from` and returns the offset of the marker that ends it.
/// Inside it `ff 00` is a stuffed data byte, `ff d0`..`ff d7` are restart markers, and a
/// run of `ff` is fill before a marker; any other `ff xx` ends the scan.
fn skip_entropy_coded(data: &[u8], from: usize) -> Result<usize> {
    let mut pos = from;
    loop {
        let Some(offset) = data.get(pos..).and_then(|rest| memchr::memchr(0xFF, rest)) else {
            return Err(truncated(
                F,
                format_args!(
                    "the entropy-coded data that starts at byte {from} runs to the end of \
                     the data ({} bytes) without reaching the EOI marker",
                    data.len()
                ),
            ));
        };
        let ff = pos + offset;
        match data.get(ff + 1) {
            None => {
                return Err(truncated(
                    F,
                    format_args!("the data ends at byte {} inside a marker", data.len()),
                ));
            }
            Some(0x00 | 0xD0..=0xD7) => pos = ff + 2,
            Some(0xFF) => pos = ff + 1,
            Some(_) => return Ok(ff),
        }
    }
}
