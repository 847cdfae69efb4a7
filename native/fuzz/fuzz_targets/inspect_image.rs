//! Any bytes: `sniff` must return a header or an error, never panic, hang or read out of bounds.
//! A header it returns must respect the limit it was given.
#![no_main]

use _native::image::{sniff, DEFAULT_MAX_SIDE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(header) = sniff(data, DEFAULT_MAX_SIDE) {
        assert!(header.width >= 1 && header.width <= DEFAULT_MAX_SIDE);
        assert!(header.height >= 1 && header.height <= DEFAULT_MAX_SIDE);
    }
});
