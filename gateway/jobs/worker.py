"""The job workers every replica runs: claim due jobs in batches, run each through the same
execution machinery as an inline request (`Executor.run_claimed`: cache re-check, lease kept by
heartbeat, result stored, waiters woken), and retry failed attempts with backoff.

A job's row holds its validated request (images as blob references), its owner and its
priority; that is all a worker needs to run it on any replica. A shared execution (global
scope) has no owner: it runs as the user whose request started it (`Job.charged_user`), on her
upstream limits and at her priority; users joining it later cost nothing. Only a shared
execution from before starters were recorded runs as `SHARED_USER`.

Retries: a retryable error (upstream 503 or 429, a deadline, a bad answer) queues the job again
after full-jitter backoff, never earlier than the upstream's own retry delay; anything else, or
the last attempt, fails it for good with the sanitized error. A denial by the gateway's own
upstream rate limits (before anything is spent) delays the job by its retry-after without
counting the attempt. A cancelled job
is never retried: its worker learns of the cancel at its next heartbeat and stops.

Per-user caps: a user runs at most `JobSettings.running_caps[tier]` jobs at once across all
replicas; `claim_batch` leaves her further jobs queued. A shared execution counts against the
user who started it, and only her: one user cannot fill every worker with heatmaps nobody else
asked for, while a later user joining it (a handle) is never held back by it, and a handle's
cancel changes nobody's count.

Shutdown: the executor is told first (`Executor.shutting_down`), so the attempts cut short
here are handed back queued for another replica, not failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
from typing import Any, Protocol

from gateway import errors, operations
from gateway.auth import Principal
from gateway.backoff import next_delay
from gateway.config import JobSettings, Tier
from gateway.execution import ABANDONED, Call, Pipeline, Retry
from gateway.execution.pipeline import tier_of_priority
from gateway.operations import codec
from gateway.operations.base import ProgressCallback, ProgressEvent, ProgressKind
from gateway.store.base import Job, JobError, JobProgress, JobStore, LeaseLost
from gateway.store.blobs import BlobError, BlobNotFound, BlobStore

log = logging.getLogger(__name__)

#: The user a shared execution runs as when its starter is not recorded (rows from before that).
SHARED_USER = "shared"


def retry_delay(
    settings: JobSettings, job: Job, error: BaseException, rng: random.Random | None = None
) -> Retry | None:
    """When `job` is tried again after its attempt raised `error`; None: it fails for good.

    A rate-limit denial (raised before the model call, so nothing was spent) only delays the
    job, by the limiter's retry-after, without counting the attempt.
    """
    if not isinstance(error, errors.GatewayError) or not error.retryable:
        return None
    if isinstance(error, errors.RateLimited):
        return Retry(error.retry_after_s or settings.retry_initial_s, counted=False)
    delay = next_delay(
        max(job.attempts, 1),
        initial_s=settings.retry_initial_s,
        max_s=settings.retry_max_s,
        server_delay_s=error.retry_after_s,
        rng=rng,
    )
    return Retry(delay)


class JobRunner(Protocol):
    """Runs one attempt of a claimed job and records its end in `store` (completed, failed,
    queued again); `WorkerPool` decides only what to claim and when."""

    @property
    def store(self) -> JobStore:
        """The job store claims are made in."""
        ...

    @property
    def worker_id(self) -> str:
        """The lease holder this replica's claims name."""
        ...

    @property
    def lease_s(self) -> float:
        """The lease a claim takes."""
        ...

    async def run(self, job: Job) -> None:
        """One attempt of `job`, claimed by `worker_id`."""
        ...

    def hand_back(self, job_id: str) -> None:
        """A claimed job whose attempt never started: give it back (in the background)."""
        ...


class WorkerPool:
    """Up to `JobSettings.workers` jobs of the store running at once on this replica."""

    def __init__(self, settings: JobSettings, runner: JobRunner) -> None:
        self._settings = settings
        self._runner = runner
        self._wake = asyncio.Event()
        self._running: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._asleep = False
        # Job rows keep their priority (the tier's rank), not their tier.
        self._caps = {
            priority: settings.running_caps[tier]
            for priority in range(len(Tier))
            if (tier := tier_of_priority(priority)) in settings.running_caps
        }
        #: Attempts this pool started (for metrics and tests).
        self.started = 0

    @property
    def busy(self) -> int:
        """Attempts under way on this replica."""
        return len(self._running)

    @property
    def idle(self) -> bool:
        """The claim loop sleeps with no wake-up pending: only a submit here, the store's due
        signal, a finished attempt or the poll will make it claim again (for tests)."""
        return self._asleep and not self._wake.is_set()

    def start(self) -> None:
        """Starts claiming (nothing happens with zero workers)."""
        if self._settings.workers > 0 and self._loop_task is None:
            self._loop_task = asyncio.create_task(self._claim_forever(), name="viewbait-jobs")

    def wake(self) -> None:
        """A job was queued on this replica: look for work now rather than at the next poll
        (the store's due signal does the same for jobs queued anywhere)."""
        self._wake.set()

    async def stop(self) -> None:
        """Stops claiming and cancels the attempts under way (the runner hands them back
        when the replica is shutting down)."""
        tasks = [t for t in (self._loop_task, *self._running) if t is not None]
        self._loop_task = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- claiming ----------------------------------------------------------------------------

    async def _claim_forever(self) -> None:
        store = self._runner.store
        # A job queued through any replica (or re-queued, deferred, retried) wakes this pool at
        # once; the poll is the fallback for lost notifications and for delayed retries.
        with store.subscribe_due(self._wake):
            await self._claim_loop()

    async def _claim_loop(self) -> None:
        settings = self._settings
        runner = self._runner
        while True:
            self._wake.clear()
            free = settings.workers - len(self._running)
            claimed: list[Job] = []
            if free > 0:
                claim = asyncio.ensure_future(
                    runner.store.claim_batch(
                        runner.worker_id,
                        min(free, settings.claim_batch),
                        runner.lease_s,
                        self._caps,
                    )
                )
                try:
                    claimed = await asyncio.shield(claim)
                except asyncio.CancelledError:
                    # Stopped mid-claim: the rows may be ours already. Hand them back rather
                    # than leave them running until their lease lapses.
                    with contextlib.suppress(Exception):
                        for job in await claim:
                            runner.hand_back(job.id)
                    raise
                except errors.Unavailable as exc:
                    log.warning("could not claim jobs: %s", exc.message)
                except Exception:
                    # A bug here must not silently end job processing on this replica.
                    log.exception("claiming jobs failed; trying again at the next poll")
                for job in claimed:
                    self._spawn(job)
            if claimed and len(claimed) == min(free, settings.claim_batch):
                continue  # a full batch: more may be due
            # Sleep until a submit, a free slot or the next poll.
            self._asleep = True
            try:
                # Not `asyncio.wait_for`: on Python 3.11 it swallows a cancellation that
                # lands as the event is set, which left `stop` waiting forever on a busy queue.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(settings.poll_interval_s):
                        await self._wake.wait()
            finally:
                self._asleep = False

    def _spawn(self, job: Job) -> None:
        self.started += 1
        task = asyncio.create_task(self._runner.run(job), name=f"viewbait-job-{job.id}")
        self._running.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._wake.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("job worker failed", exc_info=task.exception())


class OperationRunner:
    """Runs jobs as the operations they hold, through the same execution machinery as an
    inline request (`Executor.run_claimed`), with retries by `retry_delay`."""

    def __init__(
        self,
        settings: JobSettings,
        pipeline: Pipeline,
        blobs: BlobStore,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self._settings = settings
        self._pipeline = pipeline
        self._executor = pipeline.executor
        self._blobs = blobs
        self._rng = rng

    @property
    def store(self) -> JobStore:
        """See `JobRunner.store`."""
        return self._executor.store

    @property
    def worker_id(self) -> str:
        """See `JobRunner.worker_id`."""
        return self._executor.worker_id

    @property
    def lease_s(self) -> float:
        """See `JobRunner.lease_s`."""
        return self._executor.lease_s

    def hand_back(self, job_id: str) -> None:
        """See `JobRunner.hand_back` (`Executor.hand_back`)."""
        self._executor.hand_back(job_id)

    async def run(self, job: Job) -> None:
        """One attempt of a claimed job; its end is recorded in the store by the executor."""
        try:
            call = await self._call(job)
        except asyncio.CancelledError:
            # Stopped while reading the job's input: hand the claimed job back, not left running.
            self._executor.hand_back(job.id)
            raise
        except BlobNotFound as exc:
            # Only an inline execution whose replica stopped before its first model call has
            # a row without its input (queued jobs write theirs first): whoever still waits
            # for it holds the request, and starts the work anew on ABANDONED.
            log.warning("job %s has no stored input (%s); it ends as abandoned", job.id, exc)
            with contextlib.suppress(LeaseLost, errors.Unavailable):
                await self._executor.store.fail_job(job.id, self._executor.worker_id, ABANDONED)
            return
        except (BlobError, codec.DecodeError, KeyError) as exc:
            # The stored input cannot be read back: no retry can fix that.
            log.error("job %s has an unusable input: %s", job.id, exc)
            with contextlib.suppress(LeaseLost, errors.Unavailable):
                await self._executor.store.fail_job(
                    job.id,
                    self._executor.worker_id,
                    JobError(errors.Internal.reason, "the job's stored input cannot be read"),
                )
            return
        try:
            await self._executor.run_claimed(call, job, self._retry_delay)
        except errors.GatewayError as exc:
            log.info("attempt %d of job %s failed: %s", job.attempts, job.id, exc.reason)

    def _progress_recorder(self, job_id: str) -> ProgressCallback:
        """Records an attempt's steps on its job (an event for watchers). Streamed text is
        left out: one store write per chunk would cost more than it tells."""
        ready = 0
        # Variations run concurrently; one write at a time keeps the stored progress from
        # going backwards when two writes race on different connections.
        writing = asyncio.Lock()

        async def record(event: ProgressEvent) -> None:
            nonlocal ready
            if event.kind is ProgressKind.TEXT:
                return
            async with writing:
                if event.kind is ProgressKind.IMAGE_READY:
                    ready += 1
                    progress = JobProgress(
                        ready / event.total, "generating", f"{ready} of {event.total} images ready"
                    )
                else:
                    progress = JobProgress(
                        ready / event.total,
                        "generating",
                        f"generating image {event.index + 1} of {event.total}",
                    )
                try:
                    await self._executor.store.heartbeat_job(
                        job_id, self._executor.worker_id, self._executor.lease_s, progress
                    )
                except (LeaseLost, errors.Unavailable) as exc:
                    # The lease keeper stops the work when the lease is gone; progress is
                    # optional.
                    log.info("progress of job %s not recorded: %s", job_id, exc)

        return record

    def _retry_delay(self, job: Job, error: BaseException) -> Retry | None:
        return retry_delay(self._settings, job, error, self._rng)

    async def _call(self, job: Job) -> Call:
        """The executor's call for a stored job: its validated request read back, run as its
        owner (for a shared execution, the user who started it) at its tier."""
        spec = operations.get(job.op)
        contents = await asyncio.gather(*(self._blobs.get(d) for d in job.input_blobs))
        request: Any = codec.from_json(
            spec.request_type, job.input_json, dict(zip(job.input_blobs, contents, strict=True))
        )
        principal = Principal(
            user_id=job.charged_user or SHARED_USER,
            tier=tier_of_priority(job.priority),
            via="service",
        )
        call = self._pipeline.call(
            job.op,
            request,
            principal,
            request_id=f"job-{job.id}",
            progress=self._progress_recorder(job.id),
        )
        # The result is cached under the key the job was coalesced on.
        return dataclasses.replace(call, key=job.dedupe_key, long_poll=False)
