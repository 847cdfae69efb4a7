"""The job state machine in PostgreSQL: join or create, claim, heartbeat, complete, fail, defer,
rescue, cancel, re-drive, list and purge, over rows of `ai_jobs`.

PostgreSQL is the coordination engine of every replica sharing the schema:

- Coalescing is the partial unique index over active dedupe keys: `INSERT ... ON CONFLICT DO
  NOTHING` either creates the execution or tells the caller to join the one that exists.
- Leases are `locked_by` / `locked_until` columns compared with the database's clock (`now()`),
  so replica clocks do not matter; every claim increases the execution's `fence`, and every
  write of a runner names its claim's token (`Claim`), refused unless it is the current one.
- Every change a watcher should see notifies in the statement that makes it
  (`sql/queries.sql`); shared executions' changes are mirrored to their handles in the same
  transaction.
- Concurrent inserts of executions of their own, and concurrent completions, share one
  statement and commit (`gateway.store.batching`).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, NamedTuple

import asyncpg

from gateway.config import StoreSettings
from gateway.store.base import (
    NO_SPEND,
    AttemptError,
    Claim,
    Delivery,
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
    check_positive,
    check_same_request,
    check_same_sharing,
    job_not_found,
    lease_expired_error,
    parse_job_id,
    redrive_conflict,
    redrive_refused,
)
from gateway.store.batching import Batcher
from gateway.store.changes import DUE, ChangeHub, wait_for_change
from gateway.store.postgres.pool import Connection, Pool, Record, usd
from gateway.store.postgres.queries import Queries
from gateway.store.postgres.results import DIGEST_BYTES, check_result_blobs, result_ref
from gateway.store.postgres.usage import usage_of

#: A join retries when a concurrent transaction changed what it saw; this bounds the retries.
_JOIN_ATTEMPTS = 5
#: Fewest due executions a capped claim reads per page.
_MIN_CLAIM_PAGE = 64
#: Most writes of one kind gathered into one statement.
_MAX_WRITE_BATCH = 500


def _insertable(new: NewJob) -> bool:
    """Whether `new` can be tried as a plain insert of an execution of its own (its input blob
    digests travel concatenated, 32 bytes each)."""
    return not new.shared and all(len(d) == DIGEST_BYTES for d in new.input_blobs)


class _Insert(NamedTuple):
    """A `join_or_create_active_job` call trying the batched insert."""

    job_id: uuid.UUID
    new: NewJob

    def conflict_key(self) -> object:
        """Two inserts that could conflict with each other never share a statement."""
        return self.new.dedupe_key or self.job_id


class _Completion(NamedTuple):
    """A `complete_job` call waiting for its batch."""

    job_id: uuid.UUID
    claim: Claim
    result: ResultRef
    spend: JobSpend
    cached: bool
    result_cost_usd: float


class _Retry(Exception):
    """Rolls back one join attempt (raised inside its transaction)."""


def _spend_json(spend: JobSpend) -> str:
    """A spend as `add_spend` (queries.sql) reads it."""
    u = spend.usage
    return json.dumps(
        {
            "prompt_tokens": u.prompt_tokens,
            "cached_prompt_tokens": u.cached_prompt_tokens,
            "output_tokens": u.output_tokens,
            "thinking_tokens": u.thinking_tokens,
            "image_output_tokens": u.image_output_tokens,
            "total_tokens": u.total_tokens,
            "cost_usd": repr(float(spend.cost_usd)),
            "upstream_calls": spend.upstream_calls,
        },
        separators=(",", ":"),
    )


def _spend(row: Record) -> JobSpend:
    return JobSpend(usage_of(row), float(row["cost_usd"]), row["upstream_calls"])


def _history(text: str | None) -> tuple[AttemptError, ...]:
    """A job row's error history (most rows have none: not parsed then)."""
    if not text or text == "[]":
        return ()
    return tuple(AttemptError.from_json(entry) for entry in json.loads(text))


def _job(row: Record) -> Job:
    error = None
    if row["error_reason"] is not None:
        error = JobError(row["error_reason"], row["error_message"] or "")
    progress = row["progress"]
    history = row.get("errors")
    return Job(
        id=str(row["id"]),
        user_id=row["user_id"],
        op=row["op"],
        status=JobStatus(row["status"]),
        input_json=row["input_json"],
        input_blobs=tuple(row["input_blobs"]),
        dedupe_key=row["dedupe_key"],
        idempotency_key=row["idempotency_key"],
        request_hash=row["request_hash"],
        follows=None if row["follows"] is None else str(row["follows"]),
        model=row["model"],
        priority=row["priority"],
        attempts=row["attempts"],
        max_attempts=row["max_attempts"],
        run_after=row["run_after"],
        locked_by=row["locked_by"],
        locked_until=row["locked_until"],
        heartbeat_at=row["heartbeat_at"],
        progress=None if progress is None else JobProgress.from_json(progress),
        result=result_ref(row),
        error=error,
        event_seq=row["event_seq"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        completed_at=row["completed_at"],
        expires_at=row["expires_at"],
        started_by=row.get("started_by"),
        spend=_spend(row),
        cached=row["cached"],
        result_cost_usd=float(row["result_cost_usd"]),
        coalesced=row["coalesced"],
        delivery=Delivery(row.get("delivery") or Delivery.INTERACTIVE),
        traceparent=row.get("traceparent"),
        tracestate=row.get("tracestate"),
        fence=row.get("fence") or 0,
        error_history=_history(history),
        result_cached=row.get("result_cached"),
    )


#: A job row as a `Job`, for the other modules of this package.
job_from_row = _job


async def mirror_shared(conn: Connection, queries: Queries, rows: Sequence[Record]) -> None:
    """Copies the changes of shared executions among `rows` (those without an owner) to their
    handles, in the caller's transaction."""
    shared = [row["id"] for row in rows if row["user_id"] is None]
    if shared:
        await conn.fetch(*queries("mirror", execution_ids=shared))


class PostgresJobs:
    """`JobStore` on PostgreSQL; waiters are woken through `hub` (fed by the `Listener`)."""

    def __init__(
        self,
        pool: Pool,
        queries: Queries,
        hub: ChangeHub,
        settings: StoreSettings,
        claim_lock_key: int,
    ) -> None:
        self._pool = pool
        self._q = queries
        self._hub = hub
        self._poll_interval_s = settings.poll_interval_s
        #: The advisory lock capped claims take turns on (`claim_lock` in queries.sql).
        self.claim_lock_key = claim_lock_key
        #: The group commits of new executions and of completions (their counts: for tests).
        self.inserts: Batcher[_Insert, Job | None] = Batcher(
            self._insert_many, max_batch=_MAX_WRITE_BATCH, key=_Insert.conflict_key
        )
        self.completions: Batcher[_Completion, Job] = Batcher(
            self._complete_many, max_batch=_MAX_WRITE_BATCH, key=lambda c: c.job_id
        )

    async def close(self) -> None:
        """Stops batching writes (callers still waiting get `CancelledError`)."""
        await self.inserts.aclose()
        await self.completions.aclose()

    async def _mirror(self, conn: Connection, rows: Sequence[Record]) -> None:
        """Copies shared executions' changes (those without an owner) to their handles."""
        await mirror_shared(conn, self._q, rows)

    async def join_or_create_active_job(self, new: NewJob) -> JoinOutcome:
        """See `JobStore.join_or_create_active_job`.

        A job of its own (not a handle on a shared execution) is first tried as a plain insert,
        batched with concurrent ones (`gateway.store.batching`); one that conflicts takes the
        transaction below, which finds what it conflicted with.
        """
        if _insertable(new):
            created = await self.inserts.submit(_Insert(uuid.uuid4(), new))
            if created is not None:
                return JoinOutcome(created, created=True, existing=False)
        return await self._join(new)

    async def join_or_create_active_jobs(self, news: Sequence[NewJob]) -> list[JoinOutcome]:
        """See `JobStore.join_or_create_active_jobs`: the executions of their own that conflict
        with nothing are written `_MAX_WRITE_BATCH` to a statement, the rest one by one."""
        outcomes: list[JoinOutcome | None] = [None] * len(news)
        fresh = [i for i, new in enumerate(news) if _insertable(new)]
        for first in range(0, len(fresh), _MAX_WRITE_BATCH):
            chunk = fresh[first : first + _MAX_WRITE_BATCH]
            created = await self._insert_many([_Insert(uuid.uuid4(), news[i]) for i in chunk])
            for i, job in zip(chunk, created, strict=True):
                if job is not None:
                    outcomes[i] = JoinOutcome(job, created=True, existing=False)
        for i, outcome in enumerate(outcomes):
            if outcome is None:
                outcomes[i] = await self._join(news[i])
        return [outcome for outcome in outcomes if outcome is not None]

    async def _join(self, new: NewJob) -> JoinOutcome:
        """Joins what `new` conflicts with, or creates it, in a transaction of its own."""
        for _ in range(_JOIN_ATTEMPTS):
            try:
                outcome = await self._pool.run(lambda c: self._join_once(c, new), transaction=True)
            except _Retry:
                continue
            if outcome is not None:
                return outcome
        raise self._pool.unavailable("the job for this request kept changing while joining it")

    async def _insert_many(self, batch: Sequence[_Insert]) -> list[Job | None]:
        """One statement creating every execution of `batch` that conflicts with nothing."""
        news = [i.new for i in batch]
        statement = self._q(
            "insert_executions",
            job_ids=[i.job_id for i in batch],
            user_ids=[n.user_id for n in news],
            ops=[n.op for n in news],
            input_jsons=[n.input_json for n in news],
            input_blobs=[b"".join(n.input_blobs) for n in news],
            dedupe_keys=[n.dedupe_key for n in news],
            idempotency_keys=[n.idempotency_key for n in news],
            request_hashes=[n.request_hash for n in news],
            models=[n.model for n in news],
            priorities=[n.priority for n in news],
            max_attempts=[n.max_attempts for n in news],
            hold_s=[float(n.hold_s) for n in news],
            deliveries=[n.delivery.value for n in news],
            traceparents=[n.traceparent for n in news],
            tracestates=[n.tracestate for n in news],
        )
        rows = await self._pool.run(lambda c: c.fetch(*statement))
        created = {row["id"]: _job(row) for row in rows}
        return [created.get(i.job_id) for i in batch]

    async def _join_once(self, conn: Connection, new: NewJob) -> JoinOutcome | None:
        """One attempt; None when a concurrent change means it must be tried again."""
        q = self._q
        if new.idempotency_key is not None:
            row = await conn.fetchrow(
                *q(
                    "job_by_idempotency",
                    user_id=new.user_id,
                    idempotency_key=new.idempotency_key,
                )
            )
            if row is not None:
                earlier = _job(row)
                check_same_request(earlier, new)
                return JoinOutcome(earlier, created=False, existing=True)
        row = await conn.fetchrow(
            *q(
                "insert_execution",
                job_id=uuid.uuid4(),
                user_id=None if new.shared else new.user_id,
                op=new.op,
                input_json=new.input_json,
                input_blobs=list(new.input_blobs),
                dedupe_key=new.dedupe_key,
                idempotency_key=None if new.shared else new.idempotency_key,
                request_hash=None if new.shared else new.request_hash,
                model=new.model,
                priority=new.priority,
                max_attempts=new.max_attempts,
                hold_s=float(new.hold_s),
                started_by=new.user_id if new.shared else None,
                delivery=new.delivery.value,
                traceparent=new.traceparent,
                tracestate=new.tracestate,
            )
        )
        created = row is not None
        if row is None:
            if new.dedupe_key is None:
                return None  # a concurrent insert took the idempotency key: look it up again
            row = await conn.fetchrow(*q("active_execution", dedupe_key=new.dedupe_key))
            if row is None:
                return None  # it finished in between: create a new one
            check_same_sharing(_job(row), new)
            if not new.shared:
                return JoinOutcome(_job(row), created=False, existing=True)
            handle = await conn.fetchrow(
                *q("active_handle", execution_id=row["id"], user_id=new.user_id)
            )
            if handle is not None:
                return JoinOutcome(_job(handle), created=False, existing=True)
        if not new.shared:
            return JoinOutcome(_job(row), created=True, existing=False)
        handle = await conn.fetchrow(
            *q(
                "insert_handle",
                job_id=uuid.uuid4(),
                user_id=new.user_id,
                input_json=new.input_json,
                input_blobs=list(new.input_blobs),
                idempotency_key=new.idempotency_key,
                request_hash=new.request_hash,
                priority=new.priority,
                execution_id=row["id"],
                coalesced=not created,
                traceparent=new.traceparent,
                tracestate=new.tracestate,
            )
        )
        if handle is None:
            # The same user's concurrent request added its handle (or took the idempotency
            # key) first. Undo this attempt so a newly inserted execution does not linger.
            raise _Retry
        return JoinOutcome(_job(handle), created=created, existing=False)

    async def find_job_by_idempotency_key(self, user_id: str, key: str) -> Job | None:
        """See `JobStore.find_job_by_idempotency_key`."""
        statement = self._q("job_by_idempotency", user_id=user_id, idempotency_key=key)
        row = await self._pool.run(lambda c: c.fetchrow(*statement))
        return None if row is None else _job(row)

    async def get_job(self, job_id: str, user_id: str | None) -> Job:
        """See `JobStore.get_job`."""
        parsed = parse_job_id(job_id)
        if parsed is None:
            raise job_not_found(job_id)
        statement = (
            self._q("job_by_id", job_id=parsed)
            if user_id is None
            else self._q("user_job", job_id=parsed, user_id=user_id)
        )
        row = await self._pool.run(lambda c: c.fetchrow(*statement))
        if row is None:
            raise job_not_found(job_id)
        return _job(row)

    async def claim_job(
        self, job_id: str, worker_id: str, lease_s: float, *, held: bool = False
    ) -> Job | None:
        """See `JobStore.claim_job`."""
        check_positive("lease_s", lease_s)
        parsed = parse_job_id(job_id)
        if parsed is None:
            return None
        statement = self._q(
            "claim", job_id=parsed, worker_id=worker_id, lease_s=float(lease_s), held=held
        )

        async def claim(conn: Connection) -> Record | None:
            await self._rescue(conn, parsed, 1)
            row = await conn.fetchrow(*statement)
            if row is not None:
                await self._mirror(conn, [row])
            return row

        row = await self._pool.run(claim, transaction=True)
        return None if row is None else _job(row)

    async def claim_batch(
        self,
        worker_id: str,
        limit: int,
        lease_s: float,
        caps: Mapping[int, int] | None = None,
    ) -> list[Job]:
        """See `JobStore.claim_batch`."""
        check_positive("limit", limit)
        check_positive("lease_s", lease_s)
        q = self._q
        lease = {"worker_id": worker_id, "lease_s": float(lease_s)}

        async def claim(conn: Connection) -> list[Record]:
            if caps:
                await conn.execute(*q("claim_lock", key=self.claim_lock_key))
                chosen = await self._choose_capped(conn, limit, caps)
                rows = (
                    await conn.fetch(*q("claim_chosen", job_ids=chosen, **lease)) if chosen else []
                )
            else:
                rows = await conn.fetch(*q("claim_batch", limit=limit, **lease))
            await self._mirror(conn, rows)
            return list(rows)

        rows = await self._pool.run(claim, transaction=True)
        return sorted(map(_job, rows), key=lambda job: (-job.priority, job.created_at))

    async def _choose_capped(
        self, conn: Connection, limit: int, caps: Mapping[int, int]
    ) -> list[uuid.UUID]:
        """Up to `limit` due executions in claim order that fit under their owners' caps (see
        `JobStore.claim_batch`), read a page at a time so a long queue costs what it must."""
        running: dict[str, int] = {
            row["user_id"]: row["running"] for row in await conn.fetch(*self._q("running_by_user"))
        }
        page_size = max(limit * 4, _MIN_CLAIM_PAGE)
        chosen: list[uuid.UUID] = []
        after: tuple[Any, Any, Any] = (None, None, None)
        while len(chosen) < limit:
            page = await conn.fetch(
                *self._q(
                    "claim_page",
                    limit=page_size,
                    after_priority=after[0],
                    after_created_at=after[1],
                    after_id=after[2],
                )
            )
            for row in page:
                user, cap = row["user_id"], caps.get(row["priority"])
                if user is not None and cap is not None:
                    if running.get(user, 0) >= cap:
                        continue
                    running[user] = running.get(user, 0) + 1
                chosen.append(row["id"])
                if len(chosen) == limit:
                    break
            if len(page) < page_size:
                break
            last = page[-1]
            after = (last["priority"], last["created_at"], last["id"])
        return chosen

    async def _rescue(self, conn: Connection, job_id: uuid.UUID | None, limit: int) -> int:
        error = lease_expired_error()
        rows = await conn.fetch(
            *self._q(
                "rescue", job_id=job_id, limit=limit, reason=error.reason, message=error.message
            )
        )
        await self._mirror(conn, rows)
        return len(rows)

    async def _held_change(
        self, claim: Claim, name: str, *, visible: bool = True, **values: Any
    ) -> Job:
        """Applies a runner's change (statement `name`) to an execution it holds under `claim`;
        `LeaseLost` if that claim is not the current one.

        `visible`: the change is an event for watchers, so handles mirror it.
        """
        job_id = claim.job_id
        parsed = parse_job_id(job_id)
        if parsed is None:
            raise LeaseLost(job_id, None)
        statement = self._q(
            name, job_id=parsed, worker_id=claim.worker_id, fence=claim.fence, **values
        )

        async def change(conn: Connection) -> tuple[Record | None, Record | None]:
            row = await conn.fetchrow(*statement)
            if row is None:
                return None, await conn.fetchrow(*self._q("job_by_id", job_id=parsed))
            if visible:
                await self._mirror(conn, [row])
            return row, None

        row, current = await self._pool.run(change, transaction=True)
        if row is None:
            raise LeaseLost(job_id, None if current is None else _job(current))
        return _job(row)

    async def heartbeat_job(
        self, claim: Claim, lease_s: float, progress: JobProgress | None = None
    ) -> Job:
        """See `JobStore.heartbeat_job`."""
        check_positive("lease_s", lease_s)
        return await self._held_change(
            claim,
            "heartbeat",
            visible=progress is not None,
            lease_s=float(lease_s),
            progress=None if progress is None else progress.to_json(),
        )

    async def complete_job(
        self,
        claim: Claim,
        result: ResultRef,
        *,
        spend: JobSpend = NO_SPEND,
        cached: bool = False,
        result_cost_usd: float = 0.0,
    ) -> Job:
        """See `JobStore.complete_job`. Concurrent completions share one statement and commit
        (`gateway.store.batching`)."""
        parsed = parse_job_id(claim.job_id)
        if parsed is None:
            raise LeaseLost(claim.job_id, None)
        check_result_blobs(result)
        completion = _Completion(parsed, claim, result, spend, cached, result_cost_usd)
        return await self.completions.submit(completion)

    async def _complete_many(self, batch: Sequence[_Completion]) -> list[Job | LeaseLost]:
        """One statement and transaction completing every execution of `batch`."""
        statement = self._q(
            "complete_many",
            job_ids=[c.job_id for c in batch],
            worker_ids=[c.claim.worker_id for c in batch],
            fences=[c.claim.fence for c in batch],
            result_jsons=[c.result.json for c in batch],
            result_json_blobs=[c.result.json_blob for c in batch],
            result_blobs=[b"".join(c.result.blobs) for c in batch],
            spends=[_spend_json(c.spend) for c in batch],
            cached=[c.cached for c in batch],
            result_costs=[usd(c.result_cost_usd) for c in batch],
        )

        async def complete(conn: Connection) -> tuple[list[Record], list[Record]]:
            rows = await conn.fetch(*statement)
            await self._mirror(conn, rows)
            done = {row["id"] for row in rows}
            lost = [c.job_id for c in batch if c.job_id not in done]
            current = await conn.fetch(*self._q("jobs_by_ids", job_ids=lost)) if lost else []
            return rows, current

        rows, current = await self._pool.run(complete, transaction=True)
        by_id = {row["id"]: _job(row) for row in rows}
        now = {row["id"]: _job(row) for row in current}
        return [by_id.get(c.job_id) or LeaseLost(str(c.job_id), now.get(c.job_id)) for c in batch]

    async def fail_job(
        self,
        claim: Claim,
        error: JobError,
        retry_after_s: float | None = None,
        *,
        spend: JobSpend = NO_SPEND,
    ) -> Job:
        """See `JobStore.fail_job`."""
        job = await self._held_change(
            claim,
            "fail",
            reason=error.reason,
            message=error.message,
            retry_after_s=None if retry_after_s is None else float(retry_after_s),
            spend=_spend_json(spend),
        )
        if retry_after_s is not None and job.status is JobStatus.QUEUED:
            self._due_later(retry_after_s)
        return job

    async def defer_job(
        self,
        claim: Claim,
        error: JobError,
        delay_s: float,
        *,
        spend: JobSpend = NO_SPEND,
    ) -> Job:
        """See `JobStore.defer_job`."""
        job = await self._held_change(
            claim,
            "defer",
            reason=error.reason,
            message=error.message,
            delay_s=float(delay_s),
            spend=_spend_json(spend),
        )
        self._due_later(delay_s)
        return job

    def _due_later(self, delay_s: float) -> None:
        """A job queued again becomes due in `delay_s`: nothing happens in the database then,
        so this replica's workers are woken by a timer (other replicas' polls find it too)."""
        if delay_s > 0:
            asyncio.get_running_loop().call_later(delay_s, self._hub.publish, DUE)

    def _read(self, job_id: uuid.UUID, user_id: str | None) -> tuple[Any, ...]:
        """The statement reading a job as `user_id` sees it (None: any job)."""
        if user_id is None:
            return self._q("job_by_id", job_id=job_id)
        return self._q("user_job", job_id=job_id, user_id=user_id)

    async def cancel_job(self, job_id: str, user_id: str | None) -> Job:
        """See `JobStore.cancel_job`."""
        parsed = parse_job_id(job_id)
        if parsed is None:
            raise job_not_found(job_id)
        q = self._q

        async def cancel(conn: Connection) -> Record | None:
            row = await conn.fetchrow(*self._read(parsed, user_id))
            if row is None or not JobStatus(row["status"]).active:
                return row
            follows = row["follows"]
            if follows is not None:
                # Lock order everywhere: execution before its handles (no deadlocks).
                await conn.fetchrow(*q("lock_job", job_id=follows))
            cancelled = await conn.fetchrow(*q("cancel", job_id=parsed, user_id=user_id))
            if cancelled is None:
                return await conn.fetchrow(*self._read(parsed, user_id))
            if follows is not None:
                await conn.fetchrow(*q("cancel_orphan", execution_id=follows))
            # An operator's cancel of a shared execution reaches its handles.
            await self._mirror(conn, [cancelled])
            return cancelled

        row = await self._pool.run(cancel, transaction=True)
        if row is None:
            raise job_not_found(job_id)
        return _job(row)

    async def rescue_expired_leases(self, limit: int) -> int:
        """See `JobStore.rescue_expired_leases`."""
        check_positive("limit", limit)
        return await self._pool.run(lambda c: self._rescue(c, None, limit), transaction=True)

    async def retry_job(self, job_id: str, user_id: str | None, attempts: int) -> Redrive:
        """See `JobStore.retry_job`."""
        check_positive("attempts", attempts)
        parsed = parse_job_id(job_id)
        if parsed is None:
            raise job_not_found(job_id)
        for _ in range(_JOIN_ATTEMPTS):
            try:
                outcome = await self._pool.run(
                    lambda c: self._redrive(c, parsed, user_id, attempts), transaction=True
                )
            except asyncpg.UniqueViolationError:
                # A job of the same request was created meanwhile: the next round names it.
                continue
            if outcome is None:
                raise job_not_found(job_id)
            return outcome
        raise self._pool.unavailable("the job kept changing while re-driving it")

    async def _redrive(
        self, conn: Connection, job_id: uuid.UUID, user_id: str | None, attempts: int
    ) -> Redrive | None:
        """One attempt of `retry_job` in a transaction; None when the job is not found."""
        q = self._q
        row = await conn.fetchrow(*self._read(job_id, user_id))
        if row is None:
            return None
        job = _job(row)
        refused = redrive_refused(job)
        if refused is not None:
            raise refused
        if job.status is not JobStatus.FAILED:
            return Redrive(job, redriven=False)
        # Lock order everywhere: execution before its handles.
        locked = await conn.fetchrow(*q("lock_job", job_id=uuid.UUID(job.execution_id)))
        if locked is None:
            return None  # purged in between
        execution = _job(locked)
        requeue = not execution.active and execution.status is not JobStatus.SUCCEEDED
        if requeue:
            # Failed, or (followed by this failed handle) cancelled by its other users.
            if execution.dedupe_key is not None:
                active = await conn.fetchrow(
                    *q("active_execution", dedupe_key=execution.dedupe_key)
                )
                if active is not None:
                    raise redrive_conflict(job, str(active["id"]))
            requeued = await conn.fetchrow(
                *q(
                    "redrive",
                    job_id=uuid.UUID(execution.id),
                    attempts=attempts,
                    # A user re-driving her handle pays for the run from now on.
                    started_by=job.user_id if job.follows is not None else None,
                )
            )
            assert requeued is not None  # locked, and finished: nothing else changed it
            await self._mirror(conn, [requeued])
        handle = job.follows is not None
        if handle:
            other = await conn.fetchrow(
                *q("active_handle", execution_id=uuid.UUID(execution.id), user_id=job.user_id)
            )
            if other is not None:
                raise redrive_conflict(job, str(other["id"]))
        if handle or execution.user_id is None:
            # A user's handle follows its execution again; an operator re-driving a shared
            # execution brings back the handles that failed with it.
            handles = await conn.fetch(
                *q(
                    "redrive_handles",
                    execution_id=uuid.UUID(execution.id),
                    handle_id=job_id if handle else None,
                    failed_at=None if handle else execution.completed_at,
                )
            )
            if handle:
                return Redrive(_job(handles[0]), redriven=True)
        now = await conn.fetchrow(*q("job_by_id", job_id=job_id))
        assert now is not None  # locked
        return Redrive(_job(now), requeue)

    async def list_jobs(
        self,
        user_id: str | None,
        job_filter: JobFilter,
        limit: int,
        after: JobCursor | None = None,
    ) -> list[Job]:
        """See `JobStore.list_jobs`."""
        check_positive("limit", limit)
        after_at, after_id = (None, None) if after is None else after
        parsed = None if after_id is None else parse_job_id(after_id)
        if after_id is not None and parsed is None:
            raise ValueError(f"a job cursor names a job id that is not one: {after_id!r}")
        which: dict[str, Any] = {
            "statuses": sorted(s.value for s in job_filter.statuses) or None,
            "ops": sorted(job_filter.ops) or None,
            "error_reasons": sorted(job_filter.error_reasons) or None,
            "after_created_at": after_at,
            "after_id": parsed,
            "limit": limit,
        }
        statement = (
            self._q("list_all_jobs", **which)
            if user_id is None
            else self._q("list_jobs", user_id=user_id, **which)
        )
        return [_job(row) for row in await self._pool.run(lambda c: c.fetch(*statement))]

    def subscribe_due(self, event: asyncio.Event) -> AbstractContextManager[asyncio.Event]:
        """See `JobStore.subscribe_due` (the `DUE` notifications of the listener connection)."""
        return self._hub.subscribe(DUE, event)

    def subscribe_job(
        self, job_id: str, event: asyncio.Event, *, after_seq: int | None = None
    ) -> AbstractContextManager[asyncio.Event]:
        """See `JobStore.subscribe_job` (the job's notifications on the listener connection,
        which carry each change's `event_seq`)."""
        parsed = parse_job_id(job_id)
        key = job_id if parsed is None else str(parsed)
        return self._hub.subscribe(key, event, after_seq=after_seq)

    async def wait_for_job_change(
        self, job_id: str, user_id: str, after_seq: int, timeout_s: float
    ) -> Job:
        """See `JobStore.wait_for_job_change`."""
        parsed = parse_job_id(job_id)
        if parsed is None:
            raise job_not_found(job_id)
        return await wait_for_change(
            self._hub,
            str(parsed),
            lambda: self.get_job(job_id, user_id),
            after_seq,
            timeout_s,
            self._poll_interval_s,
        )

    async def purge_finished_jobs(
        self,
        limit: int,
        *,
        finished_before_s: float | None = None,
        statuses: frozenset[JobStatus] = frozenset(),
    ) -> dict[JobStatus, int]:
        """See `JobStore.purge_finished_jobs`."""
        check_positive("limit", limit)
        which = sorted(s.value for s in statuses) or None
        if finished_before_s is None:
            statement = self._q("purge_jobs", limit=limit, statuses=which)
        else:
            statement = self._q(
                "purge_jobs_finished_before",
                limit=limit,
                statuses=which,
                finished_before_s=float(finished_before_s),
            )
        rows = await self._pool.run(lambda c: c.fetch(*statement))
        return dict(Counter(JobStatus(row["status"]) for row in rows))

    async def queue_depth(self) -> dict[tuple[JobStatus, str], int]:
        """See `JobStore.queue_depth`."""
        statement = self._q("queue_depth")
        rows = await self._pool.run(lambda c: c.fetch(*statement))
        return {(JobStatus(row["status"]), row["op"]): row["executions"] for row in rows}
