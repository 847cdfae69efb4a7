//! SHA-256 over byte slices: one buffer, or many buffers in parallel.
//!
//! `sha2` picks the SHA-NI / ARMv8 crypto instructions at run time when the CPU has them, which is
//! what lets a native digest keep up with OpenSSL behind `hashlib`.

use rayon::prelude::*;
use sha2::{Digest, Sha256};

/// A SHA-256 digest.
pub type Digest32 = [u8; 32];

/// The SHA-256 digest of `data`.
pub fn sha256(data: &[u8]) -> Digest32 {
    Sha256::digest(data).into()
}

/// Digests of every buffer in `items`, in order, computed on the rayon pool.
///
/// Small batches of small buffers are hashed on the calling thread: handing them to the pool
/// costs more than the hashing.
pub fn sha256_many<T: AsRef<[u8]> + Sync>(items: &[T]) -> Vec<Digest32> {
    const PARALLEL_MIN_BYTES: usize = 256 * 1024;
    let total: usize = items.iter().map(|item| item.as_ref().len()).sum();
    if items.len() < 2 || total < PARALLEL_MIN_BYTES {
        return items.iter().map(|item| sha256(item.as_ref())).collect();
    }
    items.par_iter().map(|item| sha256(item.as_ref())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(d: &Digest32) -> String {
        d.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn known_vectors() {
        assert_eq!(
            hex(&sha256(b"")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            hex(&sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let million_a = vec![b'a'; 1_000_000];
        assert_eq!(
            hex(&sha256(&million_a)),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"
        );
    }

    #[test]
    fn many_preserves_order_on_both_paths() {
        let small: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 10]).collect();
        let large: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 100_000]).collect();
        for items in [&small, &large] {
            let expected: Vec<Digest32> = items.iter().map(|b| sha256(b)).collect();
            assert_eq!(sha256_many(items), expected);
        }
        assert!(sha256_many::<Vec<u8>>(&[]).is_empty());
    }
}
