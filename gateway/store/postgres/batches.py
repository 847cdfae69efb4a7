"""Batches of executions delivered through the Gemini Batch API, over rows of `ai_batches`
(`BatchStore`): gathering due executions into a batch, the batch's lease and its take-over,
progress on its executions, and its end.

A gather is one transaction: the ready executions are locked (`FOR UPDATE SKIP LOCKED`, so
concurrent gatherers on other replicas take disjoint sets), started as attempts held by the new
batch, and the batch row is written, leased to the gatherer. Executions are then changed with
the job statements as lease holders (`Batch.holder`).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from gateway.store.base import (
    BATCH_HOLD_S,
    Batch,
    BatchLost,
    Job,
    JobProgress,
    batch_holder,
    check_positive,
    parse_job_id,
)
from gateway.store.postgres.jobs import job_from_row, mirror_shared
from gateway.store.postgres.pool import Connection, Pool, Record
from gateway.store.postgres.queries import Queries


def _batch(row: Record) -> Batch:
    return Batch(
        id=str(row["id"]),
        model=row["model"],
        job_ids=tuple(str(job_id) for job_id in row["job_ids"]),
        name=row["name"],
        locked_by=row["locked_by"],
        locked_until=row["locked_until"],
        attempts=row["attempts"],
        created_at=row["created_at"],
        submitted_at=row["submitted_at"],
    )


def _uuids(job_ids: Sequence[str]) -> list[uuid.UUID]:
    parsed = [parse_job_id(job_id) for job_id in job_ids]
    return [job_id for job_id in parsed if job_id is not None]


class PostgresBatches:
    """`BatchStore` on PostgreSQL."""

    def __init__(self, pool: Pool, queries: Queries) -> None:
        self._pool = pool
        self._q = queries

    async def gather_batch(
        self, worker_id: str, lease_s: float, limit: int, window_s: float
    ) -> tuple[Batch, list[Job]] | None:
        """See `BatchStore.gather_batch`."""
        check_positive("lease_s", lease_s)
        check_positive("limit", limit)
        q = self._q
        batch_id = uuid.uuid4()

        async def gather(conn: Connection) -> tuple[Record, list[Record]] | None:
            due = await conn.fetch(*q("gather_due", limit=limit, window_s=float(window_s)))
            if not due:
                return None
            job_ids = [row["id"] for row in due]
            rows = await conn.fetch(
                *q(
                    "gather_start",
                    job_ids=job_ids,
                    worker_id=batch_holder(str(batch_id)),
                    lease_s=BATCH_HOLD_S,
                )
            )
            await mirror_shared(conn, q, rows)
            by_id = {row["id"]: row for row in rows}
            ordered = [by_id[job_id] for job_id in job_ids if job_id in by_id]
            batch = await conn.fetchrow(
                *q(
                    "insert_batch",
                    batch_id=batch_id,
                    model=ordered[0]["model"],
                    job_ids=[row["id"] for row in ordered],
                    worker_id=worker_id,
                    lease_s=float(lease_s),
                )
            )
            assert batch is not None
            return batch, ordered

        gathered = await self._pool.run(gather, transaction=True)
        if gathered is None:
            return None
        batch, rows = gathered
        return _batch(batch), [job_from_row(row) for row in rows]

    async def take_over_batches(self, worker_id: str, lease_s: float, limit: int) -> list[Batch]:
        """See `BatchStore.take_over_batches`."""
        check_positive("lease_s", lease_s)
        check_positive("limit", limit)
        statement = self._q(
            "take_over_batches", worker_id=worker_id, lease_s=float(lease_s), limit=limit
        )
        rows = await self._pool.run(lambda c: c.fetch(*statement))
        return sorted(map(_batch, rows), key=lambda batch: batch.created_at)

    async def heartbeat_batch(
        self,
        batch_id: str,
        worker_id: str,
        lease_s: float,
        *,
        name: str | None = None,
        job_ids: Sequence[str] | None = None,
    ) -> Batch:
        """See `BatchStore.heartbeat_batch`."""
        check_positive("lease_s", lease_s)
        parsed = parse_job_id(batch_id)
        if parsed is None:
            raise BatchLost(batch_id)
        statement = self._q(
            "heartbeat_batch",
            batch_id=parsed,
            worker_id=worker_id,
            lease_s=float(lease_s),
            name=name,
            job_ids=None if job_ids is None else _uuids(job_ids),
        )
        row = await self._pool.run(lambda c: c.fetchrow(*statement))
        if row is None:
            raise BatchLost(batch_id)
        return _batch(row)

    async def record_batch_progress(self, batch: Batch, progress: JobProgress) -> int:
        """See `BatchStore.record_batch_progress`."""
        statement = self._q(
            "batch_progress",
            job_ids=_uuids(batch.job_ids),
            holder=batch.holder,
            progress=progress.to_json(),
        )

        async def record(conn: Connection) -> int:
            rows = await conn.fetch(*statement)
            await mirror_shared(conn, self._q, rows)
            return len(rows)

        return await self._pool.run(record, transaction=True)

    async def batch_executions(self, batch: Batch) -> list[Job]:
        """See `BatchStore.batch_executions`."""
        statement = self._q("jobs_by_ids", job_ids=_uuids(batch.job_ids))
        rows = await self._pool.run(lambda c: c.fetch(*statement))
        by_id = {str(row["id"]): job_from_row(row) for row in rows}
        return [by_id[job_id] for job_id in batch.job_ids if job_id in by_id]

    async def finish_batch(self, batch_id: str, worker_id: str) -> None:
        """See `BatchStore.finish_batch`."""
        parsed = parse_job_id(batch_id)
        if parsed is None:
            raise BatchLost(batch_id)
        statement = self._q("finish_batch", batch_id=parsed, worker_id=worker_id)
        status = await self._pool.run(lambda c: c.execute(*statement))
        if status.split()[-1] == "0":
            raise BatchLost(batch_id)
