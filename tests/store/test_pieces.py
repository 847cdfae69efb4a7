"""The store's building blocks: change fan-out and its polling fallback, error sanitizing, the
cleanup task."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
from pathlib import Path

import pytest

from gateway.config import StoreSettings, UsageSettings
from gateway.errors import Internal, InvalidArgument, NotFound, RateLimited
from gateway.store import Job, JobError, MemoryStore, NewJob, ResultRef
from gateway.store.blobs import LocalBlobStore
from gateway.store.changes import ChangeHub, wait_for_change
from gateway.store.maintenance import run_cleanup


async def a_job() -> Job:
    store = MemoryStore()
    return (await store.join_or_create_active_job(NewJob("u", "op", "{}"))).job


async def test_hub_wakes_only_the_waiters_of_the_changed_job() -> None:
    hub = ChangeHub()
    with hub.subscribe("a") as a1, hub.subscribe("a") as a2, hub.subscribe("b") as b:
        assert hub.waiting == 3
        hub.publish("a")
        assert a1.is_set() and a2.is_set() and not b.is_set()
        hub.publish_all()
        assert b.is_set()
    assert hub.waiting == 0


async def test_a_waiter_that_saw_a_change_is_not_woken_by_its_notification() -> None:
    hub = ChangeHub()
    with hub.subscribe("a", after_seq=5) as runner, hub.subscribe("a") as watcher:
        hub.publish("a", 5)  # the runner's own claim
        assert watcher.is_set() and not runner.is_set()
        hub.publish("a", 6)  # a cancel, say
        assert runner.is_set()
        runner.clear()
        hub.publish("a")  # no sequence known: every waiter looks
        assert runner.is_set()
        runner.clear()
        hub.publish_all()
        assert runner.is_set()


async def test_waiters_poll_when_no_notification_comes() -> None:
    job = await a_job()
    reads = 0

    async def read() -> Job:
        # The job changes after a few reads, and nobody publishes it: a lost notification.
        nonlocal reads
        reads += 1
        return dataclasses.replace(job, event_seq=job.event_seq + (reads >= 3))

    async with asyncio.timeout(10):
        changed = await wait_for_change(ChangeHub(), job.id, read, job.event_seq, 60, 0.01)
    assert changed.event_seq == job.event_seq + 1 and reads == 3


async def test_waiters_poll_only_while_the_hub_is_not_live() -> None:
    job = await a_job()
    reads = 0
    polling = asyncio.Event()

    async def read() -> Job:
        nonlocal reads
        reads += 1
        if reads == 4:
            polling.set()
        return job

    hub = ChangeHub()
    hub.live = True  # a listener is up: every change will be published
    waiter = asyncio.create_task(wait_for_change(hub, job.id, read, job.event_seq, 60, 0.01))
    try:
        await asyncio.sleep(0.2)
        assert reads == 1  # twenty polls were due; none ran
        # The listener is lost: the waiter re-reads at once and polls from then on.
        hub.live = False
        hub.publish_all()
        async with asyncio.timeout(10):
            await polling.wait()
        assert not waiter.done()
    finally:
        waiter.cancel()


async def test_a_wait_with_no_change_returns_the_job_as_it_is() -> None:
    job = await a_job()

    async def read() -> Job:
        return job

    assert await wait_for_change(ChangeHub(), job.id, read, job.event_seq, 0.05, 60) == job


def test_job_errors_keep_domain_messages_and_hide_anything_else() -> None:
    limited = JobError.from_exception(RateLimited("slow down", retry_after_s=3))
    assert limited == JobError("RATE_LIMITED", "slow down")
    assert isinstance(limited.to_exception(), RateLimited)
    leaky = JobError.from_exception(RuntimeError("password=hunter2 at db.internal"))
    assert leaky.reason == "INTERNAL" and "hunter2" not in leaky.message
    assert isinstance(JobError("NO_SUCH_REASON", "x").to_exception(), Internal)
    invalid = JobError.from_exception(InvalidArgument.field("video_id", "is empty"))
    assert isinstance(invalid.to_exception(), InvalidArgument)
    assert len(JobError.from_exception(Internal("x" * 5000)).message) == 1024


def test_a_result_ref_holds_exactly_one_json_form() -> None:
    with pytest.raises(ValueError):
        ResultRef()
    with pytest.raises(ValueError):
        ResultRef(json="{}", json_blob=hashlib.sha256(b"").digest())


async def test_the_cleanup_task_purges_periodically(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.store.maintenance")
    store = MemoryStore(cancelled_job_retention_s=0.01)
    blobs = LocalBlobStore(tmp_path / "blobs")
    digest = await blobs.put(b"the job's input image")
    new = NewJob("u", "op", "{}", input_blobs=(digest,))
    job = (await store.join_or_create_active_job(new)).job
    await store.cancel_job(job.id, "u")
    key = hashlib.sha256(b"k").digest()
    await store.put_result(key, op="op", scope="user", model="m", ref=ResultRef("{}"), ttl_s=0.01)
    settings = StoreSettings(cleanup_interval_s=0.02, cleanup_batch_size=1, blob_gc_grace_s=0.01)
    task = asyncio.create_task(run_cleanup(store, blobs, settings, UsageSettings()))

    async def purged() -> bool:
        try:
            await store.get_job(job.id, "u")
        except NotFound:
            return True
        return False

    try:
        async with asyncio.timeout(10):
            while True:  # polls an outcome; no event marks "the periodic task ran"
                if await purged() and not await blobs.exists(digest):
                    break
                await asyncio.sleep(0.02)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    # Results go first in every round, so nothing is left for anyone else to purge (and the
    # input blob only the purged job referenced went after it).
    assert await store.purge_expired_results(10) == 0
    # What went is logged, jobs by status.
    assert any("1 jobs (1 cancelled)" in r.getMessage() for r in caplog.records), caplog.text
