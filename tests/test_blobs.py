"""The local content-addressed blob store, on a real directory."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest

from gateway.blobs import BlobCorrupt, BlobNotFound, LocalBlobStore
from gateway.errors import Unavailable


@pytest.fixture
def blobs(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "blobs")


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


async def test_a_digest_the_caller_has_names_the_blob_and_a_wrong_one_is_never_served(
    blobs: LocalBlobStore,
) -> None:
    data = os.urandom(5_000)
    digest = hashlib.sha256(data).digest()
    assert await blobs.put(data, digest) == digest
    assert await blobs.get(digest) == data

    wrong = hashlib.sha256(b"other bytes").digest()
    assert await blobs.put(data, wrong) == wrong
    with pytest.raises(BlobCorrupt):
        await blobs.get(wrong)
    with pytest.raises(ValueError, match="32 bytes"):
        await blobs.put(data, b"short")


async def test_put_names_bytes_by_their_sha256_in_fanned_out_directories(
    blobs: LocalBlobStore,
) -> None:
    data = os.urandom(10_000)
    digest = await blobs.put(data)
    assert digest == hashlib.sha256(data).digest()
    hex_name = digest.hex()
    path = blobs.root / hex_name[:2] / hex_name[2:4] / hex_name
    assert blobs.path_of(digest) == path and path.read_bytes() == data
    assert await blobs.get(digest) == data
    assert await blobs.exists(digest)


async def test_put_is_idempotent_and_safe_to_race(blobs: LocalBlobStore) -> None:
    data = b"the same image" * 1000
    digests = await asyncio.gather(*(blobs.put(data) for _ in range(20)))
    assert len(set(digests)) == 1
    # One file, and no temporary file left behind by any of the racing writers.
    assert files_under(blobs.root) == [blobs.path_of(digests[0])]
    assert await blobs.put(data) == digests[0]


async def test_empty_blob(blobs: LocalBlobStore) -> None:
    digest = await blobs.put(b"")
    assert await blobs.get(digest) == b""


async def test_missing_blob(blobs: LocalBlobStore) -> None:
    digest = hashlib.sha256(b"never stored").digest()
    assert not await blobs.exists(digest)
    with pytest.raises(BlobNotFound):
        await blobs.get(digest)


async def test_corrupt_blob_is_never_served_and_heals_on_the_next_put(
    blobs: LocalBlobStore,
) -> None:
    data = b"heatmap overlay" * 100
    digest = await blobs.put(data)
    path = blobs.path_of(digest)
    path.write_bytes(b"X" + data[1:])  # same size, other bytes: bit rot
    with pytest.raises(BlobCorrupt):
        await blobs.get(digest)
    assert not path.exists()
    await blobs.put(data)
    assert await blobs.get(digest) == data


async def test_a_digest_of_the_wrong_size_is_a_programming_error(blobs: LocalBlobStore) -> None:
    with pytest.raises(ValueError):
        await blobs.get(b"short")


async def test_an_unwritable_directory_is_unavailable(tmp_path: Path) -> None:
    not_a_directory = tmp_path / "file"
    not_a_directory.write_bytes(b"")
    with pytest.raises(Unavailable, match="cannot write"):
        await LocalBlobStore(not_a_directory).put(b"data")
