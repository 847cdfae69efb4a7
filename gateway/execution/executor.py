"""How a replica answers an operation request at most once per key: cache-aside, single-flight
and cross-replica coalescing (the storage side is docs/storage.md).

For a request whose result is cacheable (it has a cache key) or replayable (an idempotency key):

1. **Cache.** A hit in the in-process hot copy, else in the store, answers at once: no upstream
   call, zero usage, the model that produced it. The hot copy holds the same keys with the same
   expiry as the store's rows (keys carry the prompt, schema and model versions, so a bump is a
   new key there too), and both keep what the run that produced the result cost.
2. **Single-flight.** Callers on this replica with the same key share one piece of work.
3. **Coalescing.** That work joins or creates the one active execution (job) of the key, across
   replicas. Whoever creates it claims it and runs it inline under a lease extended by
   heartbeat, re-checking the cache first (a job that finished between the miss and the insert
   already stored its result). Every other replica waits for the job to change (NOTIFY, with a
   polling fallback); when a wait stays quiet, it tries to claim the execution, which succeeds
   only once the runner's lease has lapsed (its replica died), and then runs it itself.
4. **Long-poll.** A unary caller waits for the shared work up to `long_poll_s`, bounded by its
   deadline, then answers a pending handle: its own job, or for a global-scope operation its
   own handle on the shared execution, never another user's. The work is then kept: it runs to
   its end even if nobody waits, and the same request asked again joins it.

Cancellation: a caller that goes away stops waiting alone. When nobody waits any more and no
pending handle was given out, the work is cancelled, and an execution it was running is failed
as abandoned at once (never left active); a waiter elsewhere that still wants the result then
starts a new execution. At shutdown a running execution is re-queued instead, for another
replica to take. A request with an idempotency key keeps its work from the start: its caller
declared it will retry, and the retry finds the result.

Savings: every answer taken from the cache or from work someone else paid for (and every job
execution completed from the cache) is recorded in the usage ledger (`usage`, outcome
`cache_hit` or `coalesced`) with what the upstream work behind its result cost (`saved_usd`).
Every execution keeps what its runs spent upstream (failed runs included) and how its result
was produced, for its job's response metadata.

Faults: with the store unavailable (its bounded timeouts and circuit), a cacheable request runs
uncached, coalesced within this replica, when `run_uncached_on_store_failure` allows it, else it
answers UNAVAILABLE; a request with an idempotency key always answers UNAVAILABLE then (a retry
could run twice). Results are written (blobs, cache row, job) after the callers have their
answer; a failed write is logged and costs at most a later recomputation.

Deadlines: every run has one. Work that outlives its callers (an execution any caller may
leave, a job attempt, a run without the store) gets `run_timeout_s` from its start; a run that
is one caller's alone (no cache key, no idempotency key) gets the caller's deadline, or
`run_timeout_s` when that is sooner or the caller set none. Gemini's retries and their waits stay
within it (`gateway.gemini`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from gateway import errors, native
from gateway.config import EMULATOR_MODEL_PREFIX, ExecutionSettings, Scope
from gateway.execution.hot_cache import HotResults
from gateway.execution.lease import HeldLease, report_loss
from gateway.execution.result_cache import (
    CacheHit,
    EncodedResult,
    ResultCache,
    load_result,
    save_result,
)
from gateway.execution.singleflight import SingleFlight
from gateway.execution.types import (
    BlobQuota,
    Call,
    InputWrite,
    Outcome,
    Pending,
    RetryPolicy,
    Spend,
)
from gateway.model import CACHE_HIT, COALESCED, CallLabels, Usage, UsageRecord, UsageSink
from gateway.operations import codec
from gateway.operations.keys import derive_key
from gateway.store.base import (
    NO_SPEND,
    Claim,
    Job,
    JobError,
    JobProgress,
    JobSpend,
    JobStatus,
    JoinOutcome,
    LeaseLost,
    NewJob,
    Store,
)
from gateway.store.blobs import BlobError, BlobStore
from gateway.telemetry import tracing

if TYPE_CHECKING:
    from gateway.telemetry.metrics import ExecutionMetrics

#: The tokens of a savings record (none), shared by all of them: `Usage` is immutable.
_NO_TOKENS = Usage()

log = logging.getLogger(__name__)

#: Time kept back from the caller's deadline to answer a pending handle (one store call); at
#: most a quarter of what the caller has left.
ANSWER_MARGIN_S = 0.2
#: How many executions a request starts or joins before giving up (each one abandoned by its
#: runner when nobody waited for it; more in a row means something is wrong).
MAX_EXECUTIONS = 4
#: How long shutdown waits for result writes and job releases.
CLOSE_TIMEOUT_S = 10.0
#: Fallback to uncached runs is logged at most this often.
FALLBACK_LOG_INTERVAL_S = 10.0
#: The error an execution gets when the work behind it is cancelled because nobody waits.
ABANDONED = JobError(
    errors.Cancelled.reason,
    "the work was cancelled because nobody waited for its result any more; ask again",
)
#: The error of the attempt a replica gave back at shutdown (the execution is queued again).
RELEASED = JobError(
    errors.Unavailable.reason, "the replica running this job shut down; another one takes it over"
)


@dataclass(slots=True)
class ExecutionStats:
    """What the executor did since it started (for metrics and tests)."""

    hot_hits: int = 0
    store_hits: int = 0
    misses: int = 0
    #: Executions this replica ran (claimed inline, takeovers included).
    runs: int = 0
    #: Executions claimed by a waiter after the runner's lease lapsed, or re-queued ones.
    takeovers: int = 0
    #: Answers taken from an execution another replica ran.
    followed: int = 0
    pending: int = 0
    #: Requests run uncached because the store was unavailable.
    uncached: int = 0
    #: Results (cache row, blobs or job completion) that could not be written.
    write_failures: int = 0


def idempotency_flight_key(user_id: str, idempotency_key: str, request_hash: bytes) -> bytes:
    """The single-flight key of a user's idempotency key used for one request (never equal to
    a cache key). The request is part of it: a concurrent call reusing the key for another
    request must reach the store, which refuses it, not join the first request's flight."""
    return derive_key(
        [
            ("idempotency_user", user_id),
            ("idempotency_key", idempotency_key),
            ("request_hash", request_hash.hex()),
        ]
    )


def _request_hash(call: Call, text: str) -> bytes:
    """What tells a repeated idempotency key's request from another one. An emulated request
    is marked, so a key first used against the emulator never replays its synthetic answer to
    a request Gemini serves (and the other way round); a model change alone is no new request."""
    if call.model.startswith(EMULATOR_MODEL_PREFIX):
        # Unambiguous: the request JSON starts with "{", never with the marker.
        return native.sha256(f"{call.spec.name}\x00{call.model}\x00{text}".encode())
    return native.sha256(f"{call.spec.name}\x00{text}".encode())


def job_spend(spend: Spend | None) -> JobSpend:
    """What a run spent, as its execution's row keeps it."""
    if spend is None:
        return NO_SPEND
    return JobSpend(spend.usage, spend.cost_usd, spend.upstream_calls)


def default_worker_id() -> str:
    """host:pid:random, unique per executor: who holds a lease."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Executor:
    """Answers requests through the cache, single-flight and coalescing (module docstring)."""

    def __init__(
        self,
        settings: ExecutionSettings,
        store: Store,
        blobs: BlobStore,
        *,
        inline_result_max_bytes: int = 64 * 1024,
        worker_id: str | None = None,
        blob_quota: BlobQuota | None = None,
        usage: UsageSink | None = None,
        metrics: ExecutionMetrics | None = None,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._store = store
        self._blobs = blobs
        self._blob_quota = blob_quota
        #: Where the savings records go (the usage ledger); None: not recorded.
        self._usage = usage
        self._inline_max = inline_result_max_bytes
        self._cache = ResultCache(store, blobs, inline_max_bytes=inline_result_max_bytes)
        self.hot = HotResults(settings.hot_cache_entries, settings.hot_cache_max_bytes)
        self._flights: SingleFlight[Outcome[Any]] = SingleFlight()
        #: Flight key -> the job its leader joined (for pending answers of its callers).
        self._jobs: dict[bytes, Job] = {}
        self._background: set[asyncio.Task[None]] = set()
        #: Job id -> the lease of the attempt this replica runs for it.
        self._leases: dict[str, HeldLease] = {}
        #: Set once the replica stops (`shutting_down`): work cut short is handed back, and
        #: open WatchJob streams end for their clients to resume elsewhere.
        self.draining = asyncio.Event()
        self._last_fallback_log = -FALLBACK_LOG_INTERVAL_S
        self.worker_id = worker_id or default_worker_id()
        self.stats = ExecutionStats()

    @property
    def store(self) -> Store:
        """The store behind the cache and the jobs."""
        return self._store

    @property
    def lease_s(self) -> float:
        """The lease its runners take on an execution (extended every third of it)."""
        return self._settings.lease_s

    @property
    def max_attempts(self) -> int:
        """Attempts a new execution gets; a re-driven dead letter gets as many more."""
        return self._settings.max_attempts

    # -- the request path --------------------------------------------------------------------

    async def execute(self, call: Call) -> Outcome[Any] | Pending:
        """The answer to one request (see the module docstring); an answer that took work
        someone else paid for is recorded as a saving.

        Raises the operation's domain errors (the same for every caller sharing the work), and
        `Unavailable` when the store is needed and cannot answer.
        """
        answer = await self._answer(call)
        if isinstance(answer, Outcome) and (answer.cached or answer.coalesced):
            await self._record_saving(call.spec.name, call.user_id, call.request_id, answer)
        return answer

    async def hot_answer(
        self, operation: str, key: bytes, user_id: str, request_id: str = ""
    ) -> Outcome[Any] | None:
        """The answer `execute` gives a call of `operation` with cache key `key` that the hot
        copy holds (its saving recorded), or None when the hot copy has no entry: the request
        path's first look, before it builds the `Call` a miss needs."""
        answer = self._hot_hit(operation, key)
        if answer is not None:
            await self._record_saving(operation, user_id, request_id, answer)
        return answer

    def _hot_hit(self, operation: str, key: bytes) -> Outcome[Any] | None:
        """The hot copy's entry for `key` as a cache hit (counted), or None."""
        entry = self.hot.get(key)
        if entry is None:
            return None
        self.stats.hot_hits += 1
        if self._metrics is not None:
            self._metrics.of(operation).hot_hits.inc()
        tracing.annotate("viewbait.cache", "hot_hit")
        return Outcome(
            entry.result,
            entry.model,
            Spend(),
            cached=True,
            views=entry.views,
            saved_usd=entry.cost_usd,
        )

    async def _answer(self, call: Call) -> Outcome[Any] | Pending:
        if call.key is not None:
            key = call.key
            hit = self._hot_hit(call.spec.name, key)
            if hit is not None:
                return hit
            # Concurrent misses share one store lookup too, not only the work behind it.
            answer = await self._share(call, key, lambda: self._look_up_or_coalesce(call, key))
            if self._metrics is not None and isinstance(answer, Outcome):
                self._metrics.answered(
                    call.spec.name, cached=answer.cached, coalesced=answer.coalesced
                )
            return answer
        if call.idempotency_key is not None:
            # The job row is built once: its request hash keys the flight, and the flight's
            # work inserts it (no second encoding and hash of the request).
            new = self._new_job(call)
            assert new.request_hash is not None
            flight_key = idempotency_flight_key(
                call.user_id, call.idempotency_key, new.request_hash
            )
            return await self._share(
                call, flight_key, lambda: self._coalesce(call, flight_key, new)
            )
        return await call.run(None, self._run_deadline(call.deadline), Spend())

    async def _record_saving(
        self,
        operation: str,
        user_id: str,
        request_id: str,
        outcome: Outcome[Any],
        job_id: str = "",
    ) -> None:
        """Records in the usage ledger an answer that took its result from the cache, or from
        work another caller paid for: no tokens, no cost, and what that work cost as saved."""
        if self._usage is None:
            return
        await self._usage.record(
            UsageRecord(
                labels=CallLabels(operation, user_id, job_id, request_id),
                # The model as the ledger's upstream rows name it (emulated answers are marked
                # apart in cache keys and metadata, not in the ledger).
                model=outcome.model.removeprefix(EMULATOR_MODEL_PREFIX),
                attempt=0,
                outcome=CACHE_HIT if outcome.cached else COALESCED,
                duration_s=0.0,
                usage=_NO_TOKENS,
                saved_usd=outcome.saved_usd,
            )
        )

    async def _look_up_or_coalesce(self, call: Call, key: bytes) -> Outcome[Any]:
        """This replica's shared work for a cacheable request: the store's cache entry, or the
        execution behind a miss."""
        try:
            hit = await self._stored(call, key)
        except errors.Unavailable as exc:
            tracing.annotate("viewbait.cache", "store_unavailable")
            return await self._without_store(call, exc)
        if hit is not None:
            tracing.annotate("viewbait.cache", "store_hit")
            return hit
        self.stats.misses += 1
        tracing.annotate("viewbait.cache", "miss")
        return await self._coalesce(call, key)

    async def cached(self, call: Call) -> Outcome[Any] | None:
        """The cached result of a cacheable call (the hot copy, then the store), or None; a
        store that cannot answer counts as a miss. For work about to be paid for elsewhere
        (a batch), as a runner re-checks the cache before its call."""
        if call.key is None:
            return None
        entry = self.hot.get(call.key)
        if entry is not None:
            self.stats.hot_hits += 1
            return Outcome(entry.result, entry.model, Spend(), cached=True, views=entry.views)
        try:
            return await self._stored(call, call.key)
        except errors.Unavailable:
            return None

    async def _stored(self, call: Call, key: bytes) -> Outcome[Any] | None:
        """The store's cache entry for `key` (copied into the hot copy), or None."""
        hit = await self._look_up(call, key)
        if hit is None:
            return None
        self.stats.store_hits += 1
        remaining = (hit.entry.expires_at - datetime.now(UTC)).total_seconds()
        self.hot.put(
            key,
            hit.result,
            hit.entry.model,
            expires=time.monotonic() + remaining,
            size=hit.encoded.size,
            cost_usd=hit.entry.cost_usd,
        )
        return Outcome(
            hit.result, hit.entry.model, Spend(), cached=True, saved_usd=hit.entry.cost_usd
        )

    async def _look_up(self, call: Call, key: bytes) -> CacheHit[Any] | None:
        """The store's cache entry for `key`, or None (a span of its own)."""
        with tracing.leaf("cache.lookup", {"viewbait.operation": call.spec.name}) as span:
            hit = await self._cache.get(call.spec, key)
            span.set_attribute("viewbait.cache", "miss" if hit is None else "store_hit")
            return hit

    async def _share(
        self, call: Call, flight_key: bytes, work: Callable[[], Awaitable[Outcome[Any]]]
    ) -> Outcome[Any] | Pending:
        """Waits for this replica's one piece of work for `flight_key` (up to the long-poll
        window for unary callers, then a pending handle)."""
        try:
            outcome, joined = await self._flights.do(
                flight_key,
                work,
                wait_s=self._window(call),
                keep=call.idempotency_key is not None,
            )
        except TimeoutError:
            return await self._pending(call, flight_key)
        except errors.BudgetExceeded as exc:
            if exc.user_id is None or exc.user_id == call.user_id:
                raise
            # Another user's budget refused the work this caller joined (shared, global-scope
            # work runs on its starter's budgets): this caller's own budgets decide afresh.
            return await self._share(call, flight_key, work)
        if joined:
            tracing.annotate("viewbait.coalesced", True)
            return dataclasses.replace(
                outcome, spend=Spend(), coalesced=True, saved_usd=outcome.result_cost_usd
            )
        return outcome

    def _window(self, call: Call) -> float | None:
        if not call.long_poll:
            return None
        window = self._settings.long_poll_s
        if call.deadline is not None:
            remaining = call.deadline - time.monotonic()
            window = min(window, remaining - min(ANSWER_MARGIN_S, remaining / 4))
        return max(window, 0.0)

    async def _pending(self, call: Call, flight_key: bytes) -> Pending:
        """The caller's own handle on the work it stopped waiting for."""
        self.stats.pending += 1
        if self._metrics is not None:
            self._metrics.of(call.spec.name).pending.inc()
        job = self._jobs.get(flight_key)
        if job is None or job.user_id != call.user_id:
            # Another user's flight on a shared execution (or the join is still under way):
            # this caller gets a handle of its own.
            joined = await self._store.join_or_create_active_job(self._new_job(call))
            job = joined.job
            if joined.created:
                # The execution finished just now, so this made a new one nobody would run.
                await self._store.cancel_job(job.id, call.user_id)
                raise errors.Unavailable(
                    "the result was being stored while this request stopped waiting; ask again",
                    retry_after_s=0.1,
                )
        return Pending(job.id, job.status, job.progress)

    # -- coalescing across replicas ----------------------------------------------------------

    async def _coalesce(
        self, call: Call, flight_key: bytes, new_job: NewJob | None = None
    ) -> Outcome[Any]:
        """This replica's shared work for a key: join or create the active execution and see it
        through (run it, or follow whoever runs it). `new_job`: the call's job row, when the
        caller built it already (`_new_job`)."""
        # This replica claims what it creates at once: the row is held from every replica's
        # job workers for one lease (they would race it for the claim, and find no input: the
        # images are written when the run has passed its upstream limits).
        new = dataclasses.replace(new_job or self._new_job(call), hold_s=self._settings.lease_s)
        # Its images are written once the run has passed the upstream limits (whichever
        # replica runs it: a waiter that takes over writes them itself).
        images = codec.collect_blobs(call.request)
        call.inputs.arm((lambda: self._put_inputs(call.user_id, images)) if images else None)
        try:
            for _ in range(MAX_EXECUTIONS):
                try:
                    joined = await self._join(call, new)
                except errors.Unavailable as exc:
                    return await self._without_store(call, exc)
                self._jobs[flight_key] = joined.job
                outcome = await self._see_through(
                    call, joined.job, claim=joined.created, flight_key=flight_key
                )
                if outcome is not None:
                    return outcome
        finally:
            self._jobs.pop(flight_key, None)
        raise errors.Unavailable(
            "the work for this request was abandoned several times in a row; retry", retry_after_s=1
        )

    async def _join(self, call: Call, new: NewJob) -> JoinOutcome:
        """Joins or creates the active job of `new` (a span of its own: the coalescing)."""
        with tracing.leaf("coalesce", {"viewbait.operation": call.spec.name}) as span:
            joined = await self._store.join_or_create_active_job(new)
            span.set_attribute("viewbait.job_id", joined.job.id)
            span.set_attribute("viewbait.job_created", joined.created)
            return joined

    async def _put_inputs(self, user_id: str, images: dict[bytes, bytes]) -> None:
        """Writes a request's images, after charging them to the user's blob write limit."""
        with tracing.leaf("store.put_inputs", {"viewbait.blobs": len(images)}):
            if self._blob_quota is not None:
                await self._blob_quota(user_id, sum(len(data) for data in images.values()))
            await asyncio.gather(
                *(self._blobs.put(data, digest) for digest, data in images.items())
            )

    def _new_job(self, call: Call) -> NewJob:
        """The job row for a request (its images as references; the caller writes them)."""
        text = codec.to_json(call.request)
        images = codec.collect_blobs(call.request)
        traceparent, tracestate = tracing.current_traceparent()
        return NewJob(
            user_id=call.user_id,
            op=call.spec.name,
            input_json=text,
            input_blobs=tuple(sorted(images)),
            dedupe_key=call.key,
            shared=call.key is not None and call.scope is Scope.GLOBAL,
            idempotency_key=call.idempotency_key,
            request_hash=_request_hash(call, text),
            model=call.model,
            priority=call.priority,
            max_attempts=self._settings.max_attempts,
            delivery=call.delivery,
            traceparent=traceparent,
            tracestate=tracestate,
        )

    async def _see_through(
        self, call: Call, job: Job, *, claim: bool, flight_key: bytes
    ) -> Outcome[Any] | None:
        """The outcome of the caller's job: runs the execution when this replica may claim it
        (it created it, it is queued, or its runner's lease lapsed), else follows it. The
        flight's view of the job is kept current for pending answers.

        Returns None when the execution was abandoned and a new one should be started.
        """
        # The caller created it (held for it): its first claim comes before it is due.
        held = claim
        while True:
            self._jobs[flight_key] = job
            if not job.active:
                return await self._finished(call, job)
            if claim or job.status is JobStatus.QUEUED:
                try:
                    with tracing.leaf("job.claim", {"viewbait.job_id": job.execution_id}) as span:
                        claimed = await self._store.claim_job(
                            job.execution_id, self.worker_id, self._settings.lease_s, held=held
                        )
                        span.set_attribute("viewbait.claimed", claimed is not None)
                except errors.Unavailable as exc:
                    return await self._without_store(call, exc)
                held = False
                if claimed is not None:
                    if not claim or claimed.attempts > 1:
                        self.stats.takeovers += 1
                    # The caller's own row (a handle, for shared work) now shows it running.
                    self._jobs[flight_key] = dataclasses.replace(
                        job, status=claimed.status, attempts=claimed.attempts
                    )
                    return await self._run(call, claimed)
            seq = job.event_seq
            try:
                with tracing.leaf("job.wait", {"viewbait.job_id": job.execution_id}):
                    job = await self._store.wait_for_job_change(
                        job.id, call.user_id, seq, self._settings.lease_s / 2
                    )
            except errors.NotFound:
                return None
            except errors.Unavailable as exc:
                return await self._without_store(call, exc)
            # A quiet wait may mean the runner is gone: try to take over (it succeeds only once
            # the lease has lapsed).
            claim = job.event_seq == seq

    async def _finished(self, call: Call, job: Job) -> Outcome[Any] | None:
        """The answer a finished job gives this caller; None to start a new execution."""
        if job.status is JobStatus.SUCCEEDED and job.result is not None:
            try:
                result = await load_result(call.spec, job.result, self._blobs)
            except (BlobError, codec.DecodeError) as exc:
                log.warning("the result of job %s is unusable (%s)", job.id, exc)
                if call.idempotency_key is not None:
                    raise errors.Internal(
                        "the stored result of this request cannot be read; "
                        "send it again with a new idempotency key"
                    ) from None
                return None
            self.stats.followed += 1
            return Outcome(
                result, job.model, Spend(), coalesced=True, saved_usd=job.result_cost_usd
            )
        abandoned = job.status is JobStatus.FAILED and job.error == ABANDONED
        if abandoned and call.idempotency_key is None:
            return None
        if job.status is JobStatus.FAILED and job.error is not None:
            raise job.error.to_exception()
        raise errors.Cancelled(f"job {job.id} was cancelled")

    # -- running an execution ----------------------------------------------------------------

    async def run_claimed(
        self, call: Call, execution: Job, retry_delay: RetryPolicy
    ) -> Outcome[Any] | None:
        """Runs an execution a job worker claimed (`execution.claim`, held by `worker_id`)
        exactly as an inline runner would: cache re-check, heartbeats, result stored and the job
        completed.

        A failed attempt is queued again as `retry_delay(execution, error)` says, or fails for
        good when that is None (or no attempts are left). Raises what the work raised; None when
        the lease was lost (cancelled, taken over), which `HeldLease` has reported already. An
        execution completed from the cache is recorded as a saving of its user.
        """
        outcome = await self._run(call, execution, retry_delay, follow=False)
        if outcome is not None and outcome.cached:
            await self._record_saving(
                call.spec.name, call.user_id, call.request_id, outcome, execution.id
            )
        return outcome

    async def record_progress(self, claim: Claim, progress: JobProgress) -> None:
        """Records the progress of the attempt running under `claim` on this replica (nothing
        once it has ended); a refusal stops the attempt at once (`HeldLease.record_progress`)."""
        lease = self._leases.get(claim.job_id)
        if lease is not None and lease.claim == claim:
            await lease.record_progress(progress)

    async def enqueue(self, call: Call) -> JoinOutcome:
        """The caller's job for `call` without running it: an earlier one with its idempotency
        key, the active execution of its key (joined), or a new queued execution for the job
        workers. Its images are written first, after admission (a worker on any replica reads
        them)."""
        images = codec.collect_blobs(call.request)
        if images:
            await self._put_inputs(call.user_id, images)
        return await self._join(call, self._new_job(call))

    async def _run(
        self,
        call: Call,
        execution: Job,
        retry_delay: RetryPolicy | None = None,
        *,
        follow: bool = True,
    ) -> Outcome[Any] | None:
        """Runs an execution this replica holds the lease on; None to start a new one.

        A failed attempt is final unless `retry_delay` gives a delay for it. When the lease is
        lost (`HeldLease`) the work stops at once and whatever it produces is discarded;
        `follow`: the caller then gets the execution's own end, if it ended (else None)."""
        claim = execution.claim
        # A claim that found no cache entry spares the lookup (`Job.result_cached`).
        if call.key is not None and execution.result_cached is not False:
            try:
                hit = await self._recheck(call, call.key)
            except asyncio.CancelledError:
                # Claimed but not started: a stop now must not leave the job running.
                self.hand_back(claim)
                raise
            if hit is not None:
                # The result is cached already: only the execution is completed with it.
                cost = hit.entry.cost_usd
                write = self._write(
                    call, claim, hit.encoded, hit.entry.model, cache=False, cached=True, cost=cost
                )
                self._spawn(write)
                return Outcome(hit.result, hit.entry.model, Spend(), cached=True, saved_usd=cost)
        self.stats.runs += 1
        # This run's upstream spend, known even when it fails (its execution keeps it).
        spend = Spend()
        lease = HeldLease(self._store, claim, self._settings.lease_s, execution.event_seq)
        # The work outlives its callers (any of them may leave): its own deadline bounds it.
        work = asyncio.ensure_future(call.run(claim, self._run_deadline(), spend))
        lease.attach(work)
        self._leases[claim.job_id] = lease
        keeper = asyncio.ensure_future(lease.keep())
        try:
            outcome = await work
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if lease.lost is not None and (current is None or current.cancelling() == 0):
                # The lease went, not the caller: see where the execution went.
                return await self._after_loss(call, lease.lost, follow)
            self._spawn(self._release(claim, call.inputs, spend))
            raise
        except Exception as exc:
            if lease.lost is not None:
                return await self._after_loss(call, lease.lost, follow)
            retry = None if retry_delay is None else retry_delay(execution, exc)
            error = JobError.from_exception(exc)
            if retry is not None and not retry.counted:
                settle = self._settle(
                    claim, error, retry_after_s=retry.delay_s, defer=True, spend=spend
                )
            else:
                delay = None if retry is None else retry.delay_s
                settle = self._settle(claim, error, retry_after_s=delay, spend=spend)
            self._spawn(settle)
            raise
        finally:
            keeper.cancel()
            if self._leases.get(claim.job_id) is lease:
                del self._leases[claim.job_id]
            lease.ended.set_result(None)
        if lease.lost is not None:
            # The answer came after the lease was lost: it is thrown away, never written.
            return await self._after_loss(call, lease.lost, follow)
        self._keep(call, claim, outcome)
        return outcome

    async def _recheck(self, call: Call, key: bytes) -> CacheHit[Any] | None:
        """The cache, read again by the runner before it pays for the work."""
        try:
            return await self._look_up(call, key)
        except errors.Unavailable:
            return None

    async def _after_loss(self, call: Call, lost: LeaseLost, follow: bool) -> Outcome[Any] | None:
        """After the lease went: with `follow`, the execution's end if it ended; else None
        (to join anew, or for a job worker: nothing more to do)."""
        job = lost.job
        if not follow or job is None or job.active:
            return None
        return await self._finished(call, job)

    async def keep_for(self, call: Call, claim: Claim, outcome: Outcome[Any]) -> None:
        """Keeps a result produced outside this executor's runs (a batch's line) exactly as
        a run's: cached (fresh) or only stored (`outcome.cached`), and its execution completed
        under `claim` (its batch's); returns once written. `LeaseLost` when that claim is no
        longer current (cancelled meanwhile): nothing of it is cached then either."""
        encoded = EncodedResult.of(call.spec, outcome.result)
        await self._write(
            call,
            claim,
            encoded,
            outcome.model,
            cache=not outcome.cached,
            spend=outcome.spend,
            cost=outcome.result_cost_usd,
            cached=outcome.cached,
            external=True,
        )

    def _keep(self, call: Call, claim: Claim | None, outcome: Outcome[Any]) -> None:
        """Keeps a fresh result, the one way results are cached: encoded once, into the hot copy
        at once (the next request on this replica hits it), then in the background its blobs,
        its cache row and the completion of its execution (under `claim`; None for a run
        without the store)."""
        encoded = EncodedResult.of(call.spec, outcome.result)
        cost = outcome.result_cost_usd
        if call.key is not None and call.ttl_s > 0:
            self.hot.put(
                call.key,
                outcome.result,
                outcome.model,
                expires=time.monotonic() + call.ttl_s,
                size=encoded.size,
                cost_usd=cost,
            )
        write = self._write(
            call, claim, encoded, outcome.model, cache=True, spend=outcome.spend, cost=cost
        )
        self._spawn(write)

    async def _write(
        self,
        call: Call,
        claim: Claim | None,
        encoded: EncodedResult,
        model: str,
        *,
        cache: bool,
        cost: float,
        spend: Spend | None = None,
        cached: bool = False,
        external: bool = False,
    ) -> None:
        """Stores a result (blobs, the cache row when `cache`) and completes its execution under
        `claim` with what its run spent (`spend`), whether the result came from the cache
        (`cached`) and what the work behind it cost (`cost`), which wakes every waiter. Runs
        after the callers have their answer; a failed write costs at most a later
        recomputation. Every row is written under the claim: one lost meanwhile writes nothing,
        and the hot copy forgets the result (its blobs, stored already, are referenced by no
        row and collected). `external`: the claim is not this executor's (a batch's), whose
        holder hears of a lost claim (`LeaseLost`) and of a store that did not answer
        (`Unavailable`), to try again."""
        try:
            await self._store_result(
                call, claim, encoded, model, cache=cache, cost=cost, spend=spend, cached=cached
            )
        except LeaseLost as lost:
            if cache and call.key is not None:
                self.hot.discard(call.key)
            if external:
                raise
            report_loss(lost, answered=True)
        except errors.Unavailable as exc:
            self.stats.write_failures += 1
            if external:
                raise
            if claim is not None:
                log.warning(
                    "the result of job %s was not stored (%s); its lease will lapse and the "
                    "next request recomputes it",
                    claim.job_id,
                    exc.message,
                )

    async def _store_result(
        self,
        call: Call,
        claim: Claim | None,
        encoded: EncodedResult,
        model: str,
        *,
        cache: bool,
        cost: float,
        spend: Spend | None,
        cached: bool,
    ) -> None:
        """The writes of `_write`, under a span of their own."""
        attributes: tracing.Attributes = {
            "viewbait.operation": call.spec.name,
            "viewbait.cache_write": cache,
        }
        with tracing.leaf("store.write", attributes) as span:
            if claim is not None:
                span.set_attribute("viewbait.job_id", claim.job_id)
            if cache and call.key is not None and call.ttl_s > 0:
                ref = await self._cache.put(
                    call.spec,
                    call.key,
                    encoded,
                    scope=call.scope.value,
                    model=model,
                    ttl_s=call.ttl_s,
                    cost_usd=cost,
                    claim=claim,
                )
            else:
                ref = await save_result(encoded, self._blobs, self._inline_max)
            if claim is not None:
                await self._store.complete_job(
                    claim,
                    ref,
                    spend=job_spend(spend),
                    cached=cached,
                    result_cost_usd=cost,
                )

    def hand_back(self, claim: Claim) -> None:
        """A claimed execution whose work never started: at shutdown it is re-queued without
        counting the attempt its claim charged (nothing ran); otherwise it ends as abandoned.
        In the background, like every job write."""
        if self.draining.is_set():
            self._spawn(self._settle(claim, RELEASED, retry_after_s=0.0, defer=True))
        else:
            self._spawn(self._release(claim))

    async def _release(
        self, claim: Claim, inputs: InputWrite | None = None, spend: Spend | None = None
    ) -> None:
        """The work was cancelled: at shutdown the execution is re-queued for another replica
        (its input images written first, for that replica's worker to read); otherwise nobody
        waited for it, and it ends as abandoned. Either way it keeps what the run spent."""
        if self.draining.is_set():
            try:
                if inputs is not None:
                    await inputs()
            except errors.GatewayError as exc:
                log.warning(
                    "job %s ends as abandoned: its input was not stored (%s)", claim.job_id, exc
                )
            else:
                await self._settle(claim, RELEASED, retry_after_s=0.0, spend=spend)
                return
        await self._settle(claim, ABANDONED, retry_after_s=None, spend=spend)

    async def _settle(
        self,
        claim: Claim,
        error: JobError,
        *,
        retry_after_s: float | None,
        defer: bool = False,
        spend: Spend | None = None,
    ) -> None:
        """Records a failed attempt and what it spent (queued again after `retry_after_s` when
        not None; with `defer`, without counting it), so waiters get the same error."""
        spent = job_spend(spend)
        try:
            if defer and retry_after_s is not None:
                await self._store.defer_job(claim, error, retry_after_s, spend=spent)
            else:
                await self._store.fail_job(claim, error, retry_after_s=retry_after_s, spend=spent)
        except LeaseLost:
            pass  # already finished, cancelled or taken over: nothing of ours to record
        except errors.Unavailable as exc:
            log.warning(
                "could not record the end of job %s (%s); its lease will lapse",
                claim.job_id,
                exc.message,
            )

    # -- without the store -------------------------------------------------------------------

    async def _without_store(self, call: Call, exc: errors.Unavailable) -> Outcome[Any]:
        """Runs a cacheable request uncached while the store is down, if that is allowed."""
        if call.key is None or not self._settings.run_uncached_on_store_failure:
            raise exc
        now = time.monotonic()
        if now - self._last_fallback_log >= FALLBACK_LOG_INTERVAL_S:
            self._last_fallback_log = now
            log.warning("store unavailable, running requests uncached: %s", exc.message)
        self.stats.uncached += 1
        # No job row refers to the images: nothing to write.
        call.inputs.arm(None)
        outcome = await call.run(None, self._run_deadline(), Spend())
        self._keep(call, None, outcome)
        return outcome

    def _run_deadline(self, caller: float | None = None) -> float:
        """The deadline of a run starting now: `run_timeout_s` from now, or the caller's
        (`time.monotonic()`) when that is sooner and the run is the caller's alone."""
        own = time.monotonic() + self._settings.run_timeout_s
        return own if caller is None else min(caller, own)

    # -- lifecycle ---------------------------------------------------------------------------

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._landed)

    def _landed(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background store write failed", exc_info=task.exception())

    async def flush(self) -> None:
        """Waits until the result writes and job updates under way have finished, those of
        attempts whose work ended or was cancelled and is still winding down included."""
        while True:
            ending = {lease.ended for lease in self._leases.values() if lease.ending}
            if not self._background and not ending:
                return
            await asyncio.wait(set(self._background) | ending)

    def shutting_down(self) -> None:
        """From now on, an execution whose work is cancelled (its RPC cut short by the shutdown)
        is handed back, re-queued for another replica, instead of ending as abandoned."""
        self.draining.set()

    async def aclose(self) -> None:
        """Stops: work still in flight (kept work included) is cancelled and its executions
        re-queued for other replicas; pending writes get `CLOSE_TIMEOUT_S` to finish."""
        self.draining.set()
        await asyncio.gather(*self._flights.cancel_all(), return_exceptions=True)
        if self._background:
            await asyncio.wait(set(self._background), timeout=CLOSE_TIMEOUT_S)


__all__ = [
    "ABANDONED",
    "ExecutionStats",
    "Executor",
    "default_worker_id",
    "idempotency_flight_key",
]
