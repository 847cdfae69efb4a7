"""The lease of a running attempt: kept by heartbeat, and when lost, given up at once.

A runner holds its execution under a `Claim` (the fencing token of its claim; see
`gateway.store.base`). `HeldLease` keeps that claim alive for one attempt: it heartbeats every
third of the lease, and also whenever the execution changes in a way watchers see (the store's
job notifications: a cancel, a rescue, another runner's claim), so the runner learns of a loss
within a notification rather than a heartbeat interval. The notification of its own claim is
not such a change: it costs no heartbeat (a store write a job, for nothing). Whoever finds the
lease gone first (the keeper, a progress write) calls `lose`: the attempt's work is cancelled at
once, its upstream call with it, and one line says what happened, INFO when the job's owner (or
an operator) cancelled it, WARNING when the lease was taken (it lapsed and was rescued or
claimed by another runner). Nothing the attempt produces afterwards is written: every store
write carries the claim, which is no longer current.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from gateway import errors
from gateway.store.base import Claim, JobProgress, JobStatus, JobStore, LeaseLost

log = logging.getLogger(__name__)


def report_loss(lost: LeaseLost, *, answered: bool = False) -> None:
    """Logs, once per attempt, why a runner stopped: INFO for a cancelled job (an expected end
    of its work), WARNING for a lease lost any other way (a paused or cut-off replica).
    `answered`: the work had finished, and its answer is thrown away."""
    job = lost.job
    ending = "its answer was discarded" if answered else "its attempt here stopped"
    if job is not None and job.status is JobStatus.CANCELLED:
        log.info("job %s was cancelled; %s", lost.job_id, ending)
    else:
        log.warning("%s; %s", lost, ending)


class HeldLease:
    """One attempt's claim on its execution, kept until the attempt ends or the claim is lost
    (module docstring)."""

    def __init__(
        self, store: JobStore, claim: Claim, lease_s: float, claimed_seq: int | None = None
    ) -> None:
        """`claimed_seq`: the execution's `event_seq` as the claim left it (its own change,
        which needs no heartbeat when its notification arrives)."""
        self._store = store
        self.claim = claim
        self._lease_s = lease_s
        self._claimed_seq = claimed_seq
        self._work: asyncio.Future[Any] | None = None
        #: Why the claim was lost (None while it holds).
        self.lost: LeaseLost | None = None
        #: Resolved by the runner once the attempt has ended and its end is recorded (or
        #: handed to the background).
        self.ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @property
    def ending(self) -> bool:
        """The work finished, or was told to stop, and the attempt is winding down."""
        work = self._work
        if work is None:
            return False
        return work.done() or (isinstance(work, asyncio.Task) and work.cancelling() > 0)

    def attach(self, work: asyncio.Future[Any]) -> None:
        """The attempt's work, cancelled when the claim is lost."""
        self._work = work
        if self.lost is not None:
            work.cancel()

    def lose(self, lost: LeaseLost) -> None:
        """The claim is gone: reports it (the first time) and cancels the work at once."""
        if self.lost is not None:
            return
        self.lost = lost
        report_loss(lost)
        if self._work is not None:
            self._work.cancel()

    async def keep(self) -> None:
        """Heartbeats every third of the lease and at every change of the execution, until the
        claim is lost or this is cancelled (the attempt ended)."""
        changed = asyncio.Event()
        with self._store.subscribe_job(self.claim.job_id, changed, after_seq=self._claimed_seq):
            while self.lost is None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._lease_s / 3):
                        await changed.wait()
                changed.clear()
                try:
                    await self._store.heartbeat_job(self.claim, self._lease_s)
                except LeaseLost as lost:
                    self.lose(lost)
                except errors.Unavailable as exc:
                    # The work goes on; if the lease lapses meanwhile, another replica may take
                    # the execution over, and the next heartbeat tells.
                    log.warning("heartbeat of job %s failed: %s", self.claim.job_id, exc.message)

    async def record_progress(self, progress: JobProgress) -> None:
        """Records the attempt's progress (an event for watchers; it extends the lease too).
        A refusal is the loss of the claim; an outage only costs this progress event."""
        if self.lost is not None:
            return
        try:
            await self._store.heartbeat_job(self.claim, self._lease_s, progress)
        except LeaseLost as lost:
            self.lose(lost)
        except errors.Unavailable as exc:
            log.info("progress of job %s not recorded: %s", self.claim.job_id, exc.message)
