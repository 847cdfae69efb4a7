"""`WorkerPool` on its own, with a runner whose work is completing the job at once: claims and
shutdown, whatever the job's work is."""

from __future__ import annotations

import asyncio

import pytest

from gateway.config import JobSettings
from gateway.jobs import WorkerPool
from gateway.store import Claim, Job, JobStatus, MemoryStore, NewJob, ResultRef, Store

STOP_BOUND_S = 10.0


class CompletingRunner:
    """A `JobRunner` whose attempts complete their job with an empty result."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.ran: list[str] = []

    @property
    def store(self) -> Store:
        return self._store

    @property
    def worker_id(self) -> str:
        return "test-worker"

    @property
    def lease_s(self) -> float:
        return 30.0

    async def run(self, job: Job) -> None:
        self.ran.append(job.id)
        await self._store.complete_job(job.claim, ResultRef(json="{}"))

    def hand_back(self, claim: Claim) -> None:
        raise AssertionError(f"nothing is stopped mid-claim here ({claim.job_id})")


async def test_the_pool_runs_every_queued_job_once() -> None:
    store = MemoryStore()
    runner = CompletingRunner(store)
    pool = WorkerPool(JobSettings(workers=4, claim_batch=3, running_caps={}), runner)
    jobs = [
        (await store.join_or_create_active_job(NewJob("u", "op", f'{{"n":{n}}}'))).job
        for n in range(20)
    ]
    pool.start()
    try:
        for job in jobs:
            done = await store.wait_for_job_change(job.id, "u", job.event_seq + 1, 10.0)
            assert done.status is JobStatus.SUCCEEDED
    finally:
        await pool.stop()
    assert sorted(runner.ran) == sorted(job.id for job in jobs)


@pytest.mark.parametrize("turns", range(6))
async def test_stop_ends_the_pool_whenever_a_wake_up_lands(turns: int) -> None:
    # A wake-up racing the stop must not swallow its cancellation (as `asyncio.wait_for`
    # does on Python 3.11 when its awaitable finishes as the cancellation arrives): each
    # `turns` lets the wake-up get that much further before the stop.
    store = MemoryStore()
    pool = WorkerPool(
        JobSettings(workers=2, poll_interval_s=0.05, running_caps={}), CompletingRunner(store)
    )
    pool.start()
    for _ in range(100):
        if pool.idle:
            break
        await asyncio.sleep(0.01)
    assert pool.idle
    pool.wake()
    for _ in range(turns):
        await asyncio.sleep(0)

    async with asyncio.timeout(STOP_BOUND_S):
        await pool.stop()
