"""The worker pool every replica runs: claim due jobs in batches, up to `JobSettings.workers`
at once, and hand each to a `JobRunner` (`gateway.jobs.runner.OperationRunner`) for one attempt.

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
import logging
import time
from typing import Protocol

from gateway import errors
from gateway.config import JobSettings, Tier
from gateway.jobs.priority import tier_of_priority
from gateway.store.base import Claim, Job, JobStore
from gateway.telemetry import tracing

log = logging.getLogger(__name__)


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

    def hand_back(self, claim: Claim) -> None:
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
                started = time.monotonic()
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
                            runner.hand_back(job.claim)
                    raise
                except errors.Unavailable as exc:
                    log.warning("could not claim jobs: %s", exc.message)
                except Exception:
                    # A bug here must not silently end job processing on this replica.
                    log.exception("claiming jobs failed; trying again at the next poll")
                for job in claimed:
                    tracing.job_claimed(job, time.monotonic() - started)
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
