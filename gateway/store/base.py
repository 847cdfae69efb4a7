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
Reads and changes that take a `user_id` take None for an operator (`viewbait-gateway jobs`, or
the service token re-driving any user's job): every row, shared executions included.

**Fencing.** Every claim of an execution increases its fencing token (`Job.fence`) by one, and
the runner holds a `Claim` (execution, worker, token). Every write it makes for the execution
(heartbeat, progress, completion, failure, deferral, the result's cache row) carries its claim,
and the store refuses it (`LeaseLost`) unless that claim is still the current one: a worker
that lost its lease (paused, cut off) and comes back writes nothing. A claim is *lost* when its
execution is cancelled while it runs, or its lease lapses and it is rescued; the execution
remembers the tokens of its lost claims, and every usage ledger row of such a claim (labelled
with its token, `CallLabels.fence`), written before the loss or after it, has the outcome
`ABANDONED_OUTCOME`, with its tokens and cost: the attempt was paid for, and its work thrown
away. A claim that ended by its own write (completed, failed, deferred) keeps its rows' outcomes,
however late the ledger writes them.

**Dead letters.** An execution that failed for good (non-retryable error, attempts exhausted)
is a dead letter: it keeps the error of every failed attempt (`Job.error_history`, the most
recent `MAX_ERROR_HISTORY`), and `retry_job` re-drives it: queued again as new attempts of the
same job id, with a fresh attempt budget.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum
from typing import NamedTuple, Protocol

from gateway import errors
from gateway.model import CACHE_HIT, COALESCED, Usage, UsageRecord

#: Longest error message kept on a job; longer ones are cut (they are for people, not parsing).
MAX_ERROR_MESSAGE_CHARS = 1024
#: Longest idempotency key accepted (the proto allows 128 characters).
MAX_IDEMPOTENCY_KEY_CHARS = 128
#: Failed attempts a job's error history keeps (the most recent; attempt numbers show a gap).
MAX_ERROR_HISTORY = 20
#: The ledger outcome of an upstream attempt made under a claim that was lost (its job
#: cancelled while it ran, or its lease lapsed and taken over): paid for, its work discarded.
ABANDONED_OUTCOME = "abandoned"


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


class Delivery(StrEnum):
    """How a queued execution reaches the model: by the job workers, one call at a time, or
    gathered with others of its model into a Gemini Batch API batch (`BatchStore`)."""

    INTERACTIVE = "interactive"
    BATCH = "batch"


#: The lease of an execution inside a batch: the batch row's lease stands for it (any replica
#: takes over a batch whose lease lapsed), so the execution's own never lapses (a century).
BATCH_HOLD_S = 100 * 365 * 86400.0


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
    #: What the upstream work that produced it cost: what each hit saves.
    cost_usd: float = 0.0


@dataclass(frozen=True, slots=True)
class JobSpend:
    """Upstream usage and cost charged to an execution, summed over its attempts (those that
    failed and were retried included)."""

    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
    upstream_calls: int = 0

    def __add__(self, other: JobSpend) -> JobSpend:
        return JobSpend(
            self.usage + other.usage,
            self.cost_usd + other.cost_usd,
            self.upstream_calls + other.upstream_calls,
        )


#: An execution that has spent nothing.
NO_SPEND = JobSpend()


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
class AttemptError:
    """One failed attempt in a job's error history."""

    #: The attempt's number (1 for the first; a re-driven job keeps counting).
    attempt: int
    error: JobError
    #: When it failed (the database's clock).
    at: datetime
    #: The worker (lease holder) that ran it.
    worker: str

    def to_json(self) -> dict[str, object]:
        """The entry as the job row's history stores it."""
        return {
            "attempt": self.attempt,
            "reason": self.error.reason,
            "message": self.error.message,
            "at": self.at.isoformat(),
            "worker": self.worker,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> AttemptError:
        """Inverse of `to_json`."""
        return cls(
            attempt=int(str(data["attempt"])),
            error=JobError(str(data["reason"]), str(data["message"])),
            at=datetime.fromisoformat(str(data["at"])),
            worker=str(data.get("worker") or ""),
        )


@dataclass(frozen=True, slots=True)
class Claim:
    """A runner's hold on an execution: the execution, the lease holder and the fencing token
    its claim got. Every write for the execution carries it (module docstring, Fencing)."""

    job_id: str
    worker_id: str
    fence: int


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
    #: A new execution is run by the job workers, or gathered into a batch.
    delivery: Delivery = Delivery.INTERACTIVE
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
    #: What the execution spent upstream, every attempt summed (a handle mirrors it).
    spend: JobSpend = NO_SPEND
    #: The execution was answered from the result cache (its run found the result stored).
    cached: bool = False
    #: What the upstream work behind its result cost: its own run's, or for a result from the
    #: cache the run that produced it (what a caller taking the result without paying saves).
    result_cost_usd: float = 0.0
    #: A handle that joined a shared execution another user started: its owner paid nothing.
    coalesced: bool = False
    #: How it reaches the model (for a handle: as its execution was created).
    delivery: Delivery = Delivery.INTERACTIVE
    #: The trace context of the request that created the row (`NewJob.traceparent`); None for
    #: rows created outside a trace, or before it was recorded.
    traceparent: str | None = None
    tracestate: str | None = None
    #: The fencing token of the execution's latest claim (0: never claimed; handles: 0).
    fence: int = 0
    #: The errors of its failed attempts, oldest first (a handle mirrors its execution's).
    error_history: tuple[AttemptError, ...] = ()
    #: On an execution just claimed by `claim_batch`: whether the result cache held an entry
    #: under its dedupe key at the claim (False: none, so its runner need not look again; only
    #: the runner of an execution writes that key's entry while the execution is active). None:
    #: not known (every other read), look.
    result_cached: bool | None = None

    @property
    def claim(self) -> Claim:
        """The claim of the execution's current runner (meaningful on a job just claimed)."""
        return Claim(self.id, self.locked_by or "", self.fence)

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


class Redrive(NamedTuple):
    """What `JobStore.retry_job` did."""

    #: The job as it is now.
    job: Job
    #: It was a dead letter and came back (queued again, or for a handle following its
    #: execution again); False: it was left as it was (queued, running or succeeded).
    redriven: bool


@dataclass(frozen=True, slots=True)
class JobFilter:
    """Which jobs `JobStore.list_jobs` returns; empty sets mean any."""

    statuses: frozenset[JobStatus] = frozenset()
    ops: frozenset[str] = frozenset()
    #: Only jobs whose (last) error has one of these reasons.
    error_reasons: frozenset[str] = frozenset()


class LeaseLost(Exception):
    """A runner acted on an execution it no longer holds (cancelled, taken over or finished).

    The runner must stop working on it; `job` is the row as it is now (None if it is gone).
    """

    def __init__(self, job_id: str, job: Job | None) -> None:
        if job is None:
            state = "gone"
        elif job.status is JobStatus.RUNNING:
            state = f"running under claim {job.fence} of {job.locked_by!r}"
        else:
            state = job.status.value
        super().__init__(f"the lease on job {job_id} is lost (now {state})")
        self.job_id = job_id
        self.job = job


@dataclass(frozen=True, slots=True)
class Batch:
    """A Gemini Batch API batch of executions of one model (`BatchStore`).

    Its executions run while it lives, held by `holder` for `BATCH_HOLD_S`; the batch itself is
    leased to the replica that submits and polls it (`locked_by` until `locked_until`, the
    database's clock), and any replica takes it over once that lease lapses.
    """

    id: str
    #: The model identity its executions run on (`Job.model`).
    model: str
    #: Its executions, in the order of the batch's lines once submitted.
    job_ids: tuple[str, ...]
    #: The Batch API's name for it once submitted (None before: a taker-over looks for it by
    #: its display name, this id, before submitting it again).
    name: str | None
    locked_by: str
    locked_until: datetime
    #: How many replicas have held it (1: only the one that gathered it).
    attempts: int
    created_at: datetime
    submitted_at: datetime | None = None

    @property
    def holder(self) -> str:
        """The lease holder its executions name (`Job.locked_by`)."""
        return batch_holder(self.id)


def batch_holder(batch_id: str) -> str:
    """The lease holder of the executions inside batch `batch_id`."""
    return f"batch:{batch_id}"


class BatchLost(Exception):
    """A replica acted on a batch it no longer holds (taken over, or finished): it must stop."""

    def __init__(self, batch_id: str) -> None:
        super().__init__(f"the lease on batch {batch_id} is lost (taken over or finished)")
        self.batch_id = batch_id


@dataclass(frozen=True, slots=True)
class UsageEntry:
    """One row of the usage ledger: a `UsageRecord` and when it was recorded.

    A row may stand for several records alike (`events` of them): the ledger writer folds the
    savings records outside jobs of one user, operation, model and outcome in one UTC second
    into one row (`gateway.store.ledger`), whose `saved_usd` is their sum, whose time is the
    start of that second and whose request id is empty. Everything that counts records sums
    `events`."""

    record: UsageRecord
    created_at: datetime = field(compare=False)
    #: The records this row stands for (at least 1).
    events: int = 1


@dataclass(frozen=True, slots=True)
class UsageTotals:
    """Ledger rows summed: upstream calls with their tokens and cost, and the savings records
    (cache hits and joins) with what they saved."""

    upstream_calls: int = 0
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
    cache_hits: int = 0
    joins: int = 0
    saved_usd: float = 0.0

    @classmethod
    def of(cls, record: UsageRecord, events: int = 1) -> UsageTotals:
        """What one ledger row adds: `record`, standing for `events` records alike (its
        tokens and dollar amounts are their sums already; `UsageEntry`)."""
        return cls(
            upstream_calls=events if record.upstream else 0,
            usage=record.usage,
            cost_usd=record.cost_usd,
            cache_hits=events if record.outcome == CACHE_HIT else 0,
            joins=events if record.outcome == COALESCED else 0,
            saved_usd=record.saved_usd,
        )

    @classmethod
    def of_entry(cls, entry: UsageEntry) -> UsageTotals:
        """What one ledger row adds (`of` its record and events)."""
        return cls.of(entry.record, entry.events)

    def __add__(self, other: UsageTotals) -> UsageTotals:
        return UsageTotals(
            self.upstream_calls + other.upstream_calls,
            self.usage + other.usage,
            self.cost_usd + other.cost_usd,
            self.cache_hits + other.cache_hits,
            self.joins + other.joins,
            self.saved_usd + other.saved_usd,
        )


@dataclass(frozen=True, slots=True)
class UsageDay:
    """The ledger of one UTC day, operation and model, summed."""

    day: date
    op: str
    model: str
    totals: UsageTotals


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


def entry_job_id(entry: UsageEntry) -> uuid.UUID | None:
    """`usage_job_id` of a row to be written, which must stand for at least one record
    (ValueError otherwise: a bug, not something to store)."""
    if entry.events < 1:
        raise ValueError(f"a usage ledger row stands for at least one record, not {entry.events}")
    return usage_job_id(entry.record)


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


def redrive_refused(job: Job) -> errors.FailedPrecondition | None:
    """Why `retry_job` will not re-drive `job` (None: it may). A cancelled job stays cancelled:
    its owner decided, and the proto promises a cancelled job is never retried."""
    if job.status is JobStatus.CANCELLED:
        return errors.FailedPrecondition(
            f"job {job.id} was cancelled, and a cancel is final; submit the request again to "
            "run it anew"
        )
    return None


def redrive_conflict(job: Job, active_id: str) -> errors.FailedPrecondition:
    """The error of a re-drive whose request is running again as another job already."""
    return errors.FailedPrecondition(
        f"the request of job {job.id} is being run by job {active_id} already; follow that "
        "one (submitting the request again joins it)"
    )


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
        """Stores (or replaces) the result under `key` for `ttl_s` seconds, with what the
        upstream work that produced it cost.

        With `claim` (a runner storing the result of the execution it holds), only while that
        claim is the execution's current one: `LeaseLost` otherwise, and nothing is written.
        """
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

    async def get_job(self, job_id: str, user_id: str | None) -> Job:
        """The user's job; `NotFound` for a missing job or another user's. `user_id` None (an
        operator): any job, shared executions included."""
        ...

    async def claim_job(
        self, job_id: str, worker_id: str, lease_s: float, *, held: bool = False
    ) -> Job | None:
        """Takes the lease on an execution that is queued and due, or whose lease expired.

        Returns it running (attempts + 1, a new fencing token: `Job.claim` is what the runner
        writes with) and locked by `worker_id` until now + `lease_s`; None
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
        them again first. Returns them in claim order, each with `Job.result_cached` where the
        store tells it in the same statement.
        """
        ...

    async def heartbeat_job(
        self, claim: Claim, lease_s: float, progress: JobProgress | None = None
    ) -> Job:
        """Extends the lease to now + `lease_s`, optionally recording progress (an event).

        Raises `LeaseLost` (writing nothing) unless `claim` is the running execution's current
        claim; so does every other write of a runner below.
        """
        ...

    async def complete_job(
        self,
        claim: Claim,
        result: ResultRef,
        *,
        spend: JobSpend = NO_SPEND,
        cached: bool = False,
        result_cost_usd: float = 0.0,
    ) -> Job:
        """Marks the execution succeeded with `result`, adding the attempt's `spend` to what it
        spent, and recording whether the result came from the cache and what the upstream work
        behind it cost (see `Job`); `LeaseLost` if not held."""
        ...

    async def fail_job(
        self,
        claim: Claim,
        error: JobError,
        retry_after_s: float | None = None,
        *,
        spend: JobSpend = NO_SPEND,
    ) -> Job:
        """Records a failed attempt (in the error history too) and adds what it spent
        (`spend`).

        With `retry_after_s` and attempts left, the execution is queued again, due after that
        delay; otherwise it fails for good (a dead letter). `LeaseLost` if not held.
        """
        ...

    async def defer_job(
        self,
        claim: Claim,
        error: JobError,
        delay_s: float,
        *,
        spend: JobSpend = NO_SPEND,
    ) -> Job:
        """Gives a held execution back without counting its attempt: queued again, due after
        `delay_s`, with `error` saying why it waits (a rate limit denied it before anything was
        spent; not a failed attempt, so not in the error history), adding whatever it spent
        (`spend`). `LeaseLost` if not held."""
        ...

    async def cancel_job(self, job_id: str, user_id: str | None) -> Job:
        """Cancels the user's job if it is active (a handle detaches only its owner); a finished
        job is returned unchanged. `NotFound` for a missing job or another user's. `user_id`
        None (an operator): any job; a shared execution is cancelled with its active handles.
        """
        ...

    async def retry_job(self, job_id: str, user_id: str | None, attempts: int) -> Redrive:
        """Re-drives a dead letter: a failed job is queued again, due at once, as new attempts
        of the same job id with `attempts` more allowed (`max_attempts` = attempts so far +
        `attempts`), keeping its error history; watchers see it QUEUED. Idempotent: a job
        queued, running or succeeded is answered as it is (`redriven` False).

        A handle is re-driven through its execution: a failed execution is queued again (run
        as the user who re-drove it, on her limits and budgets), an active or succeeded one is
        followed again, and the handle mirrors it; other users' handles stay as they are. An
        operator (`user_id` None) re-driving a shared execution brings back every handle that
        failed with it. `NotFound` as for `get_job`; `FailedPrecondition` for a cancelled job,
        or when another active job runs the same request already (its id is named).
        """
        ...

    async def rescue_expired_leases(self, limit: int) -> int:
        """Re-queues up to `limit` running executions whose lease expired (failing those with
        no attempts left); returns how many it changed."""
        ...

    async def list_jobs(
        self,
        user_id: str | None,
        job_filter: JobFilter,
        limit: int,
        after: JobCursor | None = None,
    ) -> list[Job]:
        """Up to `limit` of the user's own jobs (handles included, shared executions never),
        newest first, those matching `job_filter`, after `after` when given. `user_id` None
        (an operator): every job, shared executions included."""
        ...

    def subscribe_due(self, event: asyncio.Event) -> AbstractContextManager[asyncio.Event]:
        """While the block runs, `event` is set whenever an execution may have become due
        (created, queued again, deferred or retried with no delay) through any replica that
        shares this store, and after notifications may have been missed. Job workers wait on
        it between polls; a job due later (a delayed retry) is found by their poll."""
        ...

    def subscribe_job(
        self, job_id: str, event: asyncio.Event, *, after_seq: int | None = None
    ) -> AbstractContextManager[asyncio.Event]:
        """While the block runs, `event` is set whenever the execution `job_id` changes in a
        way watchers see (cancelled, rescued, claimed by another runner, progress), through
        any replica, and after notifications may have been missed. Its runner waits on it
        besides its heartbeat timer, so it learns of a cancel or a takeover at once.
        `after_seq`: changes up to that `event_seq` (the runner's own claim) need not set it,
        where the store can tell."""
        ...

    async def wait_for_job_change(
        self, job_id: str, user_id: str, after_seq: int, timeout_s: float
    ) -> Job:
        """The user's job as soon as its `event_seq` exceeds `after_seq`, or as it is when
        `timeout_s` passes or it is terminal. `NotFound` as for `get_job`."""
        ...

    async def purge_finished_jobs(
        self,
        limit: int,
        *,
        finished_before_s: float | None = None,
        statuses: frozenset[JobStatus] = frozenset(),
    ) -> dict[JobStatus, int]:
        """Deletes up to `limit` finished jobs past their retention (its length is the
        setting of their status when they finished); returns how many of each status.

        `finished_before_s` (an operator's purge): every finished job that finished more than
        that many seconds ago instead, retention or not. `statuses`: only these (empty: any
        finished one). A shared execution takes its handles with it.
        """
        ...

    async def queue_depth(self) -> dict[tuple[JobStatus, str], int]:
        """Active executions (handles not counted) by (status, operation), for metrics; pairs
        with none are left out."""
        ...


class BatchStore(Protocol):
    """Batches of executions delivered through the Batch API (`Delivery.BATCH`), and their
    leases. Every call may raise `gateway.errors.Unavailable` when the backing database cannot
    answer in time.

    Executions of a batch are changed with the `JobStore` calls of a lease holder, as
    `Batch.holder`: `complete_job`, `fail_job`, `defer_job` (and `LeaseLost` for one that was
    cancelled meanwhile).
    """

    async def gather_batch(
        self, worker_id: str, lease_s: float, limit: int, window_s: float
    ) -> tuple[Batch, list[Job]] | None:
        """Gathers a batch, when one is ready: the due queued executions delivered by batch of
        the model whose oldest one has been due longest, highest priority first, then oldest,
        up to `limit` (skipping rows another gatherer is taking), provided `limit` of them are
        due or the oldest has been due for `window_s` seconds. Each starts an attempt held by
        the new batch for `BATCH_HOLD_S`; the batch is leased to `worker_id` for `lease_s`.

        Returns the batch and its executions (running), or None when none is ready. The job
        workers' claims (`claim_batch`) never take executions delivered by batch.
        """
        ...

    async def take_over_batches(self, worker_id: str, lease_s: float, limit: int) -> list[Batch]:
        """Leases to `worker_id` up to `limit` batches whose lease lapsed (their replica
        stopped), oldest lapse first; each one's `attempts` grows by one."""
        ...

    async def heartbeat_batch(
        self,
        batch_id: str,
        worker_id: str,
        lease_s: float,
        *,
        name: str | None = None,
        job_ids: Sequence[str] | None = None,
    ) -> Batch:
        """Extends the batch's lease to now + `lease_s`, recording its Batch API `name` (and
        the time it was submitted) and its executions in line order when given. `BatchLost`
        when `worker_id` does not hold it."""
        ...

    async def record_batch_progress(self, batch: Batch, progress: JobProgress) -> int:
        """Records `progress` on the batch's executions it still holds (an event for their
        watchers); returns how many."""
        ...

    async def batch_executions(self, batch: Batch) -> list[Job]:
        """The executions of `batch` as they are now, in its order (any status; one deleted
        meanwhile is left out)."""
        ...

    async def finish_batch(self, batch_id: str, worker_id: str) -> None:
        """Deletes a batch whose executions have all ended or left it. `BatchLost` when
        `worker_id` does not hold it."""
        ...


class UsageStore(Protocol):
    """The usage ledger: every upstream attempt and every savings record (a cache hit or a
    join), kept row by row for `raw_retention_days`, then as daily totals per (UTC day, user,
    operation, model). A row is in exactly one of the two, so a read adds both. A row may
    stand for several records (`UsageEntry.events`), and every count sums them. Every call may
    raise `gateway.errors.Unavailable` when the backing database cannot answer in time, and
    ValueError for a record labelled with a job id that is not one (`usage_job_id`)."""

    async def insert_usage(self, record: UsageRecord) -> None:
        """Appends one record to the ledger, stamped now. An upstream attempt of a job made
        under a claim (`CallLabels.fence`) that was lost is recorded with the outcome
        `ABANDONED_OUTCOME` (its tokens and cost as they were; module docstring, Fencing)."""
        ...

    async def insert_usage_entries(self, entries: Sequence[UsageEntry]) -> None:
        """Appends records in one write, each stamped with its own `created_at` and standing
        for its `events`, in order (attempts of lost claims recorded as abandoned, as by
        `insert_usage`). ValueError, before anything is written, for an entry of fewer than
        one event."""
        ...

    async def list_usage(self, job_id: str) -> list[UsageEntry]:
        """The raw ledger rows of one job, oldest first."""
        ...

    async def usage_by_day(
        self, user_id: str | None, start: datetime, end: datetime
    ) -> list[UsageDay]:
        """The ledger of `user_id` (None: every user) from `start` (inclusive) to `end`
        (exclusive), summed by UTC day, operation and model, ordered by those. Raw rows count
        by their time; a day already rolled up counts whole when any of it is in the range."""
        ...

    async def roll_up_usage(self, before: date, limit: int) -> int:
        """Moves up to `limit` raw rows recorded before the UTC day `before` into the daily
        totals (added to any already there), atomically; returns how many it moved."""
        ...

    async def purge_usage_days(self, before: date, limit: int) -> int:
        """Deletes up to `limit` daily totals of days before `before`; returns how many."""
        ...


class Store(ResultStore, JobStore, BatchStore, UsageStore, Protocol):
    """The results, jobs, batches and usage the gateway keeps, and their connections;
    consumers that use one of them depend on its protocol alone."""

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
