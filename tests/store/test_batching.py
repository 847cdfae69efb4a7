"""Group commit: `Batcher` on its own, and the PostgreSQL store completing concurrent jobs in one
statement with each caller's own answer."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from typing import Any

import pytest

from gateway.store import Claim, Job, JobError, JobStatus, LeaseLost, ResultRef, Store
from gateway.store.batching import Batcher
from gateway.store.postgres import PostgresStore
from tests.fixtures.stores import MakeStore

from .test_contract import new_job


class Recorder:
    """A write that records its batches and answers each item doubled (odd items fail)."""

    def __init__(self, *, delay_s: float = 0.0) -> None:
        self.batches: list[list[int]] = []
        self.delay_s = delay_s

    async def __call__(self, items: Sequence[int]) -> list[int | BaseException]:
        self.batches.append(list(items))
        await asyncio.sleep(self.delay_s)
        return [ValueError(f"odd {i}") if i % 2 else i * 2 for i in items]


async def test_concurrent_submissions_share_batches_and_get_their_own_answers() -> None:
    write = Recorder(delay_s=0.01)
    batcher: Batcher[int, int] = Batcher(write, max_batch=4, key=lambda i: i)

    answers = await asyncio.gather(*(batcher.submit(i) for i in range(10)), return_exceptions=True)

    for i, answer in enumerate(answers):
        if i % 2:
            assert isinstance(answer, ValueError) and str(answer) == f"odd {i}"
        else:
            assert answer == i * 2
    # The first item goes alone (nothing else was waiting), the rest in batches of at most 4.
    assert sorted(i for batch in write.batches for i in batch) == list(range(10))
    assert all(len(batch) <= 4 for batch in write.batches)
    assert len(write.batches) < 10


async def test_an_idle_batcher_writes_at_once() -> None:
    write = Recorder()
    batcher: Batcher[int, int] = Batcher(write, max_batch=100, key=lambda i: i)

    assert await batcher.submit(2) == 4
    assert await batcher.submit(4) == 8
    assert write.batches == [[2], [4]]


async def test_items_with_the_same_key_never_share_a_batch() -> None:
    write = Recorder(delay_s=0.01)
    batcher: Batcher[int, int] = Batcher(write, max_batch=100, key=lambda i: i % 3)

    await asyncio.gather(*(batcher.submit(i) for i in (0, 3, 6, 2)), return_exceptions=True)

    for batch in write.batches:
        assert len({i % 3 for i in batch}) == len(batch)


async def test_a_failed_write_reaches_every_caller_of_its_batch() -> None:
    async def broken(items: Sequence[int]) -> list[int | BaseException]:
        raise ConnectionError("database gone")

    batcher: Batcher[int, int] = Batcher(broken, max_batch=10, key=lambda i: i)

    answers = await asyncio.gather(*(batcher.submit(i) for i in range(5)), return_exceptions=True)

    assert all(isinstance(a, ConnectionError) for a in answers)
    # The batcher is not wedged by a failure.
    assert batcher.batches >= 1
    with pytest.raises(ConnectionError):
        await batcher.submit(9)


async def test_a_caller_that_stops_waiting_does_not_stop_the_others() -> None:
    write = Recorder(delay_s=0.05)
    batcher: Batcher[int, int] = Batcher(write, max_batch=10, key=lambda i: i)
    first = asyncio.ensure_future(batcher.submit(0))
    await asyncio.sleep(0)  # the first batch ([0]) is being written
    waiting = [asyncio.ensure_future(batcher.submit(i)) for i in (2, 4)]
    abandoned = asyncio.ensure_future(batcher.submit(6))
    await asyncio.sleep(0)
    abandoned.cancel()

    assert await first == 0
    assert await asyncio.gather(*waiting) == [4, 8]
    # The write went ahead with the abandoned item: the store owns what it started.
    assert 6 in [i for batch in write.batches for i in batch]


async def test_closing_cancels_the_waiting_callers() -> None:
    write = Recorder(delay_s=10.0)
    batcher: Batcher[int, int] = Batcher(write, max_batch=10, key=lambda i: i)
    waiting = asyncio.ensure_future(batcher.submit(1))
    await asyncio.sleep(0.01)

    await batcher.aclose()

    with pytest.raises(asyncio.CancelledError):
        await waiting


def test_a_batch_size_below_one_is_refused() -> None:
    async def write(items: Sequence[int]) -> list[int | BaseException]:
        return list(items)

    with pytest.raises(ValueError, match="max_batch"):
        Batcher(write, max_batch=0, key=lambda i: i)


# -- the PostgreSQL store's completions --------------------------------------------------------


def digest(name: str) -> bytes:
    return hashlib.sha256(name.encode()).digest()


async def claimed(store: Store, count: int, worker: str) -> list[Any]:
    for n in range(count):
        await store.join_or_create_active_job(new_job(dedupe=f"job-{n}"))
    jobs = await store.claim_batch(worker, count, 30.0)
    assert len(jobs) == count
    return jobs


async def test_concurrent_completions_share_a_statement_each_with_its_answer(
    make_store: MakeStore,
) -> None:
    store = await make_store("postgres")
    assert isinstance(store, PostgresStore)
    jobs = await claimed(store, 40, "w1")
    results = {
        job.id: ResultRef(
            json=f'{{"n":{n}}}', blobs=tuple(digest(f"{n}-{b}") for b in range(n % 4))
        )
        for n, job in enumerate(jobs)
    }
    # Completed by its worker under an earlier claim's fencing token, and by another worker.
    stale, stolen = jobs[7].id, jobs[8].id
    unknown = "00000000-0000-4000-8000-000000000000"

    def claim_of(job: Job) -> Claim:
        if job.id == stale:
            return Claim(job.id, "w1", job.fence - 1)
        return Claim(job.id, "w2", job.fence) if job.id == stolen else job.claim

    answers = await asyncio.gather(
        *(store.complete_job(claim_of(job), results[job.id]) for job in jobs),
        store.complete_job(Claim(unknown, "w1", 1), ResultRef(json="{}")),
        return_exceptions=True,
    )

    *completed, missing = answers
    assert isinstance(missing, LeaseLost) and missing.job is None
    for job, answer in zip(jobs, completed, strict=True):
        if job.id in (stale, stolen):
            assert isinstance(answer, LeaseLost)
            assert answer.job is not None and answer.job.status is JobStatus.RUNNING
            continue
        assert not isinstance(answer, BaseException), answer
        assert answer.id == job.id and answer.status is JobStatus.SUCCEEDED
        # Blob digests come back in order, per job.
        assert answer.result == results[job.id]
        assert answer.event_seq == job.event_seq + 1
    # Fewer statements than completions: the ones that queued behind the first shared one.
    assert store.jobs.completions.batches < len(jobs)
    # Read back, not just returned.
    again = await store.get_job(jobs[3].id, jobs[3].user_id or "")
    assert again.status is JobStatus.SUCCEEDED and again.result == results[jobs[3].id]


async def test_a_result_blob_digest_of_the_wrong_size_is_refused(make_store: MakeStore) -> None:
    store = await make_store("postgres")
    (job,) = await claimed(store, 1, "w1")

    with pytest.raises(ValueError, match="32 bytes"):
        await store.complete_job(job.claim, ResultRef(json="{}", blobs=(b"short",)))


async def test_concurrent_submissions_insert_together_and_conflicts_still_join(
    make_store: MakeStore,
) -> None:
    store = await make_store("postgres")
    assert isinstance(store, PostgresStore)
    images = (digest("a"), digest("b"), digest("c"))
    # 30 distinct jobs, 10 joiners of job 0's key, and 2 reuses of one idempotency key (the
    # second conflicts on it within the same batch, or with the first's row).
    news = [new_job(dedupe=f"d{n}", input_blobs=images[: n % 4]) for n in range(30)]
    news += [new_job(dedupe="d0") for _ in range(10)]
    news += [new_job(dedupe=None, idempotency_key="once", request_hash=digest("r"))] * 2

    outcomes = await asyncio.gather(*(store.join_or_create_active_job(n) for n in news))

    created = [o for o in outcomes if o.created]
    assert len(created) == 31  # 30 keys + one idempotency key
    assert len({o.job.id for o in outcomes[:30]}) == 30
    assert {o.job.id for o in outcomes[30:40]} == {outcomes[0].job.id}
    assert outcomes[40].job.id == outcomes[41].job.id
    for n, outcome in enumerate(outcomes[:30]):
        assert outcome.job.input_blobs == images[: n % 4]
    assert store.jobs.inserts.batches < len(news)


# -- wake-ups of jobs queued again for later ---------------------------------------------------


@pytest.mark.parametrize("defer", [True, False])
async def test_a_job_queued_again_for_later_wakes_the_workers_when_it_is_due(
    make_store: MakeStore, defer: bool
) -> None:
    store = await make_store("postgres")
    assert isinstance(store, PostgresStore)
    (job,) = await claimed(store, 1, "w1")
    for _ in range(1000):  # its (re)connection wakes every waiter once: let it happen first
        if store.listening:
            break
        await asyncio.sleep(0.01)
    assert store.listening
    woken = asyncio.Event()
    with store.subscribe_due(woken):
        error = JobError("UPSTREAM_UNAVAILABLE", "try later")
        if defer:
            await store.defer_job(job.claim, error, 0.5)
        else:
            await store.fail_job(job.claim, error, retry_after_s=0.5)
        # Nothing in the database happens when it becomes due: the store's timer wakes us.
        async with asyncio.timeout(10):
            await woken.wait()

    assert [j.id for j in await store.claim_batch("w2", 10, 30.0)] == [job.id]
