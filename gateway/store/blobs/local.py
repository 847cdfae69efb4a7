"""`BlobStore` in a local directory, fanned out as `<root>/ab/cd/abcd...` (two levels of 256
subdirectories, so no directory grows huge).

Writes are atomic (a temporary file in the same directory, fsync, rename, fsync of the
directory): after a crash a blob is either complete or absent. A blob's age is its file's
modification time. This is the embedded mode's store; several replicas may use one directory
only when it is a shared mount they all see (`store.blob_dir_shared`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from gateway.errors import Unavailable
from gateway.store.blobs.base import (
    BlobCorrupt,
    BlobError,
    BlobNotFound,
    check_digest,
    digest_of,
    verified,
)

log = logging.getLogger(__name__)


class LocalBlobStore:
    """`BlobStore` in a local directory (created on first write).

    File I/O runs in worker threads so the event loop never waits on the disk. Disk failures
    (full, read-only, permissions) raise `gateway.errors.Unavailable`.
    """

    def __init__(self, root: str | os.PathLike[str], *, refresh_after_s: float = 1800.0) -> None:
        self.root = Path(root)
        self._refresh_after_s = refresh_after_s

    def _unavailable(self, what: str, exc: OSError) -> Unavailable:
        """The error of a file operation that failed: the path and the OS's text go to the log
        (the operator's), the caller reads what failed and why in a word."""
        log.warning("the blob store at %s cannot %s: %s", self.root, what, exc)
        why = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
        return Unavailable(f"the blob store cannot {what} ({why}); retry shortly")

    def path_of(self, digest: bytes) -> Path:
        """Where the blob named `digest` lives."""
        check_digest(digest)
        name = digest.hex()
        return self.root / name[:2] / name[2:4] / name

    async def put(self, data: bytes, digest: bytes | None = None) -> bytes:
        """See `BlobStore.put`."""
        digest = digest_of(data, digest)
        try:
            return await asyncio.to_thread(self._put, data, digest)
        except OSError as exc:
            raise self._unavailable("write", exc) from None

    def _put(self, data: bytes, digest: bytes) -> bytes:
        path = self.path_of(digest)
        with contextlib.suppress(FileNotFoundError):
            # Same name, same size: the same bytes (unless corrupted since, which `get` finds
            # and repairs by removing it, so the next `put` writes it again).
            stat = path.stat()
            if stat.st_size == len(data):
                if time.time() - stat.st_mtime > self._refresh_after_s:
                    # A row is about to reference it: young again, so the collector keeps it.
                    os.utime(path)
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
            raise self._unavailable("read", exc) from None

    def _get(self, digest: bytes) -> bytes:
        path = self.path_of(digest)
        try:
            file = path.open("rb")
        except FileNotFoundError:
            raise BlobNotFound(digest, "is not in the blob store") from None
        with file:
            data = file.read()
            if verified(digest, data):
                return data
            # Remove the bad file, unless a concurrent `put` has just replaced it with a good one.
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_ino == os.fstat(file.fileno()).st_ino:
                    path.unlink()
        raise BlobCorrupt(digest, "was corrupt and has been removed")

    async def exists(self, digest: bytes) -> bool:
        """See `BlobStore.exists`."""
        return await asyncio.to_thread(self.path_of(digest).is_file)

    async def stale(self, grace_s: float, batch_size: int) -> AsyncIterator[list[bytes]]:
        """See `BlobStore.stale` (one top-level fan-out directory at a time)."""
        try:
            tops = await asyncio.to_thread(_subdirectories, self.root)
        except OSError as exc:
            raise self._unavailable("list", exc) from None
        for top in tops:
            found = await asyncio.to_thread(_stale_under, top, time.time() - grace_s)
            for start in range(0, len(found), batch_size):
                yield found[start : start + batch_size]

    async def delete_stale(self, digests: Sequence[bytes], grace_s: float) -> int:
        """See `BlobStore.delete_stale`."""
        return await asyncio.to_thread(self._delete_stale, digests, grace_s)

    def _delete_stale(self, digests: Sequence[bytes], grace_s: float) -> int:
        deleted = 0
        cutoff = time.time() - grace_s
        for digest in digests:
            path = self.path_of(digest)
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    deleted += 1
        return deleted

    async def ping(self) -> None:
        """See `BlobStore.ping`: the directory (once created) must be reachable."""
        try:
            await asyncio.to_thread(os.stat, self.root)
        except FileNotFoundError:
            return  # created on the first write
        except OSError as exc:
            raise self._unavailable("reach its directory", exc) from None

    async def aclose(self) -> None:
        """Nothing to release."""


def _subdirectories(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(entry for entry in root.iterdir() if entry.is_dir() and len(entry.name) == 2)


def _stale_under(top: Path, cutoff: float) -> list[bytes]:
    """Digests of the blob files under one fan-out directory last written before `cutoff`."""
    found: list[bytes] = []
    for middle in sorted(top.iterdir()):
        if not middle.is_dir():
            continue
        with os.scandir(middle) as entries:
            for entry in entries:
                if entry.name.startswith(".incoming-"):
                    # A write under way, or one whose process died: never a blob, removed
                    # once it is as old as a stale blob.
                    with contextlib.suppress(FileNotFoundError):
                        if entry.stat().st_mtime < cutoff:
                            Path(entry.path).unlink()
                    continue
                if len(entry.name) != 64:
                    continue
                with contextlib.suppress(FileNotFoundError, ValueError):
                    if entry.stat().st_mtime < cutoff:
                        found.append(bytes.fromhex(entry.name))
    return found


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable (the new directory entry), not just the file's bytes.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
