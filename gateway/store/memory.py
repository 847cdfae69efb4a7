"""The embedded store: results, jobs and usage in this process's memory.

Same semantics as `PostgresStore` (one contract test suite runs against both), for a single
replica without a database. Every method runs without awaiting between its reads and writes, so
each is atomic on the event loop, as a transaction is in PostgreSQL. Nothing survives a restart.

Two places differ by design, so a long-running embedded gateway's memory stays bounded:

- The result cache holds at most `results_max_bytes` (`result_row_bytes` counts a row: its key,
  inline JSON and blob references, and `RESULT_ROW_OVERHEAD` for the objects that hold them;
  blobs live in the blob store, not here). Past it, the least recently used rows are evicted (a
  hit refreshes a row); an evicted row is a miss, and its blobs go with the next blob
  collection once no job references them either. A row larger than the whole budget is not
  kept at all: `put_result` answers it as stored (the caller serves the result) and a later
  request computes it again.
- The usage ledger keeps only the most recent `usage_rows_kept` rows. An older row is folded
  into the daily totals at once instead of waiting for the roll-up, so the totals stay whole,
  but `list_usage` of a job whose calls have aged out returns fewer rows, or none, and a range
  that starts or ends inside such a day counts the day whole. The daily totals (per day, user,
  operation and model) are bounded by the same number of entries: past it the least recently
  folded one leaves its user's reports but is added to the fleet's total of its day, operation
  and model, so fleet reports stay whole (those fleet totals are bounded the same way, besides
  their retention).
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import uuid
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, date, datetime, time, timedelta

from gateway.model import UsageRecord
from gateway.store.base import (
    ABANDONED_OUTCOME,
    BATCH_HOLD_S,
    MAX_ERROR_HISTORY,
    NO_SPEND,
    AttemptError,
    Batch,
    BatchLost,
    CachedResult,
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
    UsageDay,
    UsageEntry,
    UsageTotals,
    batch_holder,
    check_positive,
    check_same_request,
    check_same_sharing,
    entry_job_id,
    job_not_found,
    lease_expired_error,
    parse_job_id,
    redrive_conflict,
    redrive_refused,
)
from gateway.store.blobs.base import DIGEST_SIZE
from gateway.store.changes import DUE, ChangeHub, wait_for_change

#: Fields a handle copies from the execution it follows.
MIRRORED_FIELDS = (
    "status",
    "attempts",
    "max_attempts",
    "run_after",
    "progress",
    "result",
    "error",
    "error_history",
    "started_at",
    "completed_at",
    "expires_at",
    "spend",
    "cached",
    "result_cost_usd",
)

# Every change is published at once, so polling only guards against bugs.
_POLL_INTERVAL_S = 60.0

#: Usage ledger rows the embedded store keeps (about 0.8 KB each: some 8 MB in all); older rows
#: are folded into the daily totals as new ones arrive. The daily totals keep as many entries.
USAGE_ROWS_KEPT = 10_000

#: Bytes of cache rows the embedded store keeps by default (`store.embedded_cache_max_bytes`).
RESULTS_MAX_BYTES = 64 * 1024 * 1024

#: What one cache row costs besides its key, JSON and digests: the row and reference objects,
#: their two datetimes, tuples and the dict slot (about 450 bytes measured with tracemalloc on
#: CPython 3.11, rounded up).
RESULT_ROW_OVERHEAD = 512

#: A daily total's identity: (UTC day, user, operation, model).
DayKey = tuple[date, str, str, str]


def _utcnow() -> datetime:
    return datetime.now(UTC)


def usage_day(at: datetime) -> date:
    """The UTC day a ledger row belongs to."""
    return at.astimezone(UTC).date()


def day_start(day: date) -> datetime:
    """Midnight UTC at the start of `day`."""
    return datetime.combine(day, time(), UTC)


def result_row_bytes(key: bytes, ref: ResultRef) -> int:
    """What the embedded cache counts a row as (see the module docstring)."""
    digests = len(ref.blobs) + (ref.json_blob is not None)
    inline = 0 if ref.json is None else sys.getsizeof(ref.json)
    return RESULT_ROW_OVERHEAD + len(key) + inline + DIGEST_SIZE * digests


def sum_by_day(
    rows: Iterable[tuple[date, str, str, UsageTotals]],
) -> list[UsageDay]:
    """(day, operation, model, totals) rows summed per (day, operation, model), in that order."""
    sums: dict[tuple[date, str, str], UsageTotals] = {}
    for day, op, model, totals in rows:
        key = (day, op, model)
        sums[key] = sums[key] + totals if key in sums else totals
    return [UsageDay(*key, sums[key]) for key in sorted(sums)]


class MemoryStore:
    """`Store` in process memory (see `gateway.store.base`)."""

    def __init__(
        self,
        *,
        job_retention_s: float = 7 * 86400,
        failed_job_retention_s: float = 30 * 86400,
        cancelled_job_retention_s: float = 7 * 86400,
        usage_rows_kept: int = USAGE_ROWS_KEPT,
        results_max_bytes: int = RESULTS_MAX_BYTES,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        check_positive("usage_rows_kept", usage_rows_kept)
        if results_max_bytes < 0:
            raise ValueError("results_max_bytes must not be negative")
        #: How long a finished job is kept, by the status it finished with.
        self._retention = {
            JobStatus.SUCCEEDED: timedelta(seconds=job_retention_s),
            JobStatus.FAILED: timedelta(seconds=failed_job_retention_s),
            JobStatus.CANCELLED: timedelta(seconds=cancelled_job_retention_s),
        }
        self._now = clock
        self._hub = ChangeHub()
        #: The cache rows, least recently used first, and what they count as in all.
        self._results: OrderedDict[bytes, CachedResult] = OrderedDict()
        self._results_max_bytes = results_max_bytes
        self.result_bytes = 0
        #: Rows evicted to stay within the budget, and rows too large for it (never kept).
        self.results_evicted = 0
        self.results_refused = 0
        self._jobs: dict[str, Job] = {}
        #: Dedupe key -> id of the active execution holding it.
        self._active: dict[bytes, str] = {}
        #: (user id, idempotency key) -> job id.
        self._idempotency: dict[tuple[str, str], str] = {}
        #: Execution id -> ids of the handles following it.
        self._handles: dict[str, set[str]] = {}
        self._usage_rows_kept = usage_rows_kept
        #: Execution id -> the fencing tokens of its lost claims (cancelled while running, or
        #: rescued after their lease lapsed): their ledger rows read abandoned.
        self._lost_claims: dict[str, set[int]] = {}
        self._usage: deque[UsageEntry] = deque()
        #: Raw ledger rows folded into their daily totals early, for the bound.
        self.usage_rows_folded = 0
        #: The daily totals, in the order they were first folded (so oldest days first).
        self._usage_days: dict[DayKey, UsageTotals] = {}
        #: Daily totals dropped from `_usage_days` for its bound, summed over their users per
        #: (UTC day, operation, model): fleet reports still count them (bounded the same way).
        self._fleet_days: dict[tuple[date, str, str], UsageTotals] = {}
        self._batches: dict[str, Batch] = {}

    async def start(self) -> None:
        """Nothing to connect."""

    async def close(self) -> None:
        """Wakes every waiter so none outlives the store."""
        self._hub.publish_all()

    # -- result cache ------------------------------------------------------------------------

    async def get_result(self, key: bytes) -> CachedResult | None:
        """See `Store.get_result`."""
        entry = self._results.get(key)
        if entry is None:
            return None
        if entry.expires_at <= self._now():
            return None  # the maintenance loop purges it (`purge_expired_results`)
        self._results.move_to_end(key)
        return entry

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
        """See `Store.put_result`."""
        check_positive("ttl_s", ttl_s)
        if claim is not None:
            self._held(claim)
        now = self._now()
        expires = now + timedelta(seconds=ttl_s)
        entry = CachedResult(key, op, scope, model, ref, now, expires, cost_usd)
        # A new result replaces the old one under its key, whether or not it is kept.
        self._drop_result(key)
        size = result_row_bytes(key, ref)
        if size > self._results_max_bytes:
            self.results_refused += 1
            return entry
        self._results[key] = entry
        self.result_bytes += size
        while self.result_bytes > self._results_max_bytes:
            self._drop_result(next(iter(self._results)))
            self.results_evicted += 1
        return entry

    def _drop_result(self, key: bytes) -> None:
        entry = self._results.pop(key, None)
        if entry is not None:
            self.result_bytes -= result_row_bytes(key, entry.ref)

    @property
    def results_max_bytes(self) -> int:
        """The cache's budget in bytes."""
        return self._results_max_bytes

    @property
    def result_count(self) -> int:
        """Cache rows held now (expired ones not purged yet included)."""
        return len(self._results)

    async def purge_expired_results(self, limit: int) -> int:
        """See `Store.purge_expired_results`."""
        check_positive("limit", limit)
        now = self._now()
        expired = [k for k, e in self._results.items() if e.expires_at <= now][:limit]
        for key in expired:
            self._drop_result(key)
        return len(expired)

    # -- jobs --------------------------------------------------------------------------------

    async def join_or_create_active_jobs(self, news: Sequence[NewJob]) -> list[JoinOutcome]:
        """See `Store.join_or_create_active_jobs`."""
        return [await self.join_or_create_active_job(new) for new in news]

    async def join_or_create_active_job(self, new: NewJob) -> JoinOutcome:
        """See `Store.join_or_create_active_job`."""
        if new.idempotency_key is not None:
            earlier = await self.find_job_by_idempotency_key(new.user_id, new.idempotency_key)
            if earlier is not None:
                check_same_request(earlier, new)
                return JoinOutcome(earlier, created=False, existing=True)
        active_id = self._active.get(new.dedupe_key) if new.dedupe_key is not None else None
        if active_id is not None:
            execution = self._jobs[active_id]
            check_same_sharing(execution, new)
            if not new.shared:
                return JoinOutcome(execution, created=False, existing=True)
            for handle_id in self._handles.get(execution.id, ()):
                handle = self._jobs[handle_id]
                if handle.user_id == new.user_id and handle.active:
                    return JoinOutcome(handle, created=False, existing=True)
            joined = self._new_handle(execution, new, coalesced=True)
            return JoinOutcome(joined, created=False, existing=False)
        now = self._now()
        execution = Job(
            id=str(uuid.uuid4()),
            user_id=None if new.shared else new.user_id,
            op=new.op,
            status=JobStatus.QUEUED,
            input_json=new.input_json,
            input_blobs=new.input_blobs,
            dedupe_key=new.dedupe_key,
            idempotency_key=None if new.shared else new.idempotency_key,
            request_hash=None if new.shared else new.request_hash,
            follows=None,
            model=new.model,
            priority=new.priority,
            attempts=0,
            max_attempts=new.max_attempts,
            run_after=now + timedelta(seconds=new.hold_s),
            locked_by=None,
            locked_until=None,
            heartbeat_at=None,
            progress=None,
            result=None,
            error=None,
            event_seq=1,
            created_at=now,
            started_at=None,
            completed_at=None,
            expires_at=None,
            started_by=new.user_id if new.shared else None,
            delivery=new.delivery,
            traceparent=new.traceparent,
            tracestate=new.tracestate,
        )
        self._save(execution)
        self._publish_if_due(execution)
        if new.shared:
            started = self._new_handle(execution, new, coalesced=False)
            return JoinOutcome(started, created=True, existing=False)
        return JoinOutcome(execution, created=True, existing=False)

    def _new_handle(self, execution: Job, new: NewJob, *, coalesced: bool) -> Job:
        mirrored = {name: getattr(execution, name) for name in MIRRORED_FIELDS}
        handle = dataclasses.replace(
            execution,
            id=str(uuid.uuid4()),
            user_id=new.user_id,
            input_json=new.input_json,
            input_blobs=new.input_blobs,
            dedupe_key=None,
            idempotency_key=new.idempotency_key,
            request_hash=new.request_hash,
            follows=execution.id,
            priority=new.priority,
            locked_by=None,
            locked_until=None,
            heartbeat_at=None,
            event_seq=1,
            created_at=self._now(),
            coalesced=coalesced,
            traceparent=new.traceparent,
            tracestate=new.tracestate,
            **mirrored,
        )
        self._save(handle)
        return handle

    def _lookup(self, job_id: str) -> Job | None:
        # Ids are UUIDs: any spelling of the same UUID names the same job, as in PostgreSQL.
        parsed = parse_job_id(job_id)
        return None if parsed is None else self._jobs.get(str(parsed))

    async def find_job_by_idempotency_key(self, user_id: str, key: str) -> Job | None:
        """See `Store.find_job_by_idempotency_key`."""
        job_id = self._idempotency.get((user_id, key))
        return None if job_id is None else self._jobs.get(job_id)

    async def get_job(self, job_id: str, user_id: str | None) -> Job:
        """See `Store.get_job`."""
        job = self._lookup(job_id)
        if job is None or (user_id is not None and job.user_id != user_id):
            raise job_not_found(job_id)
        return job

    async def claim_job(
        self, job_id: str, worker_id: str, lease_s: float, *, held: bool = False
    ) -> Job | None:
        """See `Store.claim_job`."""
        check_positive("lease_s", lease_s)
        job = self._lookup(job_id)
        if job is None or job.follows is not None:
            return None
        now = self._now()
        job = self._rescue(job, now) or job
        if job.status is not JobStatus.QUEUED or (job.run_after > now and not held):
            return None
        return self._start_attempt(job, worker_id, lease_s, now)

    def _start_attempt(self, job: Job, worker_id: str, lease_s: float, now: datetime) -> Job:
        """A queued execution running its next attempt, held by `worker_id` for `lease_s`."""
        return self._change(
            job,
            status=JobStatus.RUNNING,
            run_after=min(job.run_after, now),
            attempts=job.attempts + 1,
            fence=job.fence + 1,
            locked_by=worker_id,
            locked_until=now + timedelta(seconds=lease_s),
            heartbeat_at=now,
            started_at=job.started_at or now,
            progress=None,
            error=None,
        )

    async def claim_batch(
        self,
        worker_id: str,
        limit: int,
        lease_s: float,
        caps: Mapping[int, int] | None = None,
    ) -> list[Job]:
        """See `Store.claim_batch`."""
        check_positive("limit", limit)
        check_positive("lease_s", lease_s)
        now = self._now()
        due = [
            job
            for job in self._due(now)
            if job.delivery is Delivery.INTERACTIVE  # batch delivery is the batchers'
        ]
        due.sort(key=lambda job: (-job.priority, job.created_at))
        if caps:
            due = self._within_caps(due, caps)
        claimed: list[Job] = []
        for job in due[:limit]:
            # Nothing awaits in between, so every due row is still queued here.
            taken = await self.claim_job(job.id, worker_id, lease_s)
            assert taken is not None
            claimed.append(taken)
        return claimed

    def _due(self, now: datetime) -> list[Job]:
        """Queued executions due at `now`."""
        return [
            job
            for job in self._jobs.values()
            if job.follows is None and job.status is JobStatus.QUEUED and job.run_after <= now
        ]

    def _within_caps(self, due: list[Job], caps: Mapping[int, int]) -> list[Job]:
        """The due executions `caps` lets run, in claim order (the rule of `Store.claim_batch`,
        as the SQL store's window query applies it)."""
        running = Counter(
            job.charged_user
            for job in self._jobs.values()
            if job.follows is None
            and job.status is JobStatus.RUNNING
            and job.charged_user is not None
        )
        seen: Counter[str] = Counter()
        allowed = []
        for job in due:
            user = job.charged_user
            if user is None:
                allowed.append(job)
                continue
            seen[user] += 1
            cap = caps.get(job.priority)
            if cap is None or running[user] + seen[user] <= cap:
                allowed.append(job)
        return allowed

    def _held(self, claim: Claim) -> Job:
        """The execution `claim` holds; `LeaseLost` unless it is its current claim."""
        job = self._lookup(claim.job_id)
        if (
            job is None
            or job.status is not JobStatus.RUNNING
            or job.locked_by != claim.worker_id
            or job.fence != claim.fence
        ):
            raise LeaseLost(claim.job_id, job)
        return job

    async def heartbeat_job(
        self, claim: Claim, lease_s: float, progress: JobProgress | None = None
    ) -> Job:
        """See `Store.heartbeat_job`."""
        check_positive("lease_s", lease_s)
        job = self._held(claim)
        now = self._now()
        extended = dataclasses.replace(
            job, locked_until=now + timedelta(seconds=lease_s), heartbeat_at=now
        )
        if progress is None:
            self._save(extended)
            return extended
        return self._change(extended, progress=progress)

    async def complete_job(
        self,
        claim: Claim,
        result: ResultRef,
        *,
        spend: JobSpend = NO_SPEND,
        cached: bool = False,
        result_cost_usd: float = 0.0,
    ) -> Job:
        """See `Store.complete_job`."""
        job = self._held(claim)
        return self._finish(
            job,
            JobStatus.SUCCEEDED,
            result=result,
            spend=job.spend + spend,
            cached=cached,
            result_cost_usd=result_cost_usd,
        )

    async def fail_job(
        self,
        claim: Claim,
        error: JobError,
        retry_after_s: float | None = None,
        *,
        spend: JobSpend = NO_SPEND,
    ) -> Job:
        """See `Store.fail_job`."""
        job = self._held(claim)
        history = self._history_with(job, error)
        if retry_after_s is not None and job.attempts < job.max_attempts:
            return self._change(
                job,
                status=JobStatus.QUEUED,
                run_after=self._now() + timedelta(seconds=max(retry_after_s, 0.0)),
                error=error,
                error_history=history,
                locked_by=None,
                locked_until=None,
                spend=job.spend + spend,
            )
        return self._finish(
            job, JobStatus.FAILED, error=error, error_history=history, spend=job.spend + spend
        )

    def _history_with(self, job: Job, error: JobError) -> tuple[AttemptError, ...]:
        """`job`'s error history with its current attempt's failure (the most recent kept)."""
        entry = AttemptError(job.attempts, error, self._now(), job.locked_by or "")
        return (*job.error_history, entry)[-MAX_ERROR_HISTORY:]

    async def defer_job(
        self,
        claim: Claim,
        error: JobError,
        delay_s: float,
        *,
        spend: JobSpend = NO_SPEND,
    ) -> Job:
        """See `Store.defer_job`."""
        job = self._held(claim)
        return self._change(
            job,
            status=JobStatus.QUEUED,
            attempts=job.attempts - 1,
            run_after=self._now() + timedelta(seconds=max(delay_s, 0.0)),
            error=error,
            locked_by=None,
            locked_until=None,
            spend=job.spend + spend,
        )

    async def cancel_job(self, job_id: str, user_id: str | None) -> Job:
        """See `Store.cancel_job`."""
        job = await self.get_job(job_id, user_id)
        if not job.active:
            return job
        # A shared execution (an operator's cancel) takes its active handles with it.
        cancelled = self._finish(job, JobStatus.CANCELLED)
        if job.follows is not None:
            execution = self._jobs[job.follows]
            others = [self._jobs[h] for h in self._handles.get(execution.id, ())]
            if execution.active and not any(h.active for h in others):
                self._finish(execution, JobStatus.CANCELLED)
        return cancelled

    async def rescue_expired_leases(self, limit: int) -> int:
        """See `Store.rescue_expired_leases`."""
        check_positive("limit", limit)
        now = self._now()
        expired = [
            job
            for job in self._jobs.values()
            if job.status is JobStatus.RUNNING
            and job.follows is None
            and job.locked_until is not None
            and job.locked_until < now
        ]
        expired.sort(key=lambda job: job.locked_until or now)
        for job in expired[:limit]:
            self._rescue(job, now)
        return len(expired[:limit])

    def _rescue(self, job: Job, now: datetime) -> Job | None:
        """Re-queues (or fails) a running execution whose lease expired; None if it has not."""
        if (
            job.status is not JobStatus.RUNNING
            or job.locked_until is None
            or job.locked_until >= now
        ):
            return None
        error = lease_expired_error()
        history = self._history_with(job, error)
        self._lose_claim(job)
        if job.attempts < job.max_attempts:
            return self._change(
                job,
                status=JobStatus.QUEUED,
                run_after=now,
                error=error,
                error_history=history,
                locked_by=None,
                locked_until=None,
            )
        return self._finish(job, JobStatus.FAILED, error=error, error_history=history)

    async def retry_job(self, job_id: str, user_id: str | None, attempts: int) -> Redrive:
        """See `Store.retry_job`."""
        check_positive("attempts", attempts)
        job = await self.get_job(job_id, user_id)
        refused = redrive_refused(job)
        if refused is not None:
            raise refused
        if job.status is not JobStatus.FAILED:
            return Redrive(job, redriven=False)
        execution = self._jobs[job.execution_id]
        failed_at = execution.completed_at
        requeue = not execution.active and execution.status is not JobStatus.SUCCEEDED
        if requeue:
            # Failed, or (followed by this failed handle) cancelled by its other users.
            active_id = self._active.get(execution.dedupe_key) if execution.dedupe_key else None
            if active_id is not None:
                raise redrive_conflict(job, active_id)
            started_by = execution.started_by
            if execution.user_id is None and job.follows is not None:
                started_by = job.user_id  # who re-drives her handle pays for the run
            execution = self._change(
                execution,
                status=JobStatus.QUEUED,
                max_attempts=execution.attempts + attempts,
                run_after=self._now(),
                progress=None,
                completed_at=None,
                expires_at=None,
                started_by=started_by,
            )
        if job.follows is None:
            if execution.user_id is None:
                # An operator re-driving a shared execution: the handles that failed with it.
                for handle_id in list(self._handles.get(execution.id, ())):
                    handle = self._jobs[handle_id]
                    if handle.status is JobStatus.FAILED and handle.completed_at == failed_at:
                        self._follow_again(handle, execution)
            return Redrive(self._jobs[execution.id], redriven=requeue)
        for handle_id in self._handles.get(execution.id, ()):
            other = self._jobs[handle_id]
            if other.user_id == job.user_id and other.active:
                raise redrive_conflict(job, other.id)
        return Redrive(self._follow_again(job, execution), redriven=True)

    def _follow_again(self, handle: Job, execution: Job) -> Job:
        """A failed handle mirrors its execution again."""
        return self._change(handle, **{name: getattr(execution, name) for name in MIRRORED_FIELDS})

    async def list_jobs(
        self,
        user_id: str | None,
        job_filter: JobFilter,
        limit: int,
        after: JobCursor | None = None,
    ) -> list[Job]:
        """See `Store.list_jobs`."""
        check_positive("limit", limit)
        found = [
            job
            for job in self._jobs.values()
            if (user_id is None or job.user_id == user_id)
            and (not job_filter.statuses or job.status in job_filter.statuses)
            and (not job_filter.ops or job.op in job_filter.ops)
            and (
                not job_filter.error_reasons
                or (job.error is not None and job.error.reason in job_filter.error_reasons)
            )
            and (after is None or (job.created_at, job.id) < after)
        ]
        found.sort(key=lambda job: (job.created_at, job.id), reverse=True)
        return found[:limit]

    def subscribe_due(self, event: asyncio.Event) -> AbstractContextManager[asyncio.Event]:
        """See `Store.subscribe_due`."""
        return self._hub.subscribe(DUE, event)

    def subscribe_job(
        self, job_id: str, event: asyncio.Event, *, after_seq: int | None = None
    ) -> AbstractContextManager[asyncio.Event]:
        """See `Store.subscribe_job`."""
        parsed = parse_job_id(job_id)
        key = job_id if parsed is None else str(parsed)
        return self._hub.subscribe(key, event, after_seq=after_seq)

    async def wait_for_job_change(
        self, job_id: str, user_id: str, after_seq: int, timeout_s: float
    ) -> Job:
        """See `Store.wait_for_job_change`."""
        parsed = parse_job_id(job_id)
        return await wait_for_change(
            self._hub,
            job_id if parsed is None else str(parsed),
            lambda: self.get_job(job_id, user_id),
            after_seq,
            timeout_s,
            _POLL_INTERVAL_S,
        )

    async def purge_finished_jobs(
        self,
        limit: int,
        *,
        finished_before_s: float | None = None,
        statuses: frozenset[JobStatus] = frozenset(),
    ) -> dict[JobStatus, int]:
        """See `Store.purge_finished_jobs`."""
        check_positive("limit", limit)
        now = self._now()
        if finished_before_s is None:
            due = [
                j for j in self._jobs.values() if j.expires_at is not None and j.expires_at <= now
            ]
        else:
            before = now - timedelta(seconds=finished_before_s)
            due = [
                j
                for j in self._jobs.values()
                if not j.active and j.completed_at is not None and j.completed_at < before
            ]
        purged: Counter[JobStatus] = Counter()
        for job in due:
            if sum(purged.values()) == limit:
                break
            # A handle may have gone already, with its execution.
            if (not statuses or job.status in statuses) and job.id in self._jobs:
                self._delete(job.id)
                purged[job.status] += 1
        return dict(purged)

    async def queue_depth(self) -> dict[tuple[JobStatus, str], int]:
        """See `Store.queue_depth` (the `queue_depth` statement's twin)."""
        depth: Counter[tuple[JobStatus, str]] = Counter(
            (job.status, job.op)
            for job in self._jobs.values()
            if job.active and job.follows is None
        )
        return dict(depth)

    # -- batches -----------------------------------------------------------------------------

    async def gather_batch(
        self, worker_id: str, lease_s: float, limit: int, window_s: float
    ) -> tuple[Batch, list[Job]] | None:
        """See `Store.gather_batch` (the rule of the SQL store's gather_due)."""
        check_positive("lease_s", lease_s)
        check_positive("limit", limit)
        now = self._now()
        due = [job for job in self._due(now) if job.delivery is Delivery.BATCH]
        if not due:
            return None
        model = min(due, key=lambda job: job.run_after).model
        chosen = sorted(
            (job for job in due if job.model == model),
            key=lambda job: (-job.priority, job.created_at, job.id),
        )[:limit]
        oldest = min(job.run_after for job in chosen)
        if len(chosen) < limit and oldest > now - timedelta(seconds=window_s):
            return None
        batch_id = str(uuid.uuid4())
        holder = batch_holder(batch_id)
        started = [self._start_attempt(job, holder, BATCH_HOLD_S, now) for job in chosen]
        batch = Batch(
            id=batch_id,
            model=model,
            job_ids=tuple(job.id for job in started),
            name=None,
            locked_by=worker_id,
            locked_until=now + timedelta(seconds=lease_s),
            attempts=1,
            created_at=now,
        )
        self._batches[batch_id] = batch
        return batch, started

    async def take_over_batches(self, worker_id: str, lease_s: float, limit: int) -> list[Batch]:
        """See `Store.take_over_batches`."""
        check_positive("lease_s", lease_s)
        check_positive("limit", limit)
        now = self._now()
        lapsed = sorted(
            (b for b in self._batches.values() if b.locked_until < now),
            key=lambda batch: batch.locked_until,
        )[:limit]
        taken = [
            dataclasses.replace(
                batch,
                locked_by=worker_id,
                locked_until=now + timedelta(seconds=lease_s),
                attempts=batch.attempts + 1,
            )
            for batch in lapsed
        ]
        self._batches.update((batch.id, batch) for batch in taken)
        return sorted(taken, key=lambda batch: batch.created_at)

    def _held_batch(self, batch_id: str, worker_id: str) -> Batch:
        parsed = parse_job_id(batch_id)
        batch = None if parsed is None else self._batches.get(str(parsed))
        if batch is None or batch.locked_by != worker_id:
            raise BatchLost(batch_id)
        return batch

    async def heartbeat_batch(
        self,
        batch_id: str,
        worker_id: str,
        lease_s: float,
        *,
        name: str | None = None,
        job_ids: Sequence[str] | None = None,
    ) -> Batch:
        """See `Store.heartbeat_batch`."""
        check_positive("lease_s", lease_s)
        batch = self._held_batch(batch_id, worker_id)
        now = self._now()
        batch = dataclasses.replace(
            batch,
            locked_until=now + timedelta(seconds=lease_s),
            name=batch.name if name is None else name,
            submitted_at=batch.submitted_at or (now if name is not None else None),
            job_ids=batch.job_ids if job_ids is None else tuple(job_ids),
        )
        self._batches[batch.id] = batch
        return batch

    async def record_batch_progress(self, batch: Batch, progress: JobProgress) -> int:
        """See `Store.record_batch_progress`."""
        held = [
            job
            for job in map(self._lookup, batch.job_ids)
            if job is not None and job.status is JobStatus.RUNNING and job.locked_by == batch.holder
        ]
        for job in held:
            self._change(job, progress=progress)
        return len(held)

    async def batch_executions(self, batch: Batch) -> list[Job]:
        """See `Store.batch_executions`."""
        return [job for job in map(self._lookup, batch.job_ids) if job is not None]

    async def finish_batch(self, batch_id: str, worker_id: str) -> None:
        """See `Store.finish_batch`."""
        del self._batches[self._held_batch(batch_id, worker_id).id]

    async def referenced_blobs(self, digests: Sequence[bytes]) -> set[bytes]:
        """See `Store.referenced_blobs`."""
        wanted = set(digests)
        used: set[bytes] = set()
        refs = [entry.ref for entry in self._results.values()]
        refs += [job.result for job in self._jobs.values() if job.result is not None]
        for ref in refs:
            used.update(ref.blobs)
            if ref.json_blob is not None:
                used.add(ref.json_blob)
        for job in self._jobs.values():
            used.update(job.input_blobs)
        return used & wanted

    def _delete(self, job_id: str) -> None:
        job = self._jobs.pop(job_id, None)
        if job is None:
            return
        self._lost_claims.pop(job_id, None)
        if job.user_id is not None and job.idempotency_key is not None:
            self._idempotency.pop((job.user_id, job.idempotency_key), None)
        if job.follows is not None:
            self._handles.get(job.follows, set()).discard(job.id)
        # Handles go with their execution (ON DELETE CASCADE in PostgreSQL).
        for handle_id in self._handles.pop(job.id, set()):
            self._delete(handle_id)

    # -- state changes -----------------------------------------------------------------------

    def _lose_claim(self, execution: Job) -> None:
        """The running `execution`'s claim is lost (cancelled, or its lease lapsed): its ledger
        rows read abandoned from now on, those written already included."""
        self._lost_claims.setdefault(execution.id, set()).add(execution.fence)
        for index, entry in enumerate(self._usage):
            labels = entry.record.labels
            if labels.job_id == execution.id and labels.fence == execution.fence:
                self._usage[index] = _abandoned(entry)

    def _finish(
        self,
        job: Job,
        status: JobStatus,
        *,
        result: ResultRef | None = None,
        error: JobError | None = None,
        **changes: object,
    ) -> Job:
        if status is JobStatus.CANCELLED and job.status is JobStatus.RUNNING:
            self._lose_claim(job)
        now = self._now()
        return self._change(
            job,
            status=status,
            result=result,
            error=error,
            completed_at=now,
            expires_at=now + self._retention[status],
            locked_by=None,
            locked_until=None,
            **changes,
        )

    def _change(self, job: Job, **changes: object) -> Job:
        """Applies a change watchers see: bumps the sequence, saves, mirrors to handles."""
        changed = dataclasses.replace(job, event_seq=job.event_seq + 1, **changes)  # type: ignore[arg-type]
        self._save(changed)
        if changed.user_id is None:
            mirrored = {name: getattr(changed, name) for name in MIRRORED_FIELDS}
            for handle_id in self._handles.get(changed.id, ()):
                handle = self._jobs[handle_id]
                if handle.active:
                    self._change(handle, **mirrored)
        self._hub.publish(changed.id, changed.event_seq)
        self._publish_if_due(changed)
        return changed

    def _publish_if_due(self, job: Job) -> None:
        if job.follows is None and job.status is JobStatus.QUEUED and job.run_after <= self._now():
            self._hub.publish(DUE)

    def _save(self, job: Job) -> None:
        """Stores a row and keeps the indexes (the unique indexes of the SQL schema) true."""
        self._jobs[job.id] = job
        if job.dedupe_key is not None:
            if job.active:
                self._active[job.dedupe_key] = job.id
            elif self._active.get(job.dedupe_key) == job.id:
                del self._active[job.dedupe_key]
        if job.user_id is not None and job.idempotency_key is not None:
            self._idempotency.setdefault((job.user_id, job.idempotency_key), job.id)
        if job.follows is not None:
            self._handles.setdefault(job.follows, set()).add(job.id)

    # -- usage ledger ------------------------------------------------------------------------

    async def insert_usage(self, record: UsageRecord) -> None:
        """See `Store.insert_usage`."""
        await self.insert_usage_entries([UsageEntry(record, self._now())])

    async def insert_usage_entries(self, entries: Sequence[UsageEntry]) -> None:
        """See `Store.insert_usage_entries`."""
        rows = []
        for entry in entries:
            # Every label is checked before any row is kept: the write is all or nothing.
            job_id = entry_job_id(entry)
            canonical = "" if job_id is None else str(job_id)
            record = entry.record
            if record.labels.job_id != canonical:
                # Any spelling of a job id names the same job, as in PostgreSQL's uuid column.
                labels = dataclasses.replace(record.labels, job_id=canonical)
                entry = dataclasses.replace(
                    entry, record=dataclasses.replace(record, labels=labels)
                )
            if record.labels.fence in self._lost_claims.get(canonical, ()):
                entry = _abandoned(entry)
            rows.append(entry)
        self._usage.extend(rows)
        while len(self._usage) > self._usage_rows_kept:
            self._fold(self._usage.popleft())
            self.usage_rows_folded += 1

    async def list_usage(self, job_id: str) -> list[UsageEntry]:
        """See `Store.list_usage`."""
        parsed = parse_job_id(job_id)
        if parsed is None:
            return []
        return [e for e in self._usage if e.record.labels.job_id == str(parsed)]

    async def usage_by_day(
        self, user_id: str | None, start: datetime, end: datetime
    ) -> list[UsageDay]:
        """See `Store.usage_by_day`."""
        raw = (
            (
                usage_day(e.created_at),
                e.record.labels.operation,
                e.record.model,
                UsageTotals.of_entry(e),
            )
            for e in self._usage
            if (user_id is None or e.record.labels.user_id == user_id)
            and start <= e.created_at < end
        )
        daily = [
            (day, op, model, totals)
            for (day, user, op, model), totals in self._usage_days.items()
            if (user_id is None or user == user_id)
        ]
        if user_id is None:
            daily += [
                (day, op, model, totals) for (day, op, model), totals in self._fleet_days.items()
            ]
        covered = (row for row in daily if usage_day(start) <= row[0] and day_start(row[0]) < end)
        return sum_by_day([*raw, *covered])

    async def roll_up_usage(self, before: date, limit: int) -> int:
        """See `Store.roll_up_usage`."""
        check_positive("limit", limit)
        kept: deque[UsageEntry] = deque()
        moved = 0
        for entry in self._usage:
            if moved < limit and usage_day(entry.created_at) < before:
                self._fold(entry)
                moved += 1
            else:
                kept.append(entry)
        self._usage = kept
        return moved

    async def purge_usage_days(self, before: date, limit: int) -> int:
        """See `Store.purge_usage_days`."""
        check_positive("limit", limit)
        old = [key for key in self._usage_days if key[0] < before][:limit]
        for key in old:
            del self._usage_days[key]
        fleet = [key for key in self._fleet_days if key[0] < before][: limit - len(old)]
        for fleet_key in fleet:
            del self._fleet_days[fleet_key]
        return len(old) + len(fleet)

    def _fold(self, entry: UsageEntry) -> None:
        """Adds a raw row to its daily total (it leaves the raw ledger)."""
        record = entry.record
        key = (
            usage_day(entry.created_at),
            record.labels.user_id,
            record.labels.operation,
            record.model,
        )
        totals = UsageTotals.of_entry(entry)
        earlier = self._usage_days.pop(key, None)
        # Re-inserted at the end: the first entries stay the least recently folded.
        self._usage_days[key] = totals if earlier is None else earlier + totals
        while len(self._usage_days) > self._usage_rows_kept:
            oldest = next(iter(self._usage_days))
            dropped = self._usage_days.pop(oldest)
            day, _, op, model = oldest
            fleet = (day, op, model)
            summed = self._fleet_days.pop(fleet, None)
            self._fleet_days[fleet] = dropped if summed is None else summed + dropped
            while len(self._fleet_days) > self._usage_rows_kept:
                del self._fleet_days[next(iter(self._fleet_days))]

    @property
    def usage_row_count(self) -> int:
        """Raw ledger rows held now."""
        return len(self._usage)

    def usage_entries(self) -> list[UsageEntry]:
        """Every raw ledger row kept, oldest first: the embedded ledger is readable in process
        (tests and local tools look up a request's calls by `labels.request_id`)."""
        return list(self._usage)


def _abandoned(entry: UsageEntry) -> UsageEntry:
    """`entry` as the row of an upstream attempt whose claim was lost (savings rows as they are)."""
    if not entry.record.upstream:
        return entry
    return dataclasses.replace(
        entry, record=dataclasses.replace(entry.record, outcome=ABANDONED_OUTCOME)
    )
