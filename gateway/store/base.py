"""What the gateway keeps between requests: cached results, jobs and the usage ledger.

`Store` is the interface, the union of `ResultStore`, `JobStore` and `UsageStore`;
`gateway.store.memory.MemoryStore` (embedded, in process) and
`gateway.store.postgres.PostgresStore` (shared by every replica) implement it with the same
semantics, checked by one contract test suite (tests/store).

The job is one entity for single-flight and for background work (docs/storage.md):

- An **execution** is a job row that runs: it has a lease, attempts and a result. At most one
  execution per dedupe key is active (queued or running) at a time; a caller who misses the
  cache joins that execution instead of starting another.
- An execution of a user-scoped operation belongs to its user, who holds it directly.
- An execution of a global-scope operation (`NewJob.shared`) belongs to nobody: every user who
  asks for it holds a **handle** of their own, a job row that follows the execution. A handle
  mirrors the execution's status, progress, result and error, but carries its owner's own input,
  idempotency key and timestamps, so no user sees another's request. Cancelling a handle detaches
  its owner only; the execution is cancelled when its last active handle goes.

Every user-facing read is scoped to the caller: another user's job id is `NotFound`. Methods that
act on executions by id (claim, heartbeat, complete, fail) are for the gateway's own runners.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import NamedTuple, Protocol

from gateway import errors
from gateway.model import UsageRecord

#: Longest error message kept on a job; longer ones are cut (they are for people, not parsing).
MAX_ERROR_MESSAGE_CHARS = 1024
#: Longest idempotency key accepted (the proto allows 128 characters).
MAX_IDEMPOTENCY_KEY_CHARS = 128


class JobStatus(StrEnum):
    """Where a job is in its life. QUEUED and RUNNING are active; the rest are terminal."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def active(self) -> bool:
        """Whether the job may still change (and holds its dedupe key)."""
        return self in ACTIVE_STATUSES


ACTIVE_STATUSES = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})


@dataclass(frozen=True, slots=True)
class ResultRef:
    """Where a stored result lives.

    Small result JSON is kept inline (`json`); larger JSON goes to the blob store and `json_blob`
    names it, so rows never carry large payloads. `blobs` are the digests of the bytes the result
    refers to (images), in the blob store.
    """

    json: str | None = None
    json_blob: bytes | None = None
    blobs: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        if (self.json is None) == (self.json_blob is None):
            raise ValueError("a ResultRef holds exactly one of inline json and json_blob")


@dataclass(frozen=True, slots=True)
class CachedResult:
    """One entry of the result cache."""

    key: bytes
    #: The operation that produced it (`OperationSpec.name`).
    op: str
    #: "user" or "global": whose requests it may serve (the key already encodes it).
    scope: str
    #: The model that produced it, for response metadata on cache hits.
    model: str
    ref: ResultRef
    created_at: datetime
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class JobProgress:
    """How far the current attempt of a job has come."""

    fraction: float = 0.0
    #: Machine-readable stage, e.g. "generating".
    stage: str = ""
    #: For people, e.g. "generating image 2 of 4".
    message: str = ""

    def to_json(self) -> str:
        """The JSON stored in a job row."""
        return json.dumps(
            {"fraction": self.fraction, "stage": self.stage, "message": self.message},
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> JobProgress:
        """Inverse of `to_json`."""
        data = json.loads(text)
        return cls(float(data["fraction"]), str(data["stage"]), str(data["message"]))


def _error_classes() -> dict[str, type[errors.GatewayError]]:
    found: dict[str, type[errors.GatewayError]] = {}
    pending: list[type[errors.GatewayError]] = [errors.GatewayError]
    while pending:
        cls = pending.pop()
        found.setdefault(cls.reason, cls)
        pending.extend(cls.__subclasses__())
    return found


_ERROR_BY_REASON = _error_classes()


@dataclass(frozen=True, slots=True)
class JobError:
    """Why a job (or its last attempt) failed, sanitized: a stable reason and a message."""

    #: A `GatewayError.reason`, e.g. "SAFETY_BLOCKED".
    reason: str
    message: str

    @classmethod
    def from_exception(cls, exc: BaseException) -> JobError:
        """The error to store for `exc`.

        Domain errors keep their reason and message (which by contract never carry secrets);
        anything else is a bug whose text may hold anything, so only a generic message is kept.
        """
        if isinstance(exc, errors.GatewayError):
            return cls(exc.reason, exc.message[:MAX_ERROR_MESSAGE_CHARS])
        return cls(
            errors.Internal.reason,
            "the job failed because of an internal error in the gateway; see its logs",
        )

    def to_exception(self) -> errors.GatewayError:
        """The domain error a follower re-raises, of the class the reason names."""
        cls = _ERROR_BY_REASON.get(self.reason, errors.Internal)
        if cls is errors.InvalidArgument:
            # Stored violations are flattened into the message; keep the class, not the list.
            return errors.InvalidArgument.field("request", self.message)
        return cls(self.message)


@dataclass(frozen=True, slots=True)
class NewJob:
    """What a caller asks for when it creates or joins a job."""

    user_id: str
    op: str
    #: The validated request as JSON, images as blob references.
    input_json: str
    input_blobs: tuple[bytes, ...] = ()
    #: Callers with equal keys share one active execution; None: never coalesced.
    dedupe_key: bytes | None = None
    #: Global-scope operation: the execution belongs to nobody and users hold handles to it.
    shared: bool = False
    #: Unique per user: asking again with the same key returns the first job.
    idempotency_key: str | None = None
    #: Fingerprint of the request, so an idempotency key reused for another request is refused.
    request_hash: bytes | None = None
    #: The configured model name that runs it.
    model: str = ""
    #: Higher runs first (tier weight).
    priority: int = 0
    max_attempts: int = 3
    #: Seconds a new execution is left to its creator, who claims it at once (an inline run,
    #: `claim_job(..., held=True)`): it is not due before then, so no job worker races the
    #: creator for it (nor reads its input before the creator writes it), and nobody is woken.
    #: Should the creator vanish first, it becomes due when the hold ends. 0: queued for the
    #: job workers at once (and every replica's workers are woken).
    hold_s: float = 0.0
    #: The W3C trace context (`traceparent`, `tracestate`) of the span that asked for the job,
    #: so its claim and runs, on any replica, join that trace; None outside a trace.
    traceparent: str | None = None
    tracestate: str | None = None

    def __post_init__(self) -> None:
        if not self.user_id:
            raise ValueError("a job needs a user id")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if not 0 <= self.hold_s < float("inf"):
            raise ValueError("hold_s must be a finite number of seconds, at least 0")
        if self.idempotency_key is not None and not (
            0 < len(self.idempotency_key) <= MAX_IDEMPOTENCY_KEY_CHARS
        ):
            raise ValueError(f"an idempotency key has 1 to {MAX_IDEMPOTENCY_KEY_CHARS} characters")
        if self.shared and self.dedupe_key is None:
            raise ValueError("a shared execution needs a dedupe key to be joined by")


@dataclass(frozen=True, slots=True)
class Job:
    """A job row: an execution, or a handle following one (see the module docstring)."""

    id: str
    #: The owner; None for a shared execution (which no user reads directly).
    user_id: str | None
    op: str
    status: JobStatus
    input_json: str
    input_blobs: tuple[bytes, ...]
    dedupe_key: bytes | None
    idempotency_key: str | None
    request_hash: bytes | None
    #: For a handle: the execution it follows.
    follows: str | None
    model: str
    priority: int
    attempts: int
    max_attempts: int
    run_after: datetime
    locked_by: str | None
    locked_until: datetime | None
    heartbeat_at: datetime | None
    progress: JobProgress | None
    result: ResultRef | None
    error: JobError | None
    #: Increases by one with every change a watcher should see (status, progress, result).
    event_seq: int
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    #: When a finished job may be deleted; None while active.
    expires_at: datetime | None
    #: For a shared execution: the user whose request created it (None for every other row, and
    #: on shared executions from before this was recorded).
    started_by: str | None = None
    #: The trace context of the request that created the row (`NewJob.traceparent`); None for
    #: rows created outside a trace, or before it was recorded.
    traceparent: str | None = None
    tracestate: str | None = None

    @property
    def charged_user(self) -> str | None:
        """Whose upstream limits and running cap an execution uses: its owner, or for a shared
        execution the user who started it."""
        return self.user_id if self.user_id is not None else self.started_by

    @property
    def execution_id(self) -> str:
        """The id of the row that runs: the followed execution for a handle, else this job."""
        return self.follows or self.id

    @property
    def active(self) -> bool:
        """Queued or running."""
        return self.status.active


class JoinOutcome(NamedTuple):
    """What `JobStore.join_or_create_active_job` did."""

    #: The caller's job (an execution it owns, or its handle on a shared execution).
    job: Job
    #: This call created the execution: the caller should run it.
    created: bool
    #: The caller already had this job (idempotency key, or its own active job for the key).
    existing: bool


class JobCursor(NamedTuple):
    """Where a page of `JobStore.list_jobs` ends: the last job's creation time and id (jobs are
    listed newest first, ties broken by id descending)."""

    created_at: datetime
    job_id: str


@dataclass(frozen=True, slots=True)
class JobFilter:
    """Which of a user's jobs `JobStore.list_jobs` returns; empty sets mean any."""

    statuses: frozenset[JobStatus] = frozenset()
    ops: frozenset[str] = frozenset()


class LeaseLost(Exception):
    """A runner acted on an execution it no longer holds (cancelled, taken over or finished).

    The runner must stop working on it; `job` is the row as it is now (None if it is gone).
    """

    def __init__(self, job_id: str, job: Job | None) -> None:
        state = "gone" if job is None else f"{job.status.value}, held by {job.locked_by!r}"
        super().__init__(f"the lease on job {job_id} is lost (now {state})")
        self.job_id = job_id
        self.job = job


@dataclass(frozen=True, slots=True)
class UsageEntry:
    """One row of the usage ledger: a `UsageRecord` and when it was written."""

    record: UsageRecord
    created_at: datetime = field(compare=False)


def parse_job_id(job_id: str) -> uuid.UUID | None:
    """The UUID a job id spells, or None for anything that is not one (a caller's typo)."""
    try:
        return uuid.UUID(job_id)
    except (ValueError, AttributeError, TypeError):
        return None


def usage_job_id(record: UsageRecord) -> uuid.UUID | None:
    """The job a usage record belongs to: None for calls outside a job; a label that is not a
    job id is a programming error (ValueError), not something to store."""
    job_id = record.labels.job_id
    if not job_id:
        return None
    parsed = parse_job_id(job_id)
    if parsed is None:
        raise ValueError(f"usage record labelled with a job id that is not one: {job_id!r}")
    return parsed


def job_not_found(job_id: str) -> errors.NotFound:
    """The error for a job the caller may not see, whether missing or someone else's."""
    return errors.NotFound(f"job {job_id!r} does not exist (or belongs to another user)")


def check_positive(name: str, value: float) -> None:
    """Raises ValueError unless `value` > 0 (leases, TTLs, limits are programming inputs)."""
    if not value > 0:
        raise ValueError(f"{name} must be positive, got {value!r}")


#: Message of the error a job gets when the worker running it stopped heartbeating.
LEASE_EXPIRED_MESSAGE = "the worker running this job stopped responding before it finished"


def lease_expired_error() -> JobError:
    """The error stored on a job whose lease expired (retryable: another worker takes over)."""
    return JobError(errors.Unavailable.reason, LEASE_EXPIRED_MESSAGE)


def check_same_request(earlier: Job, new: NewJob) -> None:
    """Refuses an idempotency key reused for a different request."""
    if earlier.op != new.op or (
        new.request_hash is not None and earlier.request_hash != new.request_hash
    ):
        raise errors.AlreadyExists(
            f"idempotency key {new.idempotency_key!r} was already used for a different request; "
            "use a new key for a new request"
        )


def check_same_sharing(execution: Job, new: NewJob) -> None:
    """A dedupe key is either user-scoped or shared, never both: a mix-up is a gateway bug that
    would let one user read another's job, so it fails loudly."""
    if new.shared != (execution.user_id is None) or (
        not new.shared and execution.user_id != new.user_id
    ):
        raise errors.Internal(
            "the gateway derived one dedupe key for differently scoped jobs; this is a bug"
        )


class ResultStore(Protocol):
    """The result cache. Every call may raise `gateway.errors.Unavailable` when the backing
    database cannot answer in time."""

    async def get_result(self, key: bytes) -> CachedResult | None:
        """The cached result under `key`; None when there is none or it expired."""
        ...

    async def put_result(
        self, key: bytes, *, op: str, scope: str, model: str, ref: ResultRef, ttl_s: float
    ) -> CachedResult:
        """Stores (or replaces) the result under `key` for `ttl_s` seconds."""
        ...

    async def purge_expired_results(self, limit: int) -> int:
        """Deletes up to `limit` expired cache entries; returns how many it deleted."""
        ...


class JobStore(Protocol):
    """Jobs: executions, handles, leases and the waits on them (see the module docstring).
    Every call may raise `gateway.errors.Unavailable` when the backing database cannot answer
    in time."""

    async def join_or_create_active_job(self, new: NewJob) -> JoinOutcome:
        """The caller's job for `new`: its earlier job with the same idempotency key, or the
        active execution with the same dedupe key (joined, through a handle when shared), or a
        new queued execution (`created`).

        Raises `AlreadyExists` when the idempotency key belongs to a different request.
        """
        ...

    async def join_or_create_active_jobs(self, news: Sequence[NewJob]) -> list[JoinOutcome]:
        """`join_or_create_active_job` for each of `news`, answers in order; a store may first
        write every new execution of its own together, then join or create the others one by
        one. Raises the first error any raises (others may have been created)."""
        ...

    async def find_job_by_idempotency_key(self, user_id: str, key: str) -> Job | None:
        """The user's job created with this idempotency key, if any."""
        ...

    async def get_job(self, job_id: str, user_id: str) -> Job:
        """The user's job; `NotFound` for a missing job or another user's."""
        ...

    async def claim_job(
        self, job_id: str, worker_id: str, lease_s: float, *, held: bool = False
    ) -> Job | None:
        """Takes the lease on an execution that is queued and due, or whose lease expired.

        Returns it running (attempts + 1) and locked by `worker_id` until now + `lease_s`; None
        when it cannot be claimed now (someone holds a valid lease, it is not due, it finished,
        or it is a handle). Claiming an execution whose lease expired first rescues it, so one
        with no attempts left fails instead. `held`: the caller created it with a hold
        (`NewJob.hold_s`) and claims it now, before it is due.
        """
        ...

    async def claim_batch(
        self,
        worker_id: str,
        limit: int,
        lease_s: float,
        caps: Mapping[int, int] | None = None,
    ) -> list[Job]:
        """Takes the lease on up to `limit` due queued executions at once, highest priority
        first, then oldest (skipping rows another runner is claiming), as `claim_job` does.

        `caps` (job priority -> most running executions per user) holds a user's executions
        back: taking the due ones of each user in claim order, the n-th of a user whose
        priority caps it at c is claimed only if (her running executions) + n <= c; it stays
        queued otherwise. A shared execution counts as the user's who started it
        (`Job.charged_user`); one without (from before that was recorded) is never held back,
        nor are priorities without a cap. The cap holds across replicas claiming at once.

        Executions whose lease expired are not taken here: `rescue_expired_leases` queues
        them again first. Returns them in claim order.
        """
        ...

    async def heartbeat_job(
        self, job_id: str, worker_id: str, lease_s: float, progress: JobProgress | None = None
    ) -> Job:
        """Extends the lease to now + `lease_s`, optionally recording progress (an event).

        Raises `LeaseLost` when `worker_id` no longer holds the running execution.
        """
        ...

    async def complete_job(self, job_id: str, worker_id: str, result: ResultRef) -> Job:
        """Marks the execution succeeded with `result`; `LeaseLost` if not held."""
        ...

    async def fail_job(
        self, job_id: str, worker_id: str, error: JobError, retry_after_s: float | None = None
    ) -> Job:
        """Records a failed attempt.

        With `retry_after_s` and attempts left, the execution is queued again, due after that
        delay; otherwise it fails for good. `LeaseLost` if not held.
        """
        ...

    async def defer_job(self, job_id: str, worker_id: str, error: JobError, delay_s: float) -> Job:
        """Gives a held execution back without counting its attempt: queued again, due after
        `delay_s`, with `error` saying why it waits (a rate limit denied it before anything was
        spent). `LeaseLost` if not held."""
        ...

    async def cancel_job(self, job_id: str, user_id: str) -> Job:
        """Cancels the user's job if it is active (a handle detaches only its owner); a finished
        job is returned unchanged. `NotFound` for a missing job or another user's."""
        ...

    async def rescue_expired_leases(self, limit: int) -> int:
        """Re-queues up to `limit` running executions whose lease expired (failing those with
        no attempts left); returns how many it changed."""
        ...

    async def list_jobs(
        self, user_id: str, job_filter: JobFilter, limit: int, after: JobCursor | None = None
    ) -> list[Job]:
        """Up to `limit` of the user's own jobs (handles included, shared executions never),
        newest first, those matching `job_filter`, after `after` when given."""
        ...

    def subscribe_due(self, event: asyncio.Event) -> AbstractContextManager[asyncio.Event]:
        """While the block runs, `event` is set whenever an execution may have become due
        (created, queued again, deferred or retried with no delay) through any replica that
        shares this store, and after notifications may have been missed. Job workers wait on
        it between polls; a job due later (a delayed retry) is found by their poll."""
        ...

    async def wait_for_job_change(
        self, job_id: str, user_id: str, after_seq: int, timeout_s: float
    ) -> Job:
        """The user's job as soon as its `event_seq` exceeds `after_seq`, or as it is when
        `timeout_s` passes or it is terminal. `NotFound` as for `get_job`."""
        ...

    async def purge_finished_jobs(self, limit: int) -> int:
        """Deletes up to `limit` finished jobs past their retention; returns how many."""
        ...


class UsageStore(Protocol):
    """The usage ledger: every upstream attempt, by job. Every call may raise
    `gateway.errors.Unavailable` when the backing database cannot answer in time."""

    async def insert_usage(self, record: UsageRecord) -> None:
        """Appends one upstream attempt to the ledger."""
        ...

    async def list_usage(self, job_id: str) -> list[UsageEntry]:
        """The ledger rows of one job, oldest first."""
        ...


class Store(ResultStore, JobStore, UsageStore, Protocol):
    """The results, jobs and usage the gateway keeps, and their connections; consumers that
    use one of the three depend on its protocol alone."""

    async def start(self) -> None:
        """Connects (best effort: a database that is down now is retried on later calls)."""
        ...

    async def close(self) -> None:
        """Releases connections and wakes every waiter."""
        ...

    async def referenced_blobs(self, digests: Sequence[bytes]) -> set[bytes]:
        """Those of `digests` that a cache row or a job (input or result) references; the
        blob collector keeps them. Usage rows reference jobs, never blobs."""
        ...
