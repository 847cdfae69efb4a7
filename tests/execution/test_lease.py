"""`HeldLease`: an attempt's claim kept by heartbeat and given up at once, on the embedded store
(the store side of fencing is the contract suite's, tests/store/test_contract_fencing.py)."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

import pytest

from gateway.execution.lease import HeldLease
from gateway.store import Job, JobProgress, JobStatus, MemoryStore, NewJob

LEASE_S = 3600.0


async def claimed(store: MemoryStore) -> Job:
    job = (await store.join_or_create_active_job(NewJob("u", "op", "{}"))).job
    running = await store.claim_job(job.id, "w1", LEASE_S)
    assert running is not None
    return running


async def test_a_progress_write_that_finds_the_job_cancelled_stops_the_work_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemoryStore()
    job = await claimed(store)
    lease = HeldLease(store, job.claim, LEASE_S)
    work = asyncio.ensure_future(asyncio.sleep(LEASE_S))
    lease.attach(work)
    await store.cancel_job(job.id, "u")
    caplog.set_level(logging.INFO, logger="gateway")

    await lease.record_progress(JobProgress(0.5, "generating"))
    await lease.record_progress(JobProgress(0.75, "generating"))  # nothing more is written

    with pytest.raises(asyncio.CancelledError):
        await work
    assert lease.lost is not None and lease.lost.job is not None
    assert lease.lost.job.status is JobStatus.CANCELLED
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.INFO, f"job {job.id} was cancelled; its attempt here stopped")
    ]
    assert (await store.get_job(job.id, "u")).progress is None


async def test_the_keeper_hears_of_a_takeover_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    now = [datetime(2030, 1, 1, tzinfo=UTC)]
    store = MemoryStore(clock=lambda: now[0])
    job = await claimed(store)
    lease = HeldLease(store, job.claim, LEASE_S)
    work = asyncio.ensure_future(asyncio.sleep(LEASE_S))
    lease.attach(work)
    keeper = asyncio.ensure_future(lease.keep())
    await asyncio.sleep(0)  # subscribed
    caplog.set_level(logging.INFO, logger="gateway")

    # This replica stalls past its lease (no heartbeat for an hour) and another takes over.
    now[0] += timedelta(seconds=LEASE_S + 1)
    taken = await store.claim_job(job.id, "w2", LEASE_S)
    assert taken is not None
    async with asyncio.timeout(10):
        await keeper

    with pytest.raises(asyncio.CancelledError):
        await work
    assert lease.lost is not None and lease.lost.job is not None
    assert lease.lost.job.fence == taken.fence == 2
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "running under claim 2 of 'w2'" in caplog.records[0].getMessage()
