"""One attempt of a claimed job, run through the same execution machinery as an inline request
(`Executor.run_claimed`: cache re-check, lease kept by heartbeat, result stored, waiters woken),
and the retry policy of failed attempts.

A job's row holds its validated request (images as blob references), its owner and its
priority; that is all a worker needs to run it on any replica. A shared execution (global
scope) has no owner: it runs as the user whose request started it (`Job.charged_user`), on her
upstream limits and at her priority; users joining it later cost nothing. Only a shared
execution from before starters were recorded runs as `SHARED_USER`.

Retries: a retryable error (upstream 503 or 429, a deadline, a bad answer) queues the job again
after full-jitter backoff, never earlier than the upstream's own retry delay; anything else, or
the last attempt, fails it for good with the sanitized error. A denial by the gateway's own
upstream rate limits (before anything is spent) delays the job by its retry-after without
counting the attempt. A refusal by a spend budget fails the job for good, or with
`budgets.job_refusal` = `wait` delays it, uncounted, until the budget's period resets.
A cancelled job is never retried: its worker learns of the cancel at once (the job's change
notification wakes its lease keeper) and stops its upstream call. Every write of an attempt
carries its claim (fencing token), so an attempt whose lease was lost writes nothing
(`gateway.execution.lease`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from typing import TYPE_CHECKING, Any

from gateway import errors, operations
from gateway.auth import Principal
from gateway.backoff import next_delay
from gateway.config import JobRefusal, JobSettings
from gateway.execution.executor import ABANDONED
from gateway.execution.types import Call, Retry
from gateway.jobs import progress as job_progress
from gateway.jobs.priority import tier_of_priority
from gateway.operations import codec
from gateway.operations.base import ProgressCallback, ProgressEvent, ProgressKind
from gateway.store.base import Claim, Job, JobError, JobStore, LeaseLost
from gateway.store.blobs import BlobError, BlobNotFound, BlobStore
from gateway.telemetry import tracing

if TYPE_CHECKING:
    # Only a type here: the pipeline imports the job priorities of this package (and so this
    # module imports the execution package's modules, never the package itself).
    from gateway.execution.pipeline import Pipeline
    from gateway.telemetry.metrics import JobMetrics

log = logging.getLogger(__name__)

#: The user a shared execution runs as when its starter is not recorded (rows from before that).
SHARED_USER = "shared"


def retry_delay(
    settings: JobSettings,
    job: Job,
    error: BaseException,
    rng: random.Random | None = None,
    *,
    budget_refusal: JobRefusal = JobRefusal.FAIL,
) -> Retry | None:
    """When `job` is tried again after its attempt raised `error`; None: it fails for good.

    A rate-limit denial (raised before the model call, so nothing was spent) only delays the
    job, by the limiter's retry-after, without counting the attempt. A budget's refusal (also
    before any spend) fails it, or with `budget_refusal` `wait` delays it the same way until
    the budget's period resets.
    """
    if isinstance(error, errors.BudgetExceeded):
        if budget_refusal is JobRefusal.WAIT and error.retry_after_s is not None:
            return Retry(error.retry_after_s, counted=False)
        return None
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


class OperationRunner:
    """Runs jobs as the operations they hold, through the same execution machinery as an
    inline request (`Executor.run_claimed`), with retries by `retry_delay`; `metrics` times
    each attempt and counts the retries."""

    def __init__(
        self,
        settings: JobSettings,
        pipeline: Pipeline,
        blobs: BlobStore,
        *,
        rng: random.Random | None = None,
        budget_refusal: JobRefusal = JobRefusal.FAIL,
        metrics: JobMetrics | None = None,
    ) -> None:
        self._settings = settings
        self._budget_refusal = budget_refusal
        self._metrics = metrics
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

    def hand_back(self, claim: Claim) -> None:
        """See `JobRunner.hand_back` (`Executor.hand_back`)."""
        self._executor.hand_back(claim)

    async def run(self, job: Job) -> None:
        """One attempt of a claimed job; its end is recorded in the store by the executor.
        Traced as a child of the request that created the job (`tracing.job_run`)."""
        with tracing.job_run(job):
            await self._run(job)

    async def _run(self, job: Job) -> None:
        try:
            call = await self._call(job)
        except asyncio.CancelledError:
            # Stopped while reading the job's input: hand the claimed job back, not left running.
            self._executor.hand_back(job.claim)
            raise
        except BlobNotFound as exc:
            # Only an inline execution whose replica stopped before its first model call has
            # a row without its input (queued jobs write theirs first): whoever still waits
            # for it holds the request, and starts the work anew on ABANDONED.
            log.warning("job %s has no stored input (%s); it ends as abandoned", job.id, exc)
            with contextlib.suppress(LeaseLost, errors.Unavailable):
                await self._executor.store.fail_job(job.claim, ABANDONED)
            return
        except (BlobError, codec.DecodeError, KeyError) as exc:
            # The stored input cannot be read back: no retry can fix that.
            log.error("job %s has an unusable input: %s", job.id, exc)
            with contextlib.suppress(LeaseLost, errors.Unavailable):
                await self._executor.store.fail_job(
                    job.claim,
                    JobError(errors.Internal.reason, "the job's stored input cannot be read"),
                )
            return
        started = time.monotonic()
        # Cancelled (a stop), handed back, or the lease lost, unless it ends otherwise.
        outcome = "stopped"
        try:
            if await self._executor.run_claimed(call, job, self._retry_delay) is not None:
                outcome = "succeeded"
        except errors.GatewayError as exc:
            # A job cancelled by its owner ends its attempt with `Cancelled`: not a failure.
            outcome = "stopped" if isinstance(exc, errors.Cancelled) else "failed"
            tracing.failed(exc)
            log.info("attempt %d of job %s failed: %s", job.attempts, job.id, exc.reason)
        except Exception:
            outcome = "failed"
            raise
        finally:
            if self._metrics is not None:
                self._metrics.attempt(job.op, outcome, time.monotonic() - started)

    def _progress_recorder(self, claim: Claim) -> ProgressCallback:
        """Records an attempt's steps on its job (an event for watchers) under its claim; a
        refusal stops the attempt at once (`Executor.record_progress`). It does not ask for the
        model's text (`RunContext.text_progress`), so text operations make one unary call and
        report no steps: their RUNNING event says all there is (docs/jobs.md)."""
        ready = 0
        # Variations run concurrently; one write at a time keeps the stored progress from
        # going backwards when two writes race on different connections.
        writing = asyncio.Lock()

        async def record(event: ProgressEvent) -> None:
            nonlocal ready
            if event.kind is ProgressKind.IMAGE_READY:
                ready += 1
            progress = job_progress.describe(event, ready)
            if progress is None:
                return
            # Described before waiting: the lock is first come, first served, so the writes
            # keep the order of the counts.
            async with writing:
                await self._executor.record_progress(claim, progress)

        return record

    def _retry_delay(self, job: Job, error: BaseException) -> Retry | None:
        retry = retry_delay(
            self._settings, job, error, self._rng, budget_refusal=self._budget_refusal
        )
        # A counted retry after the last attempt fails the job instead (the store decides).
        queued_again = retry is not None and (not retry.counted or job.attempts < job.max_attempts)
        if queued_again and self._metrics is not None and isinstance(error, errors.GatewayError):
            self._metrics.retried(job.op, error.reason)
        return retry

    async def _call(self, job: Job) -> Call:
        """The executor's call for a stored job (`stored_call`), its progress recorded."""
        return await stored_call(
            self._pipeline, self._blobs, job, self._progress_recorder(job.claim)
        )


async def stored_call(
    pipeline: Pipeline, blobs: BlobStore, job: Job, progress: ProgressCallback | None = None
) -> Call:
    """The executor's call for a stored job: its validated request read back (its images from
    `blobs`), run as its owner (for a shared execution, the user who started it) at its tier.

    Raises `BlobError` (`BlobNotFound`), `codec.DecodeError` or `KeyError` for an input that
    cannot be read back."""
    spec = operations.get(job.op)
    contents = await asyncio.gather(*(blobs.get(d) for d in job.input_blobs))
    request: Any = codec.from_json(
        spec.request_type, job.input_json, dict(zip(job.input_blobs, contents, strict=True))
    )
    principal = Principal(
        user_id=job.charged_user or SHARED_USER,
        tier=tier_of_priority(job.priority),
        via="service",
    )
    call = pipeline.call(job.op, request, principal, request_id=f"job-{job.id}", progress=progress)
    # The result is cached under the key the job was coalesced on.
    return dataclasses.replace(call, key=job.dedupe_key, long_poll=False)
