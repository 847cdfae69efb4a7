"""What only the local blob store does: its directory layout, and the files a racing or dying
writer leaves (the rest of its behaviour is the contract of tests/store/test_blobs.py)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from pathlib import Path

import pytest

from gateway.store.blobs import LocalBlobStore


@pytest.fixture
def blobs(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "blobs")


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


async def test_put_names_bytes_by_their_sha256_in_fanned_out_directories(
    blobs: LocalBlobStore,
) -> None:
    data = os.urandom(10_000)
    digest = await blobs.put(data)
    assert digest == hashlib.sha256(data).digest()
    hex_name = digest.hex()
    path = blobs.root / hex_name[:2] / hex_name[2:4] / hex_name
    assert blobs.path_of(digest) == path and path.read_bytes() == data


async def test_racing_writers_leave_one_file_and_no_temporary_file(blobs: LocalBlobStore) -> None:
    data = b"the same image" * 1000
    digests = await asyncio.gather(*(blobs.put(data) for _ in range(20)))
    assert files_under(blobs.root) == [blobs.path_of(digests[0])]


async def test_the_partial_file_of_a_writer_that_died_goes_once_it_is_old(
    blobs: LocalBlobStore,
) -> None:
    digest = await blobs.put(b"complete")
    partial = blobs.path_of(digest).parent / ".incoming-abc123"
    partial.write_bytes(b"half of an ima")
    assert [d async for batch in blobs.stale(3600, 10) for d in batch] == []
    assert partial.exists()  # young: maybe a write under way
    then = time.time() - 7200
    os.utime(partial, (then, then))
    assert [d async for batch in blobs.stale(3600, 10) for d in batch] == []
    assert not partial.exists()
