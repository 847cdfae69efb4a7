//! Canonical JSON (placeholder API; the RFC 8785 implementation replaces this file).

use std::fmt;

/// Deepest nesting of arrays and objects accepted.
pub const MAX_DEPTH: usize = 128;

/// Why text is not acceptable JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalError(pub String);

impl fmt::Display for CanonicalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CanonicalError {}

/// Parses JSON text and returns its RFC 8785 canonical form.
pub fn canonicalize(_input: &[u8]) -> Result<String, CanonicalError> {
    Err(CanonicalError("canonical JSON is not built yet".into()))
}
