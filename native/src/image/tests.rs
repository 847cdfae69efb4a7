use super::*;

/// Files written by Pillow 13 (a 3x2 RGB image), embedded as hex.
const PILLOW_PNG: &str = concat!(
    "89504e470d0a1a0a0000000d49484452000000030000000208020000001216f14d0000001549444154789c63",
    "3c21a7c1c0c0c0c0c0c0c400030013d8011258ecaa7f0000000049454e44ae426082",
);
const PILLOW_JPEG: &str = concat!(
    "ffd8ffe000104a46494600010100000100010000ffdb004300100b0c0e0c0a100e0d0e1211101318281a1816",
    "16183123251d283a333d3c3933383740485c4e404457453738506d51575f626768673e4d71797064785c6567",
    "63ffdb0043011112121815182f1a1a2f63423842636363636363636363636363636363636363636363636363",
    "6363636363636363636363636363636363636363636363636363ffc000110800020003030122000211010311",
    "01ffc4001500010100000000000000000000000000000005ffc4001410010000000000000000000000000000",
    "0000ffc4001501010100000000000000000000000000000406ffc40014110100000000000000000000000000",
    "000000ffda000c03010002110311003f0090008a87ffd9",
);
const PILLOW_WEBP_LOSSY: &str = concat!(
    "52494646340000005745425056503820280000009001009d012a0300020002c04c25a00274ba00039800feed",
    "4ddebbc5a51affe7a67f5b7f1ff8c800",
);
const PILLOW_WEBP_LOSSLESS: &str =
    "524946461e000000574542505650384c110000002f0240000007508f2217a5ff8188e87f0000";
const PILLOW_WEBP_ALPHA: &str = concat!(
    "524946464600000057454250565038580a00000010000000020000010000414c504807000000006464646464",
    "640056503820180000003001009d012a0300020001402625a400037000fefd205000",
);
const PILLOW_GIF: &str = concat!(
    "47494638376103000200810000c81e280000000000000000002c00000000030002000008060001081c181000",
    "3b",
);

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("fixture is hex"))
        .collect()
}

fn ok(data: &[u8]) -> ImageHeader {
    sniff(data, DEFAULT_MAX_SIDE).unwrap_or_else(|e| panic!("rejected valid image: {e}"))
}

fn err(data: &[u8]) -> String {
    match sniff(data, DEFAULT_MAX_SIDE) {
        Ok(h) => panic!("accepted invalid image as {h:?}"),
        Err(e) => e.0,
    }
}

fn header(format: ImageFormat, width: u32, height: u32) -> ImageHeader {
    ImageHeader {
        format,
        width,
        height,
    }
}

// ---- fixture builders -------------------------------------------------------------------

fn png_chunk(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(kind);
    out.extend_from_slice(body);
    out.extend_from_slice(&png::crc32(&[kind, body]).to_be_bytes());
    out
}

fn ihdr(width: u32, height: u32, depth: u8, color: u8) -> Vec<u8> {
    let mut body = width.to_be_bytes().to_vec();
    body.extend_from_slice(&height.to_be_bytes());
    body.extend_from_slice(&[depth, color, 0, 0, 0]);
    png_chunk(b"IHDR", &body)
}

fn png_from(chunks: &[Vec<u8>]) -> Vec<u8> {
    let mut out = PNG_SIGNATURE.to_vec();
    chunks.iter().for_each(|c| out.extend_from_slice(c));
    out
}

fn png_file(width: u32, height: u32) -> Vec<u8> {
    png_from(&[
        ihdr(width, height, 8, 2),
        png_chunk(b"tEXt", b"Comment\0made by hand"),
        png_chunk(b"IDAT", &[0x78, 0x9c, 0x63, 0x60]),
        png_chunk(b"IDAT", &[0x00, 0x00, 0x00, 0x04]),
        png_chunk(b"IEND", b""),
    ])
}

fn segment(marker: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![0xFF, marker];
    out.extend_from_slice(&((body.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn sof_body(width: u16, height: u16) -> Vec<u8> {
    let mut body = vec![8];
    body.extend_from_slice(&height.to_be_bytes());
    body.extend_from_slice(&width.to_be_bytes());
    body.extend_from_slice(&[3, 1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1]);
    body
}

/// Entropy-coded bytes exercising stuffing, a restart marker and fill bytes.
const ENTROPY: &[u8] = &[
    0x12, 0xFF, 0x00, 0x34, 0xFF, 0xD3, 0x56, 0xFF, 0x00, 0x78, 0xFF, 0xFF,
];

/// SOI, `prefix` segments, the frame header `sof`, then `scans` scans (each preceded by a
/// DHT, as progressive files do), then EOI.
fn jpeg_with(prefix: &[Vec<u8>], sof: u8, width: u16, height: u16, scans: usize) -> Vec<u8> {
    let mut out = vec![0xFF, 0xD8];
    prefix.iter().for_each(|s| out.extend_from_slice(s));
    out.extend_from_slice(&segment(0xDB, &[0; 65]));
    out.extend_from_slice(&segment(sof, &sof_body(width, height)));
    for _ in 0..scans {
        out.extend_from_slice(&segment(0xC4, &[0x10; 20]));
        out.extend_from_slice(&segment(0xDA, &[1, 1, 0x00, 0, 63, 0]));
        out.extend_from_slice(ENTROPY);
    }
    out.extend_from_slice(&[0xFF, 0xD9]);
    out
}

fn jpeg_file(width: u16, height: u16) -> Vec<u8> {
    jpeg_with(
        &[segment(0xE0, b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0")],
        0xC0,
        width,
        height,
        1,
    )
}

fn riff_chunk(kind: &[u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut out = kind.to_vec();
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    if payload.len() % 2 == 1 {
        out.push(0);
    }
    out
}

fn webp_from(chunks: &[Vec<u8>]) -> Vec<u8> {
    let body: Vec<u8> = chunks.concat();
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&((body.len() + 4) as u32).to_le_bytes());
    out.extend_from_slice(b"WEBP");
    out.extend_from_slice(&body);
    out
}

fn vp8(width: u16, height: u16) -> Vec<u8> {
    let partition = 5u32;
    // Key frame (bit 0 clear), version 0, shown (bit 4), first partition size above bit 5.
    let tag = (1 << 4) | (partition << 5);
    let mut p = tag.to_le_bytes()[..3].to_vec();
    p.extend_from_slice(&[0x9D, 0x01, 0x2A]);
    p.extend_from_slice(&width.to_le_bytes());
    p.extend_from_slice(&height.to_le_bytes());
    p.extend_from_slice(&[0xAA; 7]);
    riff_chunk(b"VP8 ", &p)
}

fn vp8l(width: u32, height: u32) -> Vec<u8> {
    let bits = (width - 1) | (height - 1) << 14 | 1 << 28;
    let mut p = vec![0x2F];
    p.extend_from_slice(&bits.to_le_bytes());
    p.extend_from_slice(&[0x55; 4]);
    riff_chunk(b"VP8L", &p)
}

fn vp8x(flags: u8, width: u32, height: u32) -> Vec<u8> {
    let mut p = vec![flags, 0, 0, 0];
    p.extend_from_slice(&(width - 1).to_le_bytes()[..3]);
    p.extend_from_slice(&(height - 1).to_le_bytes()[..3]);
    riff_chunk(b"VP8X", &p)
}

fn gif_file(version: &[u8; 6], width: u16, height: u16) -> Vec<u8> {
    let mut out = version.to_vec();
    out.extend_from_slice(&width.to_le_bytes());
    out.extend_from_slice(&height.to_le_bytes());
    out.extend_from_slice(&[0x80, 0, 0]); // 2-entry global color table
    out.extend_from_slice(&[0, 0, 0, 255, 255, 255]);
    out.extend_from_slice(&[0x21, 0xF9, 4, 0, 0, 0, 0, 0]); // graphic control extension
    out.push(0x2C);
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&width.to_le_bytes());
    out.extend_from_slice(&height.to_le_bytes());
    out.push(0x81); // 4-entry local color table
    out.extend_from_slice(&[7; 12]);
    out.extend_from_slice(&[2, 3, 0x44, 0x01, 0xFF, 0, 0x3B]);
    out
}

/// Every valid fixture with the header it must produce.
fn valid_fixtures() -> Vec<(&'static str, Vec<u8>, ImageHeader)> {
    use ImageFormat::*;
    vec![
        ("pillow png", unhex(PILLOW_PNG), header(Png, 3, 2)),
        ("pillow jpeg", unhex(PILLOW_JPEG), header(Jpeg, 3, 2)),
        (
            "pillow webp lossy",
            unhex(PILLOW_WEBP_LOSSY),
            header(Webp, 3, 2),
        ),
        (
            "pillow webp lossless",
            unhex(PILLOW_WEBP_LOSSLESS),
            header(Webp, 3, 2),
        ),
        (
            "pillow webp alpha",
            unhex(PILLOW_WEBP_ALPHA),
            header(Webp, 3, 2),
        ),
        ("pillow gif", unhex(PILLOW_GIF), header(Gif, 3, 2)),
        ("png", png_file(640, 360), header(Png, 640, 360)),
        (
            "jpeg baseline",
            jpeg_file(1280, 720),
            header(Jpeg, 1280, 720),
        ),
        (
            "jpeg progressive",
            jpeg_with(&[], 0xC2, 300, 200, 4),
            header(Jpeg, 300, 200),
        ),
        (
            "webp lossy",
            webp_from(&[vp8(320, 180)]),
            header(Webp, 320, 180),
        ),
        (
            "webp lossless",
            webp_from(&[vp8l(16383, 1)]),
            header(Webp, 16383, 1),
        ),
        (
            "webp extended still",
            webp_from(&[
                vp8x(0x10, 50, 40),
                riff_chunk(b"ALPH", &[0; 9]),
                vp8(50, 40),
            ]),
            header(Webp, 50, 40),
        ),
        (
            "webp animated",
            webp_from(&[
                vp8x(0x02, 600, 400),
                riff_chunk(b"ANIM", &[0; 6]),
                riff_chunk(b"ANMF", &[0; 16 + 3]),
                riff_chunk(b"ANMF", &[0; 16 + 3]),
            ]),
            header(Webp, 600, 400),
        ),
        ("gif87a", gif_file(b"GIF87a", 7, 9), header(Gif, 7, 9)),
        ("gif89a", gif_file(b"GIF89a", 500, 1), header(Gif, 500, 1)),
    ]
}

// ---- every format -----------------------------------------------------------------------

#[test]
fn valid_files_give_format_and_size() {
    for (name, data, expected) in valid_fixtures() {
        assert_eq!(ok(&data), expected, "{name}");
    }
}

#[test]
fn every_truncation_is_reported_as_truncated() {
    for (name, data, _) in valid_fixtures() {
        assert!(err(&[]).contains("the data is empty"));
        for len in 1..data.len() {
            let message = err(&data[..len]);
            assert!(
                message.starts_with("truncated "),
                "{name} cut to {len} bytes: {message}"
            );
        }
    }
}

#[test]
fn trailing_bytes_after_the_end_marker_are_tolerated() {
    for (name, mut data, expected) in valid_fixtures() {
        data.extend_from_slice(b"trailing");
        assert_eq!(ok(&data), expected, "{name}");
    }
}

#[test]
fn oversized_images_are_rejected_with_both_sides() {
    let cases = [
        png_file(20_000, 100),
        jpeg_file(100, 20_000),
        webp_from(&[vp8x(0x10, 20_000, 100), vp8(0x3FFF, 100)]),
        gif_file(b"GIF89a", 20_000, 100),
    ];
    let expected = ["20000x100", "100x20000", "20000x100", "20000x100"];
    for (data, size) in cases.iter().zip(expected) {
        let message = err(data);
        // The VP8X canvas is checked against its bitstream first; cases agree on the rest.
        if !message.starts_with("corrupt") {
            assert_eq!(
                message,
                format!("image is {size}, larger than the {DEFAULT_MAX_SIDE}-pixel limit per side")
            );
        }
    }
    assert_eq!(
        err(&png_file(20_000, 100)),
        format!("image is 20000x100, larger than the {DEFAULT_MAX_SIDE}-pixel limit per side")
    );
    // A tighter caller-supplied limit applies to every format, the boundary included.
    for (_, data, h) in valid_fixtures() {
        assert_eq!(sniff(&data, h.width.max(h.height)), Ok(h));
        let message = sniff(&data, h.width.max(h.height) - 1).unwrap_err().0;
        assert!(message.contains("-pixel limit per side"), "{message}");
    }
}

#[test]
fn zero_sides_are_rejected() {
    let cases = [
        png_file(0, 10),
        jpeg_file(10, 0),
        webp_from(&[vp8(0, 10)]),
        gif_file(b"GIF89a", 10, 0),
    ];
    for data in cases {
        let message = err(&data);
        assert!(message.contains("side of zero pixels"), "{message}");
    }
    assert_eq!(
        err(&png_file(0, 10)),
        "image is 0x10: the PNG header declares a side of zero pixels"
    );
}

#[test]
fn unknown_signatures_quote_the_first_bytes() {
    assert_eq!(
        err(b"<html><body>"),
        "unknown image format: expected PNG, JPEG, WebP or GIF (first bytes 3c 68 74 6d)"
    );
    assert_eq!(
        err(b"BM"),
        "unknown image format: expected PNG, JPEG, WebP or GIF (first bytes 42 4d)"
    );
    assert!(err(b"RIFF\x10\0\0\0WAVEfmt ").starts_with("unknown image format"));
    assert!(err(b"GIF88a\x01\0\x01\0\0\0\0;").starts_with("unknown image format"));
    assert_eq!(
        err(b"\x89PN"),
        "truncated PNG: the data ends after 3 bytes, inside the signature"
    );
}

// ---- PNG ---------------------------------------------------------------------------------

#[test]
fn crc32_matches_the_png_reference() {
    assert_eq!(png::crc32(&[b"IEND"]), 0xAE42_6082);
    assert_eq!(png::crc32(&[b"IE", b"ND"]), 0xAE42_6082);
}

#[test]
fn png_chunk_overrunning_the_data_names_the_chunk() {
    let mut data = png_from(&[ihdr(4, 4, 8, 6)]);
    data.extend_from_slice(&65_536u32.to_be_bytes());
    data.extend_from_slice(b"IDAT");
    data.extend_from_slice(&[0; 120]);
    assert_eq!(
        err(&data),
        "truncated PNG: chunk IDAT at byte 33 declares 65536 bytes but only 120 remain"
    );
    let mut no_crc = png_file(8, 8);
    no_crc.truncate(no_crc.len() - 2);
    assert_eq!(
        err(&no_crc),
        format!(
            "truncated PNG: chunk CRC at byte {} needs 4 bytes but only 2 remain",
            no_crc.len() - 2
        )
    );
}

#[test]
fn png_header_must_be_a_sound_ihdr() {
    let mut bad_crc = png_file(8, 8);
    bad_crc[29] ^= 1;
    assert!(err(&bad_crc).starts_with("corrupt PNG: IHDR CRC at byte 29"));

    let not_first = png_from(&[png_chunk(b"gAMA", &[0; 4]), ihdr(8, 8, 8, 2)]);
    assert_eq!(
        err(&not_first),
        "corrupt PNG: first chunk at byte 8 is gAMA, expected IHDR"
    );

    let wrong_length = png_from(&[png_chunk(b"IHDR", &[0; 12])]);
    assert!(err(&wrong_length).contains("declares 12 bytes, expected 13"));

    for (depth, color) in [(16, 3), (4, 2), (8, 5), (3, 0)] {
        let data = png_from(&[
            ihdr(8, 8, depth, color),
            png_chunk(b"IDAT", &[0]),
            png_chunk(b"IEND", b""),
        ]);
        assert!(
            err(&data).starts_with("corrupt PNG: IHDR"),
            "{depth} {color}"
        );
    }
    for (depth, color) in [(1, 0), (16, 0), (8, 3), (16, 2), (8, 4), (16, 6)] {
        let data = png_from(&[
            ihdr(8, 8, depth, color),
            png_chunk(b"IDAT", &[0]),
            png_chunk(b"IEND", b""),
        ]);
        assert_eq!(ok(&data), header(ImageFormat::Png, 8, 8));
    }

    let huge = png_from(&[ihdr(1 << 31, 1, 8, 2)]);
    assert!(err(&huge).contains("above the 2^31-1 limit"));
}

#[test]
fn png_chunk_structure_is_checked() {
    let no_idat = png_from(&[ihdr(8, 8, 8, 2), png_chunk(b"IEND", b"")]);
    assert_eq!(
        err(&no_idat),
        "corrupt PNG: IEND at byte 33 comes before any IDAT image data"
    );

    let mut bad_type = png_file(8, 8);
    bad_type[38] = b'1';
    assert_eq!(
        err(&bad_type),
        "corrupt PNG: chunk type at byte 37 is t1Xt, not four ASCII letters"
    );

    let second_ihdr = png_from(&[ihdr(8, 8, 8, 2), ihdr(8, 8, 8, 2)]);
    assert!(err(&second_ihdr).contains("second IHDR chunk at byte 33"));

    let long_iend = png_from(&[
        ihdr(8, 8, 8, 2),
        png_chunk(b"IDAT", &[0]),
        png_chunk(b"IEND", b"x"),
    ]);
    assert!(err(&long_iend).contains("IEND chunk at byte 46 declares 1 bytes, expected 0"));

    let mut huge_length = png_from(&[ihdr(8, 8, 8, 2)]);
    huge_length.extend_from_slice(&[0x80, 0, 0, 0]);
    huge_length.extend_from_slice(b"IDAT");
    assert!(err(&huge_length).contains("above the 2^31-1 limit"));
}

// ---- JPEG --------------------------------------------------------------------------------

#[test]
fn jpeg_every_size_carrying_sof_marker_gives_the_size() {
    for marker in 0xC0..=0xCFu8 {
        if matches!(marker, 0xC4 | 0xC8 | 0xCC) {
            continue;
        }
        let data = jpeg_with(&[], marker, 33, 44, 1);
        assert_eq!(
            ok(&data),
            header(ImageFormat::Jpeg, 33, 44),
            "SOF {marker:02x}"
        );
    }
}

#[test]
fn jpeg_dht_jpg_and_dac_segments_are_not_frame_headers() {
    // Bodies shaped like a 9999x9999 frame header must be skipped, not read as the size.
    let decoys: Vec<Vec<u8>> = [0xC4, 0xC8, 0xCC]
        .iter()
        .map(|&m| segment(m, &sof_body(9999, 9999)))
        .collect();
    assert_eq!(
        ok(&jpeg_with(&decoys, 0xC0, 5, 6, 1)),
        header(ImageFormat::Jpeg, 5, 6)
    );
}

#[test]
fn jpeg_exif_first_with_an_embedded_thumbnail() {
    // The thumbnail's own SOI, SOF and EOI sit inside APP1 and must be skipped by length.
    let mut exif = b"Exif\0\0MM\0\x2a\0\0\0\x08".to_vec();
    exif.extend_from_slice(&jpeg_file(16, 9));
    let data = jpeg_with(
        &[segment(0xE1, &exif), segment(0xFE, b"comment")],
        0xC0,
        1920,
        1080,
        1,
    );
    assert_eq!(ok(&data), header(ImageFormat::Jpeg, 1920, 1080));
}

#[test]
fn jpeg_fill_bytes_before_markers_are_skipped() {
    let mut data = vec![0xFF, 0xD8, 0xFF, 0xFF, 0xFF];
    data.extend_from_slice(&jpeg_file(3, 4)[3..]);
    assert_eq!(ok(&data), header(ImageFormat::Jpeg, 3, 4));
}

#[test]
fn jpeg_without_eoi_is_truncated() {
    let mut data = jpeg_file(8, 8);
    data.truncate(data.len() - 2);
    assert_eq!(
        err(&data),
        format!(
            "truncated JPEG: the data ends at byte {} inside a marker",
            data.len()
        )
    );
    // Without the trailing fill bytes the scan simply runs out.
    data.truncate(data.len() - 2);
    let message = err(&data);
    assert!(
        message.starts_with("truncated JPEG: the entropy-coded data that starts at byte"),
        "{message}"
    );
    assert!(
        message.ends_with("without reaching the EOI marker"),
        "{message}"
    );
}

#[test]
fn jpeg_segment_overrunning_the_data_names_the_segment() {
    let mut data = vec![0xFF, 0xD8];
    data.extend_from_slice(&[0xFF, 0xE1, 0x40, 0x00]);
    data.extend_from_slice(&[0; 10]);
    assert_eq!(
        err(&data),
        "truncated JPEG: APP1 segment at byte 2 declares 16384 bytes but only 12 remain"
    );
}

#[test]
fn jpeg_structure_errors() {
    let mut garbage = vec![0xFF, 0xD8];
    garbage.extend_from_slice(&segment(0xE0, b"JFIF\0"));
    garbage.push(0x00);
    assert_eq!(
        err(&garbage),
        "corrupt JPEG: expected a marker (ff) at byte 11, found 00"
    );

    let mut scan_first = vec![0xFF, 0xD8];
    scan_first.extend_from_slice(&segment(0xDA, &[1, 1, 0, 0, 63, 0]));
    assert!(err(&scan_first).contains("comes before any frame header"));

    let no_scan = [
        &[0xFF, 0xD8][..],
        &segment(0xC0, &sof_body(2, 2)),
        &[0xFF, 0xD9],
    ]
    .concat();
    assert_eq!(
        err(&no_scan),
        "corrupt JPEG: EOI at byte 21 comes before any scan (SOS)"
    );

    let no_frame = [0xFF, 0xD8, 0xFF, 0xD9];
    assert!(err(&no_frame).contains("before any frame header (SOF)"));

    let short_length = [0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x01, 0xFF, 0xD9];
    assert!(err(&short_length).contains("declares length 1, less than"));

    let bad_frame = jpeg_with(&[], 0xC0, 2, 2, 1);
    let mut bad_frame = bad_frame;
    let sof_at = 2 + 69;
    bad_frame[sof_at + 9] = 4; // four components declared, three present
    assert!(err(&bad_frame).contains("does not fit 4 components"));

    let two_frames = jpeg_with(&[segment(0xC1, &sof_body(9, 9))], 0xC0, 2, 2, 1);
    assert!(err(&two_frames).contains("second frame header SOF0"));

    let second_soi = [0xFF, 0xD8, 0xFF, 0xD8];
    assert!(err(&second_soi).contains("second SOI marker at byte 2"));

    let stray = [0xFF, 0xD8, 0xFF, 0x00];
    assert!(err(&stray).contains("stuffed byte ff 00 at byte 2"));
}

// ---- WebP --------------------------------------------------------------------------------

#[test]
fn webp_riff_size_is_checked_against_the_data() {
    let mut data = webp_from(&[vp8(8, 8)]);
    let declared = (data.len() - 8 + 100) as u32;
    data[4..8].copy_from_slice(&declared.to_le_bytes());
    assert_eq!(
        err(&data),
        format!(
            "truncated WebP: the RIFF header declares {declared} bytes after byte 8 but only \
             {} are present",
            declared - 100
        )
    );
    let mut tiny = webp_from(&[vp8(8, 8)]);
    tiny[4..8].copy_from_slice(&2u32.to_le_bytes());
    assert!(err(&tiny).contains("RIFF size 2 is too small"));
}

#[test]
fn webp_chunks_must_fill_the_riff_payload() {
    let mut data = webp_from(&[vp8l(4, 4)]);
    let chunk_size = u32::from_le_bytes([data[16], data[17], data[18], data[19]]);
    data[16..20].copy_from_slice(&(chunk_size + 40).to_le_bytes());
    assert!(err(&data).starts_with("truncated WebP: chunk VP8L at byte 12 declares 49 bytes"));

    let empty = webp_from(&[]);
    assert_eq!(err(&empty), "corrupt WebP: the RIFF payload holds no chunk");
}

#[test]
fn webp_bitstream_headers_are_checked() {
    let first_unknown = webp_from(&[riff_chunk(b"ICCP", &[0; 4])]);
    assert_eq!(
        err(&first_unknown),
        "corrupt WebP: first chunk at byte 12 is ICCP, expected VP8, VP8L or VP8X"
    );

    let mut inter = webp_from(&[vp8(8, 8)]);
    inter[20] |= 1;
    assert!(err(&inter).contains("is not a key frame"));

    let mut no_start_code = webp_from(&[vp8(8, 8)]);
    no_start_code[23] = 0;
    assert!(err(&no_start_code).contains("lacks the 9d 01 2a start code"));

    let mut hidden = webp_from(&[vp8(8, 8)]);
    hidden[20] &= !0x10;
    assert!(err(&hidden).contains("is not shown"));

    let mut long_partition = webp_from(&[vp8(8, 8)]);
    long_partition[21] = 0xFF;
    assert!(err(&long_partition).contains("first partition"));

    // The upscaling bits above the 14-bit size are not part of it.
    let mut scaled = webp_from(&[vp8(8, 9)]);
    scaled[27] |= 0xC0;
    scaled[29] |= 0x40;
    assert_eq!(ok(&scaled), header(ImageFormat::Webp, 8, 9));

    let mut lossless_bad_signature = webp_from(&[vp8l(4, 4)]);
    lossless_bad_signature[20] = 0x2E;
    assert!(err(&lossless_bad_signature).contains("lacks the 2f signature"));

    let mut lossless_version = webp_from(&[vp8l(4, 4)]);
    lossless_version[24] |= 0x20;
    assert!(err(&lossless_version).contains("unknown version 1"));
}

#[test]
fn webp_extended_files_need_their_image_data() {
    let still_without_bitstream = webp_from(&[vp8x(0x10, 8, 8), riff_chunk(b"ALPH", &[0; 3])]);
    assert_eq!(
        err(&still_without_bitstream),
        "corrupt WebP: VP8X still image holds no VP8 or VP8L bitstream"
    );

    let animation_without_frames = webp_from(&[vp8x(0x02, 8, 8), riff_chunk(b"ANIM", &[0; 6])]);
    assert!(err(&animation_without_frames).contains("holds no ANMF frame"));

    let short_frame = webp_from(&[vp8x(0x02, 8, 8), riff_chunk(b"ANMF", &[0; 15])]);
    assert!(err(&short_frame).contains("too few for a frame header"));

    let mismatch = webp_from(&[vp8x(0, 8, 8), vp8l(8, 7)]);
    assert_eq!(
        err(&mismatch),
        "corrupt WebP: VP8X canvas is 8x8 but the bitstream at byte 30 is 8x7"
    );

    let short_header = webp_from(&[riff_chunk(b"VP8X", &[0; 9]), vp8(1, 1)]);
    assert!(err(&short_header).contains("has 9 bytes, expected 10"));

    // The 24-bit canvas reaches past VP8's 14 bits; the limit still applies.
    let wide = webp_from(&[vp8x(0x02, 1 << 24, 1), riff_chunk(b"ANMF", &[0; 16])]);
    assert_eq!(
        sniff(&wide, u32::MAX),
        Ok(header(ImageFormat::Webp, 1 << 24, 1))
    );
    assert!(err(&wide).contains("16777216x1, larger than"));
}

// ---- GIF ---------------------------------------------------------------------------------

#[test]
fn gif_block_structure_is_checked() {
    let mut no_trailer = gif_file(b"GIF89a", 4, 4);
    no_trailer.pop();
    assert_eq!(
        err(&no_trailer),
        format!(
            "truncated GIF: block introducer (the GIF has no trailer) at byte {} needs 1 \
             bytes but only 0 remain",
            no_trailer.len()
        )
    );

    let mut no_image = b"GIF89a\x04\0\x04\0\0\0\0".to_vec();
    no_image.extend_from_slice(&[0x21, 0xFE, 2, b'h', b'i', 0, 0x3B]);
    assert_eq!(
        err(&no_image),
        "corrupt GIF: trailer at byte 19 comes before any image"
    );

    let mut stray = gif_file(b"GIF89a", 4, 4);
    let at = stray.len() - 1;
    stray[at] = 0x00;
    assert!(err(&stray).contains(&format!("byte {at} is 00, expected an image (2c)")));

    let mut bad_code_size = gif_file(b"GIF89a", 4, 4);
    bad_code_size[49] = 12;
    assert!(err(&bad_code_size).contains("LZW code size 12"));

    let mut long_sub_block = gif_file(b"GIF89a", 4, 4);
    long_sub_block[50] = 200;
    assert!(err(&long_sub_block).starts_with("truncated GIF: image data sub-block at byte 50"));

    let table_cut = b"GIF89a\x04\0\x04\0\x87\0\0\0\0\0";
    assert!(err(table_cut).contains("global color table at byte 13 needs 768 bytes"));
}

#[test]
fn gif_frames_beyond_the_limit_are_rejected() {
    let mut data = gif_file(b"GIF89a", 4, 4);
    // Frame at left 16000 with width 4: the extent is past the limit though the screen is not.
    data[28..30].copy_from_slice(&16_000u16.to_le_bytes());
    data[32..34].copy_from_slice(&400u16.to_le_bytes());
    assert_eq!(
        err(&data),
        format!(
            "GIF frame at byte 27, offset plus size, is 16400x4, larger than the \
             {DEFAULT_MAX_SIDE}-pixel limit per side"
        )
    );
}

// ---- robustness --------------------------------------------------------------------------

/// Deterministic xorshift, so failures reproduce.
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn mutated_files_never_panic() {
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    for (_, data, _) in valid_fixtures() {
        for i in 0..data.len() {
            for value in [0x00, 0xFF, data[i] ^ 0x80, data[i].wrapping_add(1)] {
                let mut mutated = data.clone();
                mutated[i] = value;
                let _ = sniff(&mutated, DEFAULT_MAX_SIDE);
            }
        }
        for _ in 0..2_000 {
            let mut mutated = data.clone();
            for _ in 0..1 + xorshift(&mut rng) % 4 {
                let i = (xorshift(&mut rng) % data.len() as u64) as usize;
                mutated[i] = xorshift(&mut rng) as u8;
            }
            let cut = (xorshift(&mut rng) % (data.len() as u64 + 1)) as usize;
            let _ = sniff(&mutated[..cut], DEFAULT_MAX_SIDE);
            let _ = sniff(&mutated, DEFAULT_MAX_SIDE);
        }
    }
}
