"""One contract for every blob store: local directory, PostgreSQL, S3 (a real s3s-fs server).

Each backend is corrupted and aged behind its own back the way its bytes really live: the
local file, the `ai_blobs` row, the object's file under the S3 server's root.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from pydantic import SecretStr

from gateway.config import StoreSettings
from gateway.errors import Unavailable
from gateway.store import MemoryStore, NewJob, ResultRef, Store
from gateway.store.blobs import BlobCorrupt, BlobNotFound, BlobStore, create_blob_store
from gateway.store.blobs.gc import collect_garbage
from gateway.store.blobs.local import LocalBlobStore
from gateway.store.blobs.postgres import PostgresBlobStore
from gateway.store.blobs.s3 import S3BlobStore, object_key
from gateway.store.migrate import quote_ident

BACKENDS = ["local", "postgres", "s3"]
MIB = 1024 * 1024


@dataclass
class Backend:
    """A blob store under test, the row store beside it, and ways to tamper with its bytes."""

    kind: str
    blobs: BlobStore
    store: Store
    tamper: Callable[[bytes, bytes], Awaitable[None]]
    age: Callable[[bytes, float], Awaitable[None]]


@pytest.fixture(params=BACKENDS)
async def backend(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    make_store: Any,
    pg_schema: str,
    s3_settings: Callable[..., StoreSettings],
    s3_server: Any,
) -> AsyncIterator[Backend]:
    kind = request.param
    if kind == "local":
        local = LocalBlobStore(tmp_path / "blobs")

        async def tamper_file(digest: bytes, data: bytes) -> None:
            local.path_of(digest).write_bytes(data)

        async def age_file(digest: bytes, seconds: float) -> None:
            then = time.time() - seconds
            os.utime(local.path_of(digest), (then, then))

        yield Backend(kind, local, MemoryStore(), tamper_file, age_file)
    elif kind == "postgres":
        store = await make_store("postgres")
        table = f"{quote_ident(pg_schema)}.ai_blobs"
        url = store.pool.dsn

        async def sql(statement: str, *args: Any) -> None:
            conn = await asyncpg.connect(url)
            try:
                await conn.execute(statement, *args)
            finally:
                await conn.close()

        async def tamper_row(digest: bytes, data: bytes) -> None:
            await sql(f"UPDATE {table} SET data = $2 WHERE digest = $1", digest, data)

        async def age_row(digest: bytes, seconds: float) -> None:
            await sql(
                f"UPDATE {table} SET touched_at = now() - make_interval(secs => $2) "
                "WHERE digest = $1",
                digest,
                seconds,
            )

        yield Backend(kind, PostgresBlobStore(store), store, tamper_row, age_row)
    else:
        settings = s3_settings(s3_prefix="gateway/blobs")
        s3 = create_blob_store(settings, MemoryStore())
        assert isinstance(s3, S3BlobStore)
        bucket = settings.s3_bucket
        assert bucket is not None

        def object_file(digest: bytes) -> Path:
            return s3_server.object_path(bucket, f"gateway/blobs/{object_key(digest)}")

        async def tamper_object(digest: bytes, data: bytes) -> None:
            object_file(digest).write_bytes(data)

        async def age_object(digest: bytes, seconds: float) -> None:
            then = time.time() - seconds
            os.utime(object_file(digest), (then, then))

        yield Backend(kind, s3, MemoryStore(), tamper_object, age_object)
        await s3.aclose()


async def test_put_get_exists(backend: Backend) -> None:
    data = b"\x89PNG not really" * 100
    digest = await backend.blobs.put(data)
    assert digest == hashlib.sha256(data).digest()
    assert await backend.blobs.get(digest) == data
    assert await backend.blobs.exists(digest)


async def test_put_is_idempotent_and_deduplicated(backend: Backend) -> None:
    data = os.urandom(4096)
    first = await backend.blobs.put(data)
    assert await backend.blobs.put(data) == first
    assert await backend.blobs.put(data, first) == first
    stale = [d async for batch in backend.blobs.stale(0, 100) for d in batch]
    assert stale == [first]  # one copy


async def test_concurrent_puts_of_one_blob_store_it_once_and_intact(backend: Backend) -> None:
    data = os.urandom(256 * 1024)
    digests = await asyncio.gather(*(backend.blobs.put(data) for _ in range(12)))
    assert set(digests) == {hashlib.sha256(data).digest()}
    assert await backend.blobs.get(digests[0]) == data
    assert [d async for batch in backend.blobs.stale(0, 100) for d in batch] == [digests[0]]


async def test_a_corrupt_blob_is_never_served_and_heals_on_the_next_put(backend: Backend) -> None:
    data = os.urandom(10_000)
    digest = await backend.blobs.put(data)
    await backend.tamper(digest, b"x" * len(data))
    with pytest.raises(BlobCorrupt):
        await backend.blobs.get(digest)
    # Removed, so the next put writes it again.
    assert not await backend.blobs.exists(digest)
    await backend.blobs.put(data)
    assert await backend.blobs.get(digest) == data


async def test_a_wrong_digest_stores_a_blob_that_is_never_served(backend: Backend) -> None:
    wrong = hashlib.sha256(b"something else").digest()
    assert await backend.blobs.put(b"these bytes", wrong) == wrong
    with pytest.raises(BlobCorrupt):
        await backend.blobs.get(wrong)
    with pytest.raises(ValueError):
        await backend.blobs.put(b"data", b"short")


async def test_a_missing_blob_is_not_found(backend: Backend) -> None:
    digest = hashlib.sha256(b"never stored").digest()
    assert not await backend.blobs.exists(digest)
    with pytest.raises(BlobNotFound):
        await backend.blobs.get(digest)
    with pytest.raises(ValueError):
        await backend.blobs.get(b"short")


async def test_an_image_of_the_largest_size_round_trips(backend: Backend) -> None:
    data = os.urandom(8 * MIB)
    digest = await backend.blobs.put(data)
    assert await backend.blobs.get(digest) == data


async def test_empty_blob(backend: Backend) -> None:
    digest = await backend.blobs.put(b"")
    assert await backend.blobs.get(digest) == b""


async def test_a_put_of_an_old_blob_makes_it_young_again(backend: Backend) -> None:
    data = os.urandom(2048)
    digest = await backend.blobs.put(data)
    await backend.age(digest, 7200)
    assert [d async for batch in backend.blobs.stale(3600, 10) for d in batch] == [digest]
    # Old enough to refresh (the default refreshes after half the 1 h grace): kept young.
    await backend.blobs.put(data)
    assert [d async for batch in backend.blobs.stale(3600, 10) for d in batch] == []


async def test_delete_stale_keeps_a_blob_refreshed_since_it_was_listed(backend: Backend) -> None:
    old, refreshed = os.urandom(100), os.urandom(100)
    digests = [await backend.blobs.put(old), await backend.blobs.put(refreshed)]
    for digest in digests:
        await backend.age(digest, 7200)
    listed = [d async for batch in backend.blobs.stale(3600, 10) for d in batch]
    assert sorted(listed) == sorted(digests)
    await backend.blobs.put(refreshed)
    assert await backend.blobs.delete_stale(listed, 3600) == 1
    assert not await backend.blobs.exists(digests[0])
    assert await backend.blobs.get(digests[1]) == refreshed


async def test_the_collector_deletes_only_old_blobs_no_row_references(backend: Backend) -> None:
    blobs, store = backend.blobs, backend.store
    names = ["job input", "cached image", "cached json", "orphan", "young orphan"]
    digest = {name: await blobs.put(name.encode() * 50) for name in names}
    for name in names[:-1]:
        await backend.age(digest[name], 7200)
    await store.join_or_create_active_job(
        NewJob(user_id="u", op="analyze_video", input_json="{}", input_blobs=(digest["job input"],))
    )
    ref = ResultRef(json_blob=digest["cached json"], blobs=(digest["cached image"],))
    await store.put_result(
        hashlib.sha256(b"key").digest(),
        op="compute_attention_heatmap",
        scope="global",
        model="m",
        ref=ref,
        ttl_s=60,
    )
    done = await collect_garbage(blobs, store, grace_s=3600, batch_size=2)
    assert (done.examined, done.referenced, done.deleted) == (4, 3, 1)
    assert not await blobs.exists(digest["orphan"])
    for name in ["job input", "cached image", "cached json", "young orphan"]:
        assert await blobs.exists(digest[name]), name


def _listening_but_silent() -> socket.socket:
    """A loopback socket that accepts connections (the kernel does) and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("fault", ["refused", "silent"])
async def test_an_s3_server_that_is_down_or_silent_is_unavailable_within_the_timeout(
    fault: str, s3_settings: Callable[..., StoreSettings]
) -> None:
    silent = _listening_but_silent()
    port = silent.getsockname()[1] if fault == "silent" else _closed_port()
    blobs = create_blob_store(
        s3_settings(s3_endpoint=f"http://127.0.0.1:{port}", s3_timeout_s=0.5), MemoryStore()
    )
    try:
        for attempt in (blobs.put(b"data"), blobs.get(hashlib.sha256(b"x").digest()), blobs.ping()):
            with pytest.raises(Unavailable, match="the blob store cannot") as refused:
                await attempt
            assert "s3://" not in refused.value.message  # where it is is the operator's
    finally:
        silent.close()


async def test_s3_credentials_refused_are_unavailable(
    s3_settings: Callable[..., StoreSettings],
) -> None:
    blobs = create_blob_store(s3_settings(s3_secret_access_key=SecretStr("wrong")), MemoryStore())
    with pytest.raises(Unavailable, match="PermissionDenied"):
        await blobs.put(b"data")


async def test_a_database_that_is_down_makes_postgres_blobs_unavailable(
    make_store: Any, closed_port_url: str
) -> None:
    store = await make_store("postgres", database_url=SecretStr(closed_port_url))
    blobs = PostgresBlobStore(store)
    with pytest.raises(Unavailable, match="PostgreSQL"):
        await blobs.put(b"data")
    with pytest.raises(Unavailable):
        await blobs.get(hashlib.sha256(b"data").digest())


async def test_a_disk_that_cannot_be_written_is_unavailable(tmp_path: Path) -> None:
    not_a_directory = tmp_path / "file"
    not_a_directory.write_bytes(b"")
    with pytest.raises(Unavailable, match="cannot write"):
        await LocalBlobStore(not_a_directory).put(b"data")
