"""Blob store throughput and garbage collection, on every backend, with the local directory as
the anchor in the same run.

- put and get of 1 MiB images (distinct random bytes, so nothing deduplicates), `--count` of
  them with `--concurrency` in flight, on PostgreSQL (`ai_blobs`, through the store's pool),
  S3 (a real s3s-fs server on loopback, over HTTP) and the local directory; MiB/s and the ratio
  to the local directory. Every backend gets the same blobs from the same client code
  (`BlobStore`); what differs is where the bytes go: local writes fsync to the disk, s3s-fs
  writes files on the same disk behind an HTTP server, PostgreSQL writes TOAST rows with its
  own WAL and fsync policy.
- the collector (`gateway.store.blobs.gc`) over a store holding `--orphans` blobs past their
  grace period that no row references: time and count deleted, per backend.

    python bench/blobs.py [--count 200] [--concurrency 8] [--orphans 10000]

PostgreSQL from `GATEWAY_TEST_DATABASE_URL`'s default (`postgresql://postgres@127.0.0.1:5432/test`;
a fresh schema, dropped after); s3s-fs is built by `python tests/s3s_fs.py --build` if missing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
from pydantic import SecretStr

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import s3s_fs
from _report import report
from _rpc_harness import DEFAULT_DATABASE_URL, fresh_schema

from gateway.config import StoreSettings
from gateway.store import MemoryStore, Store
from gateway.store.blobs import BlobStore, LocalBlobStore
from gateway.store.blobs.gc import collect_garbage
from gateway.store.blobs.postgres import PostgresBlobStore
from gateway.store.blobs.s3 import S3BlobStore, object_key
from gateway.store.postgres import PostgresStore, run_migrations

MIB = 1024 * 1024
GRACE_S = 3600.0


class Backend:
    """One blob store, the row store the collector asks, and how to age a blob."""

    def __init__(
        self,
        name: str,
        blobs: BlobStore,
        store: Store,
        age_all: Callable[[list[bytes]], Awaitable[None]],
    ) -> None:
        self.name, self.blobs, self.store, self.age_all = name, blobs, store, age_all


async def timed(concurrency: int, jobs: list[Callable[[], Awaitable[Any]]]) -> float:
    """Seconds to run `jobs` with at most `concurrency` in flight."""
    gate = asyncio.Semaphore(concurrency)

    async def one(job: Callable[[], Awaitable[Any]]) -> None:
        async with gate:
            await job()

    start = time.perf_counter()
    await asyncio.gather(*(one(job) for job in jobs))
    return time.perf_counter() - start


async def throughput(backend: Backend, count: int, concurrency: int) -> tuple[float, float]:
    """(put MiB/s, get MiB/s) of `count` distinct 1 MiB blobs."""
    data = [os.urandom(MIB) for _ in range(count)]
    digests: list[bytes] = []

    def put(blob: bytes) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            digests.append(await backend.blobs.put(blob))

        return run

    put_s = await timed(concurrency, [put(blob) for blob in data])

    def get(digest: bytes) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            await backend.blobs.get(digest)

        return run

    get_s = await timed(concurrency, [get(digest) for digest in digests])
    return count / put_s, count / get_s


async def gc_run(backend: Backend, orphans: int, concurrency: int) -> tuple[int, float]:
    """Writes `orphans` small blobs, ages them past the grace period, collects: (deleted, s)."""
    digests: list[bytes] = []

    def put(i: int) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            digests.append(await backend.blobs.put(i.to_bytes(8, "big") * 128))

        return run

    await timed(concurrency * 4, [put(i) for i in range(orphans)])
    await backend.age_all(digests)
    done = await collect_garbage(backend.blobs, backend.store, grace_s=GRACE_S, batch_size=500)
    assert done.referenced == 0
    return done.deleted, done.seconds


def age_files(path_of: Callable[[bytes], Path]) -> Callable[[list[bytes]], Awaitable[None]]:
    async def age(digests: list[bytes]) -> None:
        then = time.time() - 2 * GRACE_S
        for digest in digests:
            os.utime(path_of(digest), (then, then))

    return age


@asynccontextmanager
async def backends(root: Path, database_url: str) -> AsyncIterator[list[Backend]]:
    server = s3s_fs.start(root / "s3")
    stores: list[PostgresStore] = []
    try:
        async with fresh_schema(database_url) as schema:
            settings = StoreSettings(
                database_url=SecretStr(database_url),
                schema_name=schema,
                command_timeout_s=30,
                pool_max_size=16,
            )
            await run_migrations(settings)

            def fresh_pg() -> PostgresStore:
                store = PostgresStore(settings)
                stores.append(store)
                return store

            async def age_rows(digests: list[bytes]) -> None:
                conn = await asyncpg.connect(database_url)
                try:
                    await conn.execute(
                        f'UPDATE "{schema}".ai_blobs SET touched_at = now() - interval '
                        "'2 hours' WHERE digest = ANY($1::bytea[])",
                        digests,
                    )
                finally:
                    await conn.close()

            def make(kind: str) -> Backend:
                if kind == "local":
                    local = LocalBlobStore(Path(tempfile.mkdtemp(dir=root)))
                    return Backend(
                        "local directory", local, MemoryStore(), age_files(local.path_of)
                    )
                if kind == "postgres":
                    store = fresh_pg()
                    return Backend("postgres", PostgresBlobStore(store), store, age_rows)
                bucket = server.new_bucket()
                s3 = S3BlobStore(
                    bucket,
                    endpoint=server.endpoint,
                    access_key_id=s3s_fs.ACCESS_KEY,
                    secret_access_key=s3s_fs.SECRET_KEY,
                    timeout_s=30,
                )
                return Backend(
                    "s3 (s3s-fs)",
                    s3,
                    MemoryStore(),
                    age_files(lambda d: server.object_path(bucket, object_key(d))),
                )

            made = [make("local"), make("postgres"), make("s3")]
            for store in stores:
                await store.start()
            yield made
    finally:
        for store in stores:
            await store.close()
        server.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--orphans", type=int, default=10_000)
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        root = Path(tmp)
        async with backends(root, args.database_url) as all_backends:
            anchor, *others = all_backends
            anchor_put, anchor_get = await throughput(anchor, args.count, args.concurrency)
            print(
                f"{args.count} distinct 1 MiB blobs, {args.concurrency} in flight; "
                f"anchor: {anchor.name}"
            )
            for backend in others:
                ours_put, ours_get = await throughput(backend, args.count, args.concurrency)
                report(f"put 1 MiB: {backend.name}", ours_put, anchor_put, "MiB/s", "local")
                report(f"get 1 MiB: {backend.name}", ours_get, anchor_get, "MiB/s", "local")
            print(f"collector: {args.orphans} orphaned blobs past the grace period")
            anchor_deleted, anchor_s = await gc_run(anchor, args.orphans, args.concurrency)
            for backend in all_backends:
                deleted, seconds = (
                    (anchor_deleted, anchor_s)
                    if backend is anchor
                    else await gc_run(backend, args.orphans, args.concurrency)
                )
                print(
                    f"gc {backend.name:<20} deleted {deleted:>6} of {args.orphans} "
                    f"in {seconds:6.2f} s ({deleted / seconds:>8,.0f} blobs/s; "
                    f"ratio to local {anchor_s / seconds:5.2f}x)"
                )


if __name__ == "__main__":
    asyncio.run(main())
