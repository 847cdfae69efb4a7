"""The shared store: results, jobs and usage in PostgreSQL, through an asyncpg pool.

Every replica talks to the same schema. `PostgresStore` composes one room per concern:

- `pool`: the connection pool behind a circuit; every failure to reach, hear from or use the
  database is a `gateway.errors.Unavailable`, and after one, calls fail at once for
  `reconnect_interval_s` instead of queueing behind a dead database.
- `listener`: the one LISTEN connection, fanning job notifications out to any number of
  waiters in process (`ChangeHub`); while it is down, waiters poll.
- `jobs`: the job state machine (coalescing, leases, batched inserts and completions).
- `batches`: Batch API batches of executions, their gathering and leases.
- `results`: the result cache rows. `usage`: the usage ledger.
- `sql/queries.sql` (through `queries`): every statement, named and described, with named
  parameters.

Nothing needs a restart when the database returns: asyncpg replaces broken pooled
connections, the pool is re-created on the next call if it was never made, and the listener
reconnects on its own.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, date, datetime

from gateway.config import StoreSettings
from gateway.errors import NotFound
from gateway.model import UsageRecord
from gateway.store.base import (
    ABANDONED_OUTCOME,
    MAX_ERROR_HISTORY,
    NO_SPEND,
    Batch,
    CachedResult,
    Claim,
    Job,
    JobCursor,
    JobError,
    JobFilter,
    JobProgress,
    JobSpend,
    JobStatus,
    JoinOutcome,
    LeaseLost,
    NewJob,
    Redrive,
    ResultRef,
    UsageDay,
    UsageEntry,
)
from gateway.store.changes import DUE, ChangeHub
from gateway.store.postgres.batches import PostgresBatches
from gateway.store.postgres.jobs import PostgresJobs
from gateway.store.postgres.listener import Listener, channel_name
from gateway.store.postgres.pool import Pool, run_migrations
from gateway.store.postgres.queries import Queries
from gateway.store.postgres.results import PostgresResults
from gateway.store.postgres.usage import PostgresUsage


def _advisory_key(name: str) -> int:
    """A signed 64-bit advisory lock key for `name` (stable across replicas and versions)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


class PostgresStore:
    """`Store` on PostgreSQL: the results, jobs and usage parts over one pool and listener."""

    def __init__(self, settings: StoreSettings) -> None:
        self._pool = Pool(settings)
        schema = self._pool.schema
        channel = channel_name(schema)
        queries = self.queries = Queries(
            schema,
            {
                "channel": channel,
                "due": DUE,
                "announce": True,
                "succeeded_retention_s": settings.job_retention_s,
                "failed_retention_s": settings.failed_job_retention_s,
                "cancelled_retention_s": settings.cancelled_job_retention_s,
                "errors_kept": MAX_ERROR_HISTORY,
                "abandoned": ABANDONED_OUTCOME,
            },
        )
        self._hub = ChangeHub()
        self._listener = Listener(
            settings, self._pool.dsn, channel, self._hub, self._pool.call_timeout_s
        )
        #: The result cache (`ResultStore`).
        self.results = PostgresResults(self._pool, queries)
        #: Jobs (`JobStore`).
        self.jobs = PostgresJobs(
            self._pool, queries, self._hub, settings, _advisory_key(f"{schema}.claim")
        )
        #: Batches of executions delivered through the Batch API (`BatchStore`).
        self.batches = PostgresBatches(self._pool, queries)
        #: The usage ledger (`UsageStore`).
        self.usage = PostgresUsage(self._pool, queries)

    @property
    def schema(self) -> str:
        """The PostgreSQL schema this store uses."""
        return self._pool.schema

    #: Every statement of `sql/queries.sql`, for the blob store that shares the schema.
    queries: Queries

    @property
    def pool(self) -> Pool:
        """The circuit-guarded connections, for other tables of the same schema."""
        return self._pool

    @property
    def listening(self) -> bool:
        """Whether the LISTEN connection is up (waiters poll while it is not)."""
        return self._listener.listening

    @property
    def notifications_received(self) -> int:
        """Notifications received by the listener (for metrics and tests)."""
        return self._listener.notifications_received

    async def start(self) -> None:
        """Connects and starts the listener; a database that is down now is retried later."""
        self._listener.start(f"viewbait-store-listener:{self.schema}")
        await self._pool.open()

    async def close(self) -> None:
        """Stops the listener, closes the pool and wakes every waiter."""
        self._pool.closing()
        await self._listener.close()
        await self.jobs.close()
        await self.results.close()
        await self._pool.close()
        self._hub.publish_all()

    # -- result cache ------------------------------------------------------------------------

    async def get_result(self, key: bytes) -> CachedResult | None:
        """See `ResultStore.get_result`."""
        return await self.results.get_result(key)

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
        try:
            return await self.results.put_result(
                key,
                op=op,
                scope=scope,
                model=model,
                ref=ref,
                ttl_s=ttl_s,
                cost_usd=cost_usd,
                claim=claim,
            )
        except LeaseLost as lost:
            # Refused: tell the runner where its execution went, as the job writes do.
            try:
                current: Job | None = await self.jobs.get_job(lost.job_id, None)
            except NotFound:
                current = None
            raise LeaseLost(lost.job_id, current) from None

    async def purge_expired_results(self, limit: int) -> int:
        """See `ResultStore.purge_expired_results`."""
        return await self.results.purge_expired_results(limit)

    # -- jobs --------------------------------------------------------------------------------

    async def join_or_create_active_job(self, new: NewJob) -> JoinOutcome:
        """See `JobStore.join_or_create_active_job`."""
        return await self.jobs.join_or_create_active_job(new)

    async def join_or_create_active_jobs(self, news: Sequence[NewJob]) -> list[JoinOutcome]:
        """See `JobStore.join_or_create_active_jobs`."""
        return await self.jobs.join_or_create_active_jobs(news)

    async def find_job_by_idempotency_key(self, user_id: str, key: str) -> Job | None:
        """See `JobStore.find_job_by_idempotency_key`."""
        return await self.jobs.find_job_by_idempotency_key(user_id, key)

    async def get_job(self, job_id: str, user_id: str | None) -> Job:
        """See `JobStore.get_job`."""
        return await self.jobs.get_job(job_id, user_id)

    async def claim_job(
        self, job_id: str, worker_id: str, lease_s: float, *, held: bool = False
    ) -> Job | None:
        """See `JobStore.claim_job`."""
        return await self.jobs.claim_job(job_id, worker_id, lease_s, held=held)

    async def claim_batch(
        self,
        worker_id: str,
        limit: int,
        lease_s: float,
        caps: Mapping[int, int] | None = None,
    ) -> list[Job]:
        """See `JobStore.claim_batch`."""
        return await self.jobs.claim_batch(worker_id, limit, lease_s, caps)

    async def heartbeat_job(
        self, claim: Claim, lease_s: float, progress: JobProgress | None = None
    ) -> Job:
        """See `JobStore.heartbeat_job`."""
        return await self.jobs.heartbeat_job(claim, lease_s, progress)

    async def complete_job(
        self,
        claim: Claim,
        result: ResultRef,
        *,
        spend: JobSpend = NO_SPEND,
        cached: bool = False,
        result_cost_usd: float = 0.0,
    ) -> Job:
        """See `JobStore.complete_job`."""
        return await self.jobs.complete_job(
            claim, result, spend=spend, cached=cached, result_cost_usd=result_cost_usd
        )

    async def fail_job(
        self,
        claim: Claim,
        error: JobError,
        retry_after_s: float | None = None,
        *,
        spend: JobSpend = NO_SPEND,
    ) -> Job:
        """See `JobStore.fail_job`."""
        return await self.jobs.fail_job(claim, error, retry_after_s, spend=spend)

    async def defer_job(
        self,
        claim: Claim,
        error: JobError,
        delay_s: float,
        *,
        spend: JobSpend = NO_SPEND,
    ) -> Job:
        """See `JobStore.defer_job`."""
        return await self.jobs.defer_job(claim, error, delay_s, spend=spend)

    async def cancel_job(self, job_id: str, user_id: str | None) -> Job:
        """See `JobStore.cancel_job`."""
        return await self.jobs.cancel_job(job_id, user_id)

    async def retry_job(self, job_id: str, user_id: str | None, attempts: int) -> Redrive:
        """See `JobStore.retry_job`."""
        return await self.jobs.retry_job(job_id, user_id, attempts)

    async def rescue_expired_leases(self, limit: int) -> int:
        """See `JobStore.rescue_expired_leases`."""
        return await self.jobs.rescue_expired_leases(limit)

    async def list_jobs(
        self,
        user_id: str | None,
        job_filter: JobFilter,
        limit: int,
        after: JobCursor | None = None,
    ) -> list[Job]:
        """See `JobStore.list_jobs`."""
        return await self.jobs.list_jobs(user_id, job_filter, limit, after)

    def subscribe_due(self, event: asyncio.Event) -> AbstractContextManager[asyncio.Event]:
        """See `JobStore.subscribe_due`."""
        return self.jobs.subscribe_due(event)

    def subscribe_job(
        self, job_id: str, event: asyncio.Event, *, after_seq: int | None = None
    ) -> AbstractContextManager[asyncio.Event]:
        """See `JobStore.subscribe_job`."""
        return self.jobs.subscribe_job(job_id, event, after_seq=after_seq)

    async def wait_for_job_change(
        self, job_id: str, user_id: str, after_seq: int, timeout_s: float
    ) -> Job:
        """See `JobStore.wait_for_job_change`."""
        return await self.jobs.wait_for_job_change(job_id, user_id, after_seq, timeout_s)

    async def purge_finished_jobs(
        self,
        limit: int,
        *,
        finished_before_s: float | None = None,
        statuses: frozenset[JobStatus] = frozenset(),
    ) -> dict[JobStatus, int]:
        """See `JobStore.purge_finished_jobs`."""
        return await self.jobs.purge_finished_jobs(
            limit, finished_before_s=finished_before_s, statuses=statuses
        )

    async def queue_depth(self) -> dict[tuple[JobStatus, str], int]:
        """See `JobStore.queue_depth`."""
        return await self.jobs.queue_depth()

    # -- batches -----------------------------------------------------------------------------

    async def gather_batch(
        self, worker_id: str, lease_s: float, limit: int, window_s: float
    ) -> tuple[Batch, list[Job]] | None:
        """See `BatchStore.gather_batch`."""
        return await self.batches.gather_batch(worker_id, lease_s, limit, window_s)

    async def take_over_batches(self, worker_id: str, lease_s: float, limit: int) -> list[Batch]:
        """See `BatchStore.take_over_batches`."""
        return await self.batches.take_over_batches(worker_id, lease_s, limit)

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
        return await self.batches.heartbeat_batch(
            batch_id, worker_id, lease_s, name=name, job_ids=job_ids
        )

    async def record_batch_progress(self, batch: Batch, progress: JobProgress) -> int:
        """See `BatchStore.record_batch_progress`."""
        return await self.batches.record_batch_progress(batch, progress)

    async def batch_executions(self, batch: Batch) -> list[Job]:
        """See `BatchStore.batch_executions`."""
        return await self.batches.batch_executions(batch)

    async def finish_batch(self, batch_id: str, worker_id: str) -> None:
        """See `BatchStore.finish_batch`."""
        await self.batches.finish_batch(batch_id, worker_id)

    # -- usage ledger ------------------------------------------------------------------------

    async def referenced_blobs(self, digests: Sequence[bytes]) -> set[bytes]:
        """See `Store.referenced_blobs`."""
        if not digests:
            return set()
        statement = self.queries("referenced_blobs", digests=list(digests))
        rows = await self._pool.run(lambda c: c.fetch(*statement))
        return {bytes(row[0]) for row in rows}

    async def insert_usage(self, record: UsageRecord) -> None:
        """See `UsageStore.insert_usage` (stamped with this replica's clock)."""
        await self.usage.insert_usage_entries([UsageEntry(record, datetime.now(UTC))])

    async def insert_usage_entries(self, entries: Sequence[UsageEntry]) -> None:
        """See `UsageStore.insert_usage_entries`."""
        await self.usage.insert_usage_entries(entries)

    async def list_usage(self, job_id: str) -> list[UsageEntry]:
        """See `UsageStore.list_usage`."""
        return await self.usage.list_usage(job_id)

    async def usage_by_day(
        self, user_id: str | None, start: datetime, end: datetime
    ) -> list[UsageDay]:
        """See `UsageStore.usage_by_day`."""
        return await self.usage.usage_by_day(user_id, start, end)

    async def roll_up_usage(self, before: date, limit: int) -> int:
        """See `UsageStore.roll_up_usage`."""
        return await self.usage.roll_up_usage(before, limit)

    async def purge_usage_days(self, before: date, limit: int) -> int:
        """See `UsageStore.purge_usage_days`."""
        return await self.usage.purge_usage_days(before, limit)


__all__ = ["PostgresStore", "channel_name", "run_migrations"]
