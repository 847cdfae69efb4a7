"""The blob store interface: content-addressed bytes (images, heatmaps, large result JSON).

A blob's name is the SHA-256 of its bytes, so `put` is idempotent and safe to race, and `get`
can prove it returns the bytes that were stored: a blob whose bytes do not hash to its name is
corrupt, is removed, and is reported, never served.

Blobs that no row references any more are collected (`gateway.store.blobs.gc`) once they have
been neither written nor written again for a grace period. A `put` of a blob that is already
stored refreshes its age when it is older than `refresh_after_s` (half the grace period), so a
blob a new row is about to reference is never collected between the `put` and the row write.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from gateway import native

DIGEST_SIZE = 32


class BlobError(Exception):
    """A blob could not be read as asked."""

    def __init__(self, digest: bytes, problem: str) -> None:
        super().__init__(f"blob {digest.hex()} {problem}")
        self.digest = digest


class BlobNotFound(BlobError):
    """No blob has this digest."""


class BlobCorrupt(BlobError):
    """The stored bytes do not hash to their name (they have been removed)."""


class BlobStore(Protocol):
    """Where blobs live, by SHA-256 digest (32 bytes).

    Every implementation raises `gateway.errors.Unavailable` when its backend cannot answer
    in time (a full disk, a database or object store that is down or slow).
    """

    async def put(self, data: bytes, digest: bytes | None = None) -> bytes:
        """Stores `data` (idempotent) and returns its digest. `digest`: the SHA-256 of `data`
        when the caller has it already (a verified image's), so it is not hashed again; a
        wrong one stores a blob that `get` finds corrupt, never bytes under another's name."""
        ...

    async def get(self, digest: bytes) -> bytes:
        """The bytes named `digest`, verified; `BlobNotFound` or `BlobCorrupt` otherwise."""
        ...

    async def exists(self, digest: bytes) -> bool:
        """Whether a blob named `digest` is stored (not verified)."""
        ...

    def stale(self, grace_s: float, batch_size: int) -> AsyncIterator[list[bytes]]:
        """The digests of blobs neither written nor refreshed for `grace_s` seconds, in
        batches of at most `batch_size` (candidates for collection; rows may still use them)."""
        ...

    async def delete_stale(self, digests: Sequence[bytes], grace_s: float) -> int:
        """Deletes those of `digests` that are still stale (a `put` since the listing keeps a
        blob); returns how many were deleted."""
        ...

    async def ping(self) -> None:
        """Raises `Unavailable` when the backend cannot answer now (for health checks)."""
        ...

    async def aclose(self) -> None:
        """Releases connections; the store is not used afterwards."""
        ...


def check_digest(digest: bytes) -> None:
    """Raises ValueError unless `digest` has the size of a SHA-256 digest."""
    if len(digest) != DIGEST_SIZE:
        raise ValueError(f"a blob digest is {DIGEST_SIZE} bytes, got {len(digest)}")


def digest_of(data: bytes, digest: bytes | None) -> bytes:
    """`digest` when the caller has it (checked for size), else the SHA-256 of `data`."""
    if digest is None:
        return native.sha256(data)
    check_digest(digest)
    return digest


def verified(digest: bytes, data: bytes) -> bool:
    """Whether `data` hashes to `digest`."""
    return native.sha256(data) == digest
