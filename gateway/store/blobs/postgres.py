"""`BlobStore` in the shared PostgreSQL database: every replica sees every blob.

Blobs are rows of `<schema>.ai_blobs` (migration 0002), one per digest, the bytes in one
`bytea` column that PostgreSQL keeps out of line in TOAST, uncompressed. Rows are
bounded by the configured image and result sizes (8 MiB images by default), far below
`bytea`'s 1 GiB, so one value per blob is simpler than chunking and as fast: TOAST chunks
them internally, and a blob is always read whole. Every call goes through the store's pool,
timeouts and circuit (`PostgresStore.run`), so blob I/O fails `Unavailable` exactly like
other store calls and counts toward the store's health.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from gateway.store import migrate as migrations
from gateway.store.blobs.base import BlobCorrupt, BlobNotFound, digest_of, verified
from gateway.store.postgres import Connection, PostgresStore, Record


class _Sql:
    """The blob statements, with the schema filled in once."""

    def __init__(self, schema: str) -> None:
        def q(sql: str) -> str:
            return migrations.render(sql, schema)

        #: Whether a blob is stored, and whether it is old enough to be refreshed ($2 seconds).
        self.age = q(
            "SELECT touched_at < now() - make_interval(secs => $2) AS old "
            "FROM {schema}.ai_blobs WHERE digest = $1"
        )
        self.refresh = q(
            "UPDATE {schema}.ai_blobs SET touched_at = now() WHERE digest = $1 RETURNING size"
        )
        # A concurrent put of the same blob may win the insert; either way it is stored and young.
        self.insert = q(
            "INSERT INTO {schema}.ai_blobs (digest, size, data) VALUES ($1, $2, $3) "
            "ON CONFLICT (digest) DO UPDATE SET touched_at = now()"
        )
        self.get = q("SELECT data FROM {schema}.ai_blobs WHERE digest = $1")
        # Only if still corrupt: a good row written meanwhile is left alone.
        self.drop_corrupt = q(
            "DELETE FROM {schema}.ai_blobs WHERE digest = $1 AND sha256(data) <> digest"
        )
        self.exists = q("SELECT EXISTS (SELECT 1 FROM {schema}.ai_blobs WHERE digest = $1)")
        self.stale = q(
            "SELECT digest FROM {schema}.ai_blobs "
            "WHERE touched_at < now() - make_interval(secs => $1) AND digest > $2 "
            "ORDER BY digest LIMIT $3"
        )
        self.delete_stale = q(
            "DELETE FROM {schema}.ai_blobs WHERE digest = ANY($1::bytea[]) "
            "AND touched_at < now() - make_interval(secs => $2)"
        )


class PostgresBlobStore:
    """`BlobStore` on the `PostgresStore` whose schema, pool and circuit it shares."""

    def __init__(self, store: PostgresStore, *, refresh_after_s: float = 1800.0) -> None:
        self._store = store
        self._sql = _Sql(store.schema)
        self._refresh_after_s = refresh_after_s

    async def put(self, data: bytes, digest: bytes | None = None) -> bytes:
        """See `BlobStore.put`: the bytes travel only when the blob is not stored yet."""
        digest = digest_of(data, digest)
        sql = self._sql

        async def put(conn: Connection) -> None:
            old = await conn.fetchval(sql.age, digest, self._refresh_after_s)
            if old is False:
                return
            if old and await conn.fetchval(sql.refresh, digest) is not None:
                return
            # Absent (or collected since the first look): write it.
            await conn.execute(sql.insert, digest, len(data), data)

        await self._store.run(put)
        return digest

    async def get(self, digest: bytes) -> bytes:
        """See `BlobStore.get`."""
        digest_of(b"", digest)  # size check
        data: bytes | None = await self._store.run(lambda c: c.fetchval(self._sql.get, digest))
        if data is None:
            raise BlobNotFound(digest, "is not in the blob store")
        if verified(digest, data):
            return data
        await self._store.run(lambda c: c.execute(self._sql.drop_corrupt, digest))
        raise BlobCorrupt(digest, "was corrupt and has been removed")

    async def exists(self, digest: bytes) -> bool:
        """See `BlobStore.exists`."""
        digest_of(b"", digest)
        return bool(await self._store.run(lambda c: c.fetchval(self._sql.exists, digest)))

    async def stale(self, grace_s: float, batch_size: int) -> AsyncIterator[list[bytes]]:
        """See `BlobStore.stale` (by digest, one statement per batch)."""
        after = b""
        while True:
            rows = await self._store.run(self._stale_page(grace_s, after, batch_size))
            if not rows:
                return
            batch = [bytes(row["digest"]) for row in rows]
            yield batch
            after = batch[-1]

    def _stale_page(
        self, grace_s: float, after: bytes, limit: int
    ) -> Callable[[Connection], Awaitable[list[Record]]]:
        async def page(conn: Connection) -> list[Record]:
            return await conn.fetch(self._sql.stale, grace_s, after, limit)

        return page

    async def delete_stale(self, digests: Sequence[bytes], grace_s: float) -> int:
        """See `BlobStore.delete_stale` (one statement: the age is checked as rows are deleted,
        so a concurrent `put` either refreshes a blob first or writes it again after)."""
        if not digests:
            return 0
        status = await self._store.run(
            lambda c: c.execute(self._sql.delete_stale, list(digests), grace_s)
        )
        return int(status.rsplit(" ", 1)[-1])

    async def ping(self) -> None:
        """See `BlobStore.ping` (the store's own health covers the database)."""
        await self._store.run(lambda c: c.fetchval("SELECT 1"))

    async def aclose(self) -> None:
        """Nothing of its own: the store owns the pool."""
