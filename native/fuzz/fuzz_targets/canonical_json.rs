//! Any bytes: `canonicalize` must return text or an error, never panic or hang; and canonical
//! form is a fixed point, so canonicalizing its own output must give that output back.
#![no_main]

use _native::canonical::canonicalize;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(canonical) = canonicalize(data) {
        let again = canonicalize(canonical.as_bytes())
            .unwrap_or_else(|e| panic!("canonical output {canonical:?} was rejected: {e}"));
        assert_eq!(again, canonical, "canonical form is not a fixed point");
    }
});
