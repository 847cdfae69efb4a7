"""The job service: what JobService's RPCs mean, without the wire.

Submitting goes through the pipeline (the same checks as an inline request) and wakes this
replica's workers; every read (GetJob, ListJobs, WatchJob, CancelJob) first passes the caller's
rate limit on it (`Settings.read_limits`), is scoped to the caller (another user's job is as
missing as a job that never was), and a succeeded job is answered with its result read back
from the store.
Retrying re-drives a dead letter (`JobStore.retry_job`): the owner's own job, or any user's for
the trusted backend (the service token). The gRPC servicer (`gateway.rpc.job_service`) only
converts messages and calls this.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway import errors, operations
from gateway.auth import Principal
from gateway.execution.result_cache import load_result
from gateway.operations import codec
from gateway.store.base import Delivery, Job, JobCursor, JobFilter, JobStatus, JobStore
from gateway.store.blobs import BlobError, BlobStore
from gateway.tasks import settle

if TYPE_CHECKING:
    # Only a type here: the pipeline imports the job priorities of this package (and so this
    # module imports the execution package's modules, never the package itself).
    from gateway.execution.pipeline import Pipeline
    from gateway.limiter import RateLimiter

#: How long one store wait of a watch lasts before it looks again (a quiet job).
WATCH_WAIT_S = 30.0


@dataclass(frozen=True, slots=True)
class JobView:
    """A job as its owner sees it: the row, and its decoded result when asked for and ready."""

    job: Job
    result: Any | None = None


@dataclass(frozen=True, slots=True)
class Submitted:
    """The caller's job after a submit; `existing`: the caller already had it (the same
    idempotency key, or her own active job for the same request)."""

    view: JobView
    existing: bool


@dataclass(frozen=True, slots=True)
class Retried:
    """The caller's job after a retry; `retried`: the retry brought it back (False: there was
    nothing to retry, it is queued, running or succeeded)."""

    view: JobView
    retried: bool


@dataclass(frozen=True, slots=True)
class JobPage:
    """One page of a caller's jobs, newest first; `next_after` starts the next page (None: this
    is the last)."""

    jobs: list[Job]
    next_after: JobCursor | None


class JobService:
    """Background jobs for authenticated callers, over the pipeline's job store.

    `on_submit` is called when a submit queued a new job (the local workers' wake-up);
    `limiter` enforces the read limits (None: reads are not limited).
    """

    def __init__(
        self,
        pipeline: Pipeline,
        blobs: BlobStore,
        on_submit: Callable[[], None] | None = None,
        limiter: RateLimiter | None = None,
    ) -> None:
        executor = pipeline.executor
        self._pipeline = pipeline
        self._store: JobStore = executor.store
        self._blobs = blobs
        self._on_submit = on_submit
        self._limiter = limiter
        self._attempt_budget = executor.max_attempts
        #: Set when the replica starts draining: watches end at once with `Unavailable` (to be
        #: resumed on another replica) instead of holding the drain for its whole grace.
        self._draining = executor.draining

    async def submit(
        self,
        operation: str,
        request: Any,
        principal: Principal,
        *,
        idempotency_key: str = "",
        delivery: Delivery = Delivery.INTERACTIVE,
    ) -> Submitted:
        """Queues `request` as a job of `principal` (or returns the job it joins or repeats),
        after the same checks as an RPC's (`Pipeline.prepare`, then admission), for the job
        workers or (`delivery` BATCH, text operations only) for the batchers."""
        if delivery is Delivery.BATCH and not operations.get(operation).batchable:
            batchable = ", ".join(
                sorted(name for name, spec in operations.OPERATIONS.items() if spec.batchable)
            )
            raise errors.InvalidArgument.field(
                "delivery",
                f"batch delivery is for the text operations ({batchable}); {operation} cannot "
                "be batched: submit it for interactive delivery",
            )
        prepared = self._pipeline.prepare(
            operation, request, principal, idempotency_key=idempotency_key
        )
        joined = await self._pipeline.submit(prepared, delivery=delivery)
        if joined.created and self._on_submit is not None:
            self._on_submit()
        return Submitted(await self._view(joined.job), joined.existing)

    async def _admit_read(self, rpc: str, caller: Principal) -> None:
        """Charges a read to the caller's limit on it; raises `RateLimited` when denied."""
        if self._limiter is not None:
            await self._limiter.admit_read(rpc, caller.user_id, caller.tier)

    async def get(self, job_id: str, caller: Principal) -> JobView:
        """The caller's job with its result; `NotFound` for anyone else's."""
        await self._admit_read("get_job", caller)
        return await self._view(await self._store.get_job(job_id, caller.user_id))

    async def cancel(self, job_id: str, caller: Principal) -> JobView:
        """Cancels the caller's job (a finished one is answered as it is)."""
        await self._admit_read("cancel_job", caller)
        return await self._view(await self._store.cancel_job(job_id, caller.user_id))

    async def retry(self, job_id: str, principal: Principal) -> Retried:
        """Re-drives the job if it is a dead letter, with a fresh attempt budget, and wakes this
        replica's workers. The service token may retry any user's job; a user her own only."""
        owner = None if principal.via == "service" else principal.user_id
        redrive = await self._store.retry_job(job_id, owner, self._attempt_budget)
        if redrive.redriven and redrive.job.active and self._on_submit is not None:
            self._on_submit()
        return Retried(await self._view(redrive.job), redrive.redriven)

    async def watch(
        self, job_id: str, caller: Principal, after_sequence: int
    ) -> AsyncIterator[tuple[int, JobView]]:
        """(sequence, job) for every change of the caller's job after `after_sequence`, the
        result with the last; ends when the job does, or with `Unavailable` once this replica
        drains."""
        await self._admit_read("watch_job", caller)
        user_id = caller.user_id
        seen = after_sequence
        job = await self._store.get_job(job_id, user_id)
        while True:
            if job.event_seq > seen:
                seen = job.event_seq
                yield seen, await self._view(job, with_result=not job.active)
            if not job.active:
                return
            job = await self._wait_unless_draining(job_id, user_id, seen)

    async def page(
        self, caller: Principal, which: JobFilter, size: int, after: JobCursor | None
    ) -> JobPage:
        """Up to `size` of the caller's jobs that `which` selects, after `after`."""
        await self._admit_read("list_jobs", caller)
        # One more than asked tells whether another page follows.
        jobs = await self._store.list_jobs(caller.user_id, which, size + 1, after)
        page = jobs[:size]
        following = None
        if len(jobs) > size:
            following = JobCursor(page[-1].created_at, page[-1].id)
        return JobPage(page, following)

    async def _view(self, job: Job, *, with_result: bool = True) -> JobView:
        """The job with its decoded result when it succeeded and `with_result`."""
        result = None
        if with_result and job.status is JobStatus.SUCCEEDED and job.result is not None:
            try:
                result = await load_result(operations.get(job.op), job.result, self._blobs)
            except (BlobError, codec.DecodeError) as exc:
                raise errors.Internal(
                    f"the stored result of job {job.id} cannot be read ({type(exc).__name__})"
                ) from None
        return JobView(job, result)

    async def _wait_unless_draining(self, job_id: str, user_id: str, seen: int) -> Job:
        """The job's next change, or `Unavailable` once this replica drains."""
        if not self._draining.is_set():
            change = asyncio.ensure_future(
                self._store.wait_for_job_change(job_id, user_id, seen, WATCH_WAIT_S)
            )
            draining = asyncio.ensure_future(self._draining.wait())
            try:
                await asyncio.wait((change, draining), return_when=asyncio.FIRST_COMPLETED)
            except BaseException:  # the watch was cancelled: end both, retrieve their outcomes
                await settle(change, draining)
                raise
            await settle(draining)
            if change.done():
                return change.result()
            await settle(change)
        raise errors.Unavailable(
            f"this gateway replica is shutting down; watch job {job_id} again after sequence "
            f"{seen} (another replica serves it)",
            retry_after_s=0.0,
        )
