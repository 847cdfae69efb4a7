"""Content-addressed blob storage: images, heatmaps and large result JSON, named by SHA-256.

`BlobStore` is the interface; `LocalBlobStore` keeps blobs in a directory, fanned out as
`<root>/ab/cd/abcd...` (two levels of 256 subdirectories, so no directory grows huge). An
S3-compatible backend implements the same three methods with the hex digest as object key.

Because a blob's name is its hash, `put` is idempotent and safe to race, and `get` can prove it
returns the bytes that were stored: a blob whose bytes do not hash to its name is corrupt, is
removed, and is reported, never served. Writes are atomic (a temporary file in the same
directory, fsync, rename, fsync of the directory): after a crash a blob is either complete or
absent. Blobs are never deleted by the store itself (a later garbage collector may).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from pathlib import Path
from typing import Protocol

from gateway import native
from gateway.errors import Unavailable

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
    """Where blobs live, by SHA-256 digest (32 bytes)."""

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


def _check_digest(digest: bytes) -> None:
    if len(digest) != DIGEST_SIZE:
        raise ValueError(f"a blob digest is {DIGEST_SIZE} bytes, got {len(digest)}")


class LocalBlobStore:
    """`BlobStore` in a local directory (created on first write).

    File I/O runs in worker threads so the event loop never waits on the disk. Disk failures
    (full, read-only, permissions) raise `gateway.errors.Unavailable`.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def path_of(self, digest: bytes) -> Path:
        """Where the blob named `digest` lives."""
        _check_digest(digest)
        name = digest.hex()
        return self.root / name[:2] / name[2:4] / name

    async def put(self, data: bytes, digest: bytes | None = None) -> bytes:
        """See `BlobStore.put`."""
        if digest is not None:
            _check_digest(digest)
        try:
            return await asyncio.to_thread(self._put, data, digest)
        except OSError as exc:
            raise Unavailable(
                f"the blob store at {self.root} cannot write ({exc.strerror or exc})"
            ) from None

    def _put(self, data: bytes, digest: bytes | None) -> bytes:
        if digest is None:
            digest = native.sha256(data)
        path = self.path_of(digest)
        with contextlib.suppress(FileNotFoundError):
            # Same name, same size: the same bytes (unless corrupted since, which `get` finds
            # and repairs by removing it, so the next `put` writes it again).
            if path.stat().st_size == len(data):
                return digest
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            # Atomic: readers see the old state or the complete blob, never a part of it.
            Path(temporary).replace(path)
        except BaseException:
            with contextlib.suppress(OSError):
                Path(temporary).unlink()
            raise
        _fsync_directory(path.parent)
        return digest

    async def get(self, digest: bytes) -> bytes:
        """See `BlobStore.get`."""
        try:
            return await asyncio.to_thread(self._get, digest)
        except BlobError:
            raise
        except OSError as exc:
            raise Unavailable(
                f"the blob store at {self.root} cannot read ({exc.strerror or exc})"
            ) from None

    def _get(self, digest: bytes) -> bytes:
        path = self.path_of(digest)
        try:
            file = path.open("rb")
        except FileNotFoundError:
            raise BlobNotFound(digest, "is not in the blob store") from None
        with file:
            data = file.read()
            if native.sha256(data) == digest:
                return data
            # Remove the bad file, unless a concurrent `put` has just replaced it with a good one.
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_ino == os.fstat(file.fileno()).st_ino:
                    path.unlink()
        raise BlobCorrupt(digest, "was corrupt and has been removed")

    async def exists(self, digest: bytes) -> bool:
        """See `BlobStore.exists`."""
        return await asyncio.to_thread(self.path_of(digest).is_file)


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable (the new directory entry), not just the file's bytes.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
