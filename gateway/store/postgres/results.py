"""The result cache in PostgreSQL: rows of `ai_results`, keyed by cache key, with an expiry.

Concurrent lookups, and concurrent writes, share one statement each (`gateway.store.batching`):
a job worker looks its key up before every run and writes the row after it, so a busy replica
would otherwise spend a round trip (and, for writes, a transaction) per job on each.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import NamedTuple

from gateway.store.base import (
    CachedResult,
    Claim,
    LeaseLost,
    ResultRef,
    check_positive,
    parse_job_id,
)
from gateway.store.batching import Batcher
from gateway.store.postgres.pool import Pool, Record, deleted, usd
from gateway.store.postgres.queries import Queries

#: Most lookups or writes gathered into one statement.
_MAX_BATCH = 500
#: Blob digests are SHA-256 digests (a row's digests travel concatenated, 32 bytes each).
DIGEST_BYTES = 32


class _Put(NamedTuple):
    """A `put_result` call waiting for its batch; `job_id`: the held execution (parsed)."""

    key: bytes
    op: str
    scope: str
    model: str
    ref: ResultRef
    ttl_s: float
    cost_usd: float
    claim: Claim | None
    job_id: uuid.UUID | None


def check_result_blobs(ref: ResultRef) -> None:
    """Raises `ValueError` unless every blob digest of `ref` is a SHA-256 digest."""
    if any(len(digest) != DIGEST_BYTES for digest in ref.blobs):
        raise ValueError("result blob digests are SHA-256 digests (32 bytes)")


def result_ref(row: Record) -> ResultRef | None:
    """The result a cache or job row holds, if any."""
    if row["result_json"] is None and row["result_blob"] is None:
        return None
    return ResultRef(row["result_json"], row["result_blob"], tuple(row["result_blobs"] or ()))


def _cached(row: Record) -> CachedResult:
    ref = result_ref(row)
    assert ref is not None  # the table's CHECK constraint
    return CachedResult(
        row["key"],
        row["op"],
        row["scope"],
        row["model"],
        ref,
        row["created_at"],
        row["expires_at"],
        float(row["cost_usd"]),
    )


class PostgresResults:
    """`ResultStore` on PostgreSQL."""

    def __init__(self, pool: Pool, queries: Queries) -> None:
        self._pool = pool
        self._q = queries
        #: The batched lookups and writes (their counts: for tests).
        self.lookups: Batcher[bytes, CachedResult | None] = Batcher(
            self._get_many, max_batch=_MAX_BATCH, key=lambda key: key
        )
        self.writes: Batcher[_Put, CachedResult] = Batcher(
            self._put_many, max_batch=_MAX_BATCH, key=lambda put: put.key
        )

    async def close(self) -> None:
        """Stops batching (callers still waiting get `CancelledError`)."""
        await self.lookups.aclose()
        await self.writes.aclose()

    async def get_result(self, key: bytes) -> CachedResult | None:
        """See `ResultStore.get_result`. Concurrent lookups share one statement."""
        return await self.lookups.submit(key)

    async def _get_many(self, keys: Sequence[bytes]) -> list[CachedResult | None]:
        statement = self._q("get_results", keys=list(keys))
        rows = await self._pool.run(lambda c: c.fetch(*statement))
        found = {bytes(row["key"]): _cached(row) for row in rows}
        return [found.get(key) for key in keys]

    async def put_result(
        self,
        key: bytes,
        *,
        op: str,
        scope: str,
        model: str,
        ref: ResultRef,
        ttl_s: float,
        cost_usd: float = 0.0,
        claim: Claim | None = None,
    ) -> CachedResult:
        """See `ResultStore.put_result`."""
        check_positive("ttl_s", ttl_s)
        job_id = None
        if claim is not None:
            job_id = parse_job_id(claim.job_id)
            if job_id is None:
                raise LeaseLost(claim.job_id, None)
        check_result_blobs(ref)
        put = _Put(key, op, scope, model, ref, float(ttl_s), cost_usd, claim, job_id)
        return await self.writes.submit(put)

    async def _put_many(self, puts: Sequence[_Put]) -> list[CachedResult | LeaseLost]:
        """One statement writing every entry of `puts` whose claim (if any) is current."""
        statement = self._q(
            "put_results",
            keys=[p.key for p in puts],
            ops=[p.op for p in puts],
            scopes=[p.scope for p in puts],
            models=[p.model for p in puts],
            result_jsons=[p.ref.json for p in puts],
            result_json_blobs=[p.ref.json_blob for p in puts],
            result_blobs=[b"".join(p.ref.blobs) for p in puts],
            ttl_s=[p.ttl_s for p in puts],
            costs=[usd(p.cost_usd) for p in puts],
            job_ids=[p.job_id for p in puts],
            worker_ids=[None if p.claim is None else p.claim.worker_id for p in puts],
            fences=[None if p.claim is None else p.claim.fence for p in puts],
        )
        rows = await self._pool.run(lambda c: c.fetch(*statement))
        written = {bytes(row["key"]): _cached(row) for row in rows}
        answers: list[CachedResult | LeaseLost] = []
        for put in puts:
            entry = written.get(put.key)
            if entry is not None:
                answers.append(entry)
            else:
                assert put.claim is not None
                # Nothing says the job's state: the runner learns it from the job.
                answers.append(LeaseLost(put.claim.job_id, None))
        return answers

    async def purge_expired_results(self, limit: int) -> int:
        """See `ResultStore.purge_expired_results`."""
        check_positive("limit", limit)
        statement = self._q("purge_results", limit=limit)
        return deleted(await self._pool.run(lambda c: c.execute(*statement)))
