"""The result cache in PostgreSQL: rows of `ai_results`, keyed by cache key, with an expiry."""

from __future__ import annotations

from gateway.store.base import (
    CachedResult,
    Claim,
    LeaseLost,
    ResultRef,
    check_positive,
    parse_job_id,
)
from gateway.store.postgres.pool import Pool, Record, deleted, usd
from gateway.store.postgres.queries import Queries


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

    async def get_result(self, key: bytes) -> CachedResult | None:
        """See `ResultStore.get_result`."""
        row = await self._pool.run(lambda c: c.fetchrow(*self._q("get_result", key=key)))
        return None if row is None else _cached(row)

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
        held: dict[str, object] = {}
        if claim is not None:
            job_id = parse_job_id(claim.job_id)
            if job_id is None:
                raise LeaseLost(claim.job_id, None)
            held = {"job_id": job_id, "worker_id": claim.worker_id, "fence": claim.fence}
        statement = self._q(
            "put_result" if claim is None else "put_result_held",
            **held,
            key=key,
            op=op,
            scope=scope,
            model=model,
            result_json=ref.json,
            result_blob=ref.json_blob,
            result_blobs=list(ref.blobs),
            ttl_s=float(ttl_s),
            cost_usd=usd(cost_usd),
        )
        row = await self._pool.run(lambda c: c.fetchrow(*statement))
        if row is None:
            assert claim is not None
            # The row says nothing of the job's state: the runner learns it from the job.
            raise LeaseLost(claim.job_id, None)
        return _cached(row)

    async def purge_expired_results(self, limit: int) -> int:
        """See `ResultStore.purge_expired_results`."""
        check_positive("limit", limit)
        statement = self._q("purge_results", limit=limit)
        return deleted(await self._pool.run(lambda c: c.execute(*statement)))
