"""`BlobStore` in the shared PostgreSQL database: every replica sees every blob.

Blobs are rows of `<schema>.ai_blobs` (migration 0002), one per digest, the bytes in one
`bytea` column that PostgreSQL keeps out of line in TOAST, uncompressed. Rows are
bounded by the configured image and result sizes (8 MiB images by default), far below
`bytea`'s 1 GiB, so one value per blob is simpler than chunking and as fast: TOAST chunks
them internally, and a blob is always read whole. Every call goes through the store's pool,
timeouts and circuit (`PostgresStore.pool`), its statements are entries of the store's
`sql/queries.sql`, so blob I/O fails `Unavailable` exactly like
other store calls and counts toward the store's health.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from gateway.store.blobs.base import BlobCorrupt, BlobNotFound, digest_of, verified
from gateway.store.postgres import PostgresStore
from gateway.store.postgres.pool import Connection, Record


class PostgresBlobStore:
    """`BlobStore` on the `PostgresStore` whose schema, pool and circuit it shares."""

    def __init__(self, store: PostgresStore, *, refresh_after_s: float = 1800.0) -> None:
        self._run = store.pool.run
        self._q = store.queries
        self._refresh_after_s = refresh_after_s

    async def put(self, data: bytes, digest: bytes | None = None) -> bytes:
        """See `BlobStore.put`: the bytes travel only when the blob is not stored yet."""
        digest = digest_of(data, digest)
        q = self._q

        async def put(conn: Connection) -> None:
            age = q("blob_age", digest=digest, refresh_after_s=self._refresh_after_s)
            old = await conn.fetchval(*age)
            if old is False:
                return
            if old and await conn.fetchval(*q("blob_refresh", digest=digest)) is not None:
                return
            # Absent (or collected since the first look): write it.
            await conn.execute(*q("blob_insert", digest=digest, size=len(data), data=data))

        await self._run(put)
        return digest

    async def get(self, digest: bytes) -> bytes:
        """See `BlobStore.get`."""
        digest_of(b"", digest)  # size check
        get = self._q("blob_get", digest=digest)
        data: bytes | None = await self._run(lambda c: c.fetchval(*get))
        if data is None:
            raise BlobNotFound(digest, "is not in the blob store")
        if verified(digest, data):
            return data
        drop = self._q("blob_drop_corrupt", digest=digest)
        await self._run(lambda c: c.execute(*drop))
        raise BlobCorrupt(digest, "was corrupt and has been removed")

    async def exists(self, digest: bytes) -> bool:
        """See `BlobStore.exists`."""
        digest_of(b"", digest)
        exists = self._q("blob_exists", digest=digest)
        return bool(await self._run(lambda c: c.fetchval(*exists)))

    async def stale(self, grace_s: float, batch_size: int) -> AsyncIterator[list[bytes]]:
        """See `BlobStore.stale` (by digest, one statement per batch)."""
        after = b""
        while True:
            page = self._q("blob_stale", grace_s=grace_s, after=after, limit=batch_size)
            rows = await self._run(self._fetch(page))
            if not rows:
                return
            batch = [bytes(row["digest"]) for row in rows]
            yield batch
            after = batch[-1]

    @staticmethod
    def _fetch(statement: tuple[Any, ...]) -> Callable[[Connection], Awaitable[list[Record]]]:
        async def fetch(conn: Connection) -> list[Record]:
            return await conn.fetch(*statement)

        return fetch

    async def delete_stale(self, digests: Sequence[bytes], grace_s: float) -> int:
        """See `BlobStore.delete_stale` (one statement: the age is checked as rows are deleted,
        so a concurrent `put` either refreshes a blob first or writes it again after)."""
        if not digests:
            return 0
        delete = self._q("blob_delete_stale", digests=list(digests), grace_s=grace_s)
        status = await self._run(lambda c: c.execute(*delete))
        return int(status.rsplit(" ", 1)[-1])

    async def ping(self) -> None:
        """See `BlobStore.ping` (the store's own health covers the database)."""
        await self._run(lambda c: c.fetchval("SELECT 1"))

    async def aclose(self) -> None:
        """Nothing of its own: the store owns the pool."""
