"""The store contract: every test runs against MemoryStore and PostgresStore alike.

Two-replica tests use two PostgresStore instances on one schema (for memory: the one store
seen twice), so coalescing, lease takeover and wake-ups are proven across replicas.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar

import pytest

from gateway.config import UsageSettings
from gateway.errors import AlreadyExists, Internal, NotFound, SafetyBlocked, Unavailable
from gateway.model import CACHE_HIT, COALESCED, CallLabels, Usage, UsageRecord
from gateway.store import (
    BatchLost,
    Claim,
    Delivery,
    Job,
    JobError,
    JobProgress,
    JobStatus,
    LeaseLost,
    NewJob,
    ResultRef,
    Store,
)
from gateway.store.base import (
    NO_SPEND,
    JobCursor,
    JobFilter,
    JobSpend,
    UsageDay,
    UsageEntry,
    UsageTotals,
)
from gateway.store.maintenance import purge_expired, roll_up_usage

T = TypeVar("T")
MakeStore = Callable[..., Awaitable[Store]]

ALICE, BOB = "user-alice", "user-bob"
REF = ResultRef(json='{"score":7}', blobs=(hashlib.sha256(b"img").digest(),))
LEASE_S = 30.0
#: Long enough for any scheduling hiccup; a lease this short is only used to watch it expire.
SHORT_LEASE_S = 0.3


def key(name: str) -> bytes:
    return hashlib.sha256(name.encode()).digest()


def new_job(
    user: str = ALICE, dedupe: str | None = "k", *, shared: bool = False, **fields: Any
) -> NewJob:
    values: dict[str, Any] = {
        "user_id": user,
        "op": "analyze_video",
        "input_json": f'{{"owner":"{user}"}}',
        "dedupe_key": None if dedupe is None else key(dedupe),
        "shared": shared,
        "model": "gemini-test",
    }
    values.update(fields)
    return NewJob(**values)


async def eventually(probe: Callable[[], Awaitable[T | None]], within_s: float = 10.0) -> T:
    """Polls `probe` until it returns something other than None (bounded, never a timing
    assertion: only a hang fails)."""
    async with asyncio.timeout(within_s):
        while True:
            value = await probe()
            if value is not None:
                return value
            await asyncio.sleep(0.05)


def held(job: Job, worker: str = "w1") -> Claim:
    """The claim `worker` would hold on `job` had it made `job`'s latest claim."""
    return Claim(job.id, worker, job.fence)


async def running(store: Store, new: NewJob, worker: str = "w1") -> Job:
    outcome = await store.join_or_create_active_job(new)
    claimed = await store.claim_job(outcome.job.execution_id, worker, LEASE_S)
    assert claimed is not None
    return claimed


# -- result cache ----------------------------------------------------------------------------


async def test_result_round_trip_and_miss(store: Store) -> None:
    assert await store.get_result(key("nothing")) is None
    put = await store.put_result(
        key("a"), op="analyze_video", scope="user", model="m1", ref=REF, ttl_s=3600
    )
    got = await store.get_result(key("a"))
    assert got == put
    assert (got.op, got.scope, got.model, got.ref) == ("analyze_video", "user", "m1", REF)
    assert got.expires_at > got.created_at


async def test_a_result_keeps_what_producing_it_cost(store: Store) -> None:
    put = await store.put_result(
        key("a"), op="x", scope="user", model="m", ref=REF, ttl_s=3600, cost_usd=0.012345
    )
    got = await store.get_result(key("a"))
    assert put.cost_usd == 0.012345 and got is not None and got.cost_usd == 0.012345
    await store.put_result(key("b"), op="x", scope="user", model="m", ref=REF, ttl_s=3600)
    assert (await store.get_result(key("b"))).cost_usd == 0.0  # type: ignore[union-attr]


async def test_put_replaces_an_entry(store: Store) -> None:
    await store.put_result(key("a"), op="x", scope="user", model="m1", ref=REF, ttl_s=3600)
    other = ResultRef(json_blob=key("json"), blobs=())
    await store.put_result(key("a"), op="x", scope="user", model="m2", ref=other, ttl_s=3600)
    got = await store.get_result(key("a"))
    assert got is not None and (got.model, got.ref) == ("m2", other)


async def test_expired_result_is_a_miss_and_is_purged_in_batches(store: Store) -> None:
    for i in range(5):
        await store.put_result(key(f"old{i}"), op="x", scope="user", model="m", ref=REF, ttl_s=0.01)
    await store.put_result(key("fresh"), op="x", scope="user", model="m", ref=REF, ttl_s=3600)
    await asyncio.sleep(0.05)
    assert await store.get_result(key("old0")) is None
    assert [await store.purge_expired_results(2) for _ in range(4)] == [2, 2, 1, 0]
    assert await store.get_result(key("fresh")) is not None


# -- creating and joining --------------------------------------------------------------------


async def test_a_new_job_is_queued_and_private(store: Store) -> None:
    job, created, existing = await store.join_or_create_active_job(new_job(priority=5))
    assert created and not existing
    assert job.status is JobStatus.QUEUED and job.active
    assert (job.user_id, job.op, job.model, job.priority) == (
        ALICE,
        "analyze_video",
        "gemini-test",
        5,
    )
    assert (job.attempts, job.max_attempts, job.event_seq) == (0, 3, 1)
    assert job.execution_id == job.id and job.follows is None
    assert await store.get_job(job.id, ALICE) == job
    assert await store.get_job(job.id.upper(), ALICE) == job
    for user, job_id in ((BOB, job.id), (ALICE, "not-a-job-id"), (ALICE, str(uuid.uuid4()))):
        with pytest.raises(NotFound):
            await store.get_job(job_id, user)


async def test_same_dedupe_key_joins_the_active_job(store: Store) -> None:
    first = await store.join_or_create_active_job(new_job())
    again = await store.join_or_create_active_job(new_job())
    assert again.job == first.job and not again.created and again.existing
    other = await store.join_or_create_active_job(new_job(dedupe="other"))
    assert other.created and other.job.id != first.job.id


async def test_jobs_without_a_dedupe_key_never_coalesce(store: Store) -> None:
    one = await store.join_or_create_active_job(new_job(dedupe=None))
    two = await store.join_or_create_active_job(new_job(dedupe=None))
    assert one.created and two.created and one.job.id != two.job.id


async def test_a_finished_job_frees_its_dedupe_key(store: Store) -> None:
    job = await running(store, new_job())
    await store.complete_job(held(job, "w1"), REF)
    again = await store.join_or_create_active_job(new_job())
    assert again.created and again.job.id != job.id


async def test_a_user_scoped_key_shared_with_another_user_is_refused(store: Store) -> None:
    # Keys of user-scoped operations contain the user id; equal keys for two users is a bug.
    await store.join_or_create_active_job(new_job(ALICE))
    with pytest.raises(Internal):
        await store.join_or_create_active_job(new_job(BOB))


async def test_idempotency_key_returns_the_first_job_even_when_finished(store: Store) -> None:
    first = await running(store, new_job(dedupe=None, idempotency_key="idem-1", request_hash=b"r1"))
    await store.complete_job(held(first, "w1"), REF)
    again = await store.join_or_create_active_job(
        new_job(dedupe=None, idempotency_key="idem-1", request_hash=b"r1")
    )
    assert again.existing and not again.created
    assert again.job.id == first.id and again.job.status is JobStatus.SUCCEEDED
    assert again.job.result == REF
    found = await store.find_job_by_idempotency_key(ALICE, "idem-1")
    assert found is not None and found.id == first.id
    assert await store.find_job_by_idempotency_key(BOB, "idem-1") is None


async def test_idempotency_key_reused_for_another_request_is_refused(store: Store) -> None:
    await store.join_or_create_active_job(new_job(idempotency_key="idem", request_hash=b"r1"))
    with pytest.raises(AlreadyExists):
        await store.join_or_create_active_job(
            new_job(dedupe="else", idempotency_key="idem", request_hash=b"r2")
        )
    # Keys are per user: Bob's "idem" is his own.
    bob = await store.join_or_create_active_job(
        new_job(BOB, dedupe="bob", idempotency_key="idem", request_hash=b"r2")
    )
    assert bob.created


# -- shared executions (global scope) --------------------------------------------------------


async def test_users_share_an_execution_through_private_handles(store: Store) -> None:
    alice = await store.join_or_create_active_job(new_job(ALICE, shared=True))
    bob = await store.join_or_create_active_job(new_job(BOB, shared=True))
    assert alice.created and not alice.existing
    assert not bob.created and not bob.existing
    assert alice.job.id != bob.job.id
    assert alice.job.execution_id == bob.job.execution_id not in (alice.job.id, bob.job.id)
    # Each sees only their own request; nobody reads the execution row itself.
    assert (await store.get_job(bob.job.id, BOB)).input_json == '{"owner":"user-bob"}'
    with pytest.raises(NotFound):
        await store.get_job(alice.job.id, BOB)
    for user in (ALICE, BOB):
        with pytest.raises(NotFound):
            await store.get_job(alice.job.execution_id, user)
    again = await store.join_or_create_active_job(new_job(ALICE, shared=True))
    assert again.existing and again.job.id == alice.job.id


async def test_handles_follow_the_execution_to_its_result(store: Store) -> None:
    alice = (await store.join_or_create_active_job(new_job(ALICE, shared=True))).job
    bob = (await store.join_or_create_active_job(new_job(BOB, shared=True))).job
    execution = await store.claim_job(alice.execution_id, "w1", LEASE_S)
    assert execution is not None
    assert (await store.get_job(bob.id, BOB)).status is JobStatus.RUNNING
    await store.heartbeat_job(held(execution, "w1"), LEASE_S, JobProgress(0.5, "thinking", "half"))
    assert (await store.get_job(alice.id, ALICE)).progress == JobProgress(0.5, "thinking", "half")
    await store.complete_job(held(execution, "w1"), REF)
    for job_id, user in ((alice.id, ALICE), (bob.id, BOB)):
        done = await store.get_job(job_id, user)
        assert done.status is JobStatus.SUCCEEDED and done.result == REF
        assert done.attempts == 1 and done.completed_at is not None
        assert done.event_seq == 4  # created, running, progress, succeeded


async def test_a_job_keeps_the_trace_context_of_the_request_that_created_it(
    store: Store,
) -> None:
    alice_trace = {"traceparent": f"00-{'a' * 32}-{'1' * 16}-01", "tracestate": "vendor=alpha"}
    bob_trace = {"traceparent": f"00-{'b' * 32}-{'2' * 16}-01", "tracestate": None}
    own = (await store.join_or_create_active_job(new_job(ALICE, "own", **alice_trace))).job
    together = await store.join_or_create_active_jobs(
        [new_job(BOB, "together", **bob_trace), new_job(BOB, "untraced")]
    )
    shared = (await store.join_or_create_active_job(new_job(ALICE, shared=True, **alice_trace))).job
    handle = (await store.join_or_create_active_job(new_job(BOB, shared=True, **bob_trace))).job

    def trace_of(job: Job) -> dict[str, str | None]:
        return {"traceparent": job.traceparent, "tracestate": job.tracestate}

    assert trace_of(await store.get_job(own.id, ALICE)) == alice_trace
    assert [trace_of(outcome.job) for outcome in together] == [
        bob_trace,
        {"traceparent": None, "tracestate": None},
    ]
    assert trace_of(await store.get_job(handle.id, BOB)) == bob_trace
    # What a worker claims carries the trace of the request that created the execution.
    claimed = await store.claim_job(shared.execution_id, "w1", LEASE_S)
    assert claimed is not None and trace_of(claimed) == alice_trace
    batch = await store.claim_batch("w2", 10, LEASE_S)
    assert {job.id: trace_of(job)["traceparent"] for job in batch} == {
        own.id: alice_trace["traceparent"],
        together[0].job.id: bob_trace["traceparent"],
        together[1].job.id: None,
    }


async def test_cancelling_a_handle_detaches_only_its_owner(store: Store) -> None:
    alice = (await store.join_or_create_active_job(new_job(ALICE, shared=True))).job
    bob = (await store.join_or_create_active_job(new_job(BOB, shared=True))).job
    execution = await store.claim_job(alice.execution_id, "w1", LEASE_S)
    assert execution is not None
    assert (await store.cancel_job(bob.id, BOB)).status is JobStatus.CANCELLED
    # Alice still waits: the execution runs on, and completes for her only.
    await store.heartbeat_job(held(execution, "w1"), LEASE_S)
    await store.complete_job(held(execution, "w1"), REF)
    assert (await store.get_job(alice.id, ALICE)).status is JobStatus.SUCCEEDED
    assert (await store.get_job(bob.id, BOB)).status is JobStatus.CANCELLED


async def test_the_last_handle_leaving_cancels_the_execution(store: Store) -> None:
    alice = (await store.join_or_create_active_job(new_job(ALICE, shared=True))).job
    bob = (await store.join_or_create_active_job(new_job(BOB, shared=True))).job
    execution = await store.claim_job(alice.execution_id, "w1", LEASE_S)
    assert execution is not None
    await store.cancel_job(alice.id, ALICE)
    await store.cancel_job(bob.id, BOB)
    with pytest.raises(LeaseLost) as lost:
        await store.heartbeat_job(held(execution, "w1"), LEASE_S)
    assert lost.value.job is not None and lost.value.job.status is JobStatus.CANCELLED
    fresh = await store.join_or_create_active_job(new_job(BOB, shared=True))
    assert fresh.created and fresh.job.execution_id != execution.id


# -- leases ----------------------------------------------------------------------------------


async def test_claim_takes_the_lease(store: Store) -> None:
    job = (await store.join_or_create_active_job(new_job())).job
    claimed = await store.claim_job(job.id, "w1", LEASE_S)
    assert claimed is not None
    assert (claimed.status, claimed.attempts, claimed.locked_by) == (JobStatus.RUNNING, 1, "w1")
    assert claimed.locked_until is not None and claimed.started_at is not None
    assert claimed.event_seq == job.event_seq + 1
    assert await store.claim_job(job.id, "w2", LEASE_S) is None
    assert await store.claim_job(str(uuid.uuid4()), "w2", LEASE_S) is None
    assert await store.claim_job("garbage", "w2", LEASE_S) is None


@pytest.mark.parametrize("shared", [False, True])
async def test_a_held_execution_is_its_creators_until_the_hold_ends(
    store: Store, shared: bool
) -> None:
    # An inline run holds its new execution: no worker may claim it (and find no input) first.
    new = new_job(BOB if shared else ALICE, "held", shared=shared, hold_s=SHORT_LEASE_S * 2)
    job = (await store.join_or_create_active_job(new)).job
    assert job.run_after > job.created_at
    assert await store.claim_batch("worker", 10, LEASE_S) == []
    assert await store.claim_job(job.execution_id, "waiter", LEASE_S) is None

    claimed = await store.claim_job(job.execution_id, "creator", LEASE_S, held=True)
    assert claimed is not None
    assert (claimed.status, claimed.locked_by, claimed.attempts) == (
        JobStatus.RUNNING,
        "creator",
        1,
    )
    # Running, it is not "due later" any more.
    assert claimed.run_after <= claimed.started_at  # type: ignore[operator]

    # A creator that vanished before its claim: the execution becomes due when the hold ends.
    orphan = (await store.join_or_create_active_job(new_job(dedupe="orphan", hold_s=0.3))).job

    async def claimed_by_a_worker() -> list[Job] | None:
        return await store.claim_batch("worker", 10, LEASE_S) or None

    taken = await eventually(claimed_by_a_worker)
    assert [j.id for j in taken] == [orphan.id]


async def test_claim_batch_takes_due_executions_by_priority_then_age(store: Store) -> None:
    low = (await store.join_or_create_active_job(new_job(dedupe="low", priority=0))).job
    high = (await store.join_or_create_active_job(new_job(dedupe="high", priority=2))).job
    older = (await store.join_or_create_active_job(new_job(dedupe="older", priority=1))).job
    newer = (await store.join_or_create_active_job(new_job(dedupe="newer", priority=1))).job
    handle = (await store.join_or_create_active_job(new_job(BOB, "shared", shared=True))).job
    # A retry waiting out its backoff is not due yet.
    waiting = await running(store, new_job(dedupe="waiting"))
    await store.fail_job(held(waiting, "w1"), JobError("UNAVAILABLE", "503"), retry_after_s=3600)

    first = await store.claim_batch("w1", 3, LEASE_S)
    rest = await store.claim_batch("w2", 10, LEASE_S)

    assert [j.id for j in first] == [high.id, older.id, newer.id]
    assert all((j.status, j.attempts, j.locked_by) == (JobStatus.RUNNING, 1, "w1") for j in first)
    # The shared execution is claimed, never its handle; the backing-off retry stays queued.
    assert {j.id for j in rest} == {low.id, handle.execution_id}
    assert handle.id not in {j.id for j in rest}
    assert (await store.get_job(handle.id, BOB)).status is JobStatus.RUNNING
    assert (await store.get_job(waiting.id, ALICE)).status is JobStatus.QUEUED
    assert await store.claim_batch("w3", 10, LEASE_S) == []


async def test_concurrent_claim_batches_never_share_a_job(
    replicas: tuple[Store, Store],
) -> None:
    a, b = replicas
    for i in range(20):
        await a.join_or_create_active_job(new_job(dedupe=f"job-{i}"))

    batches = await asyncio.gather(
        *((a if i % 2 else b).claim_batch(f"w{i}", 3, LEASE_S) for i in range(10))
    )

    claimed = [job.id for batch in batches for job in batch]
    assert len(claimed) == len(set(claimed)) == 20


#: Running executions per user by job priority, as the workers pass them; priority 3 is uncapped.
CAPS = {0: 1, 1: 2}


async def test_claim_batch_holds_each_users_executions_beyond_her_cap(store: Store) -> None:
    async def queue(user: str, name: str, priority: int, **fields: Any) -> Job:
        new = new_job(user, name, priority=priority, **fields)
        return (await store.join_or_create_active_job(new)).job

    alice = [await queue(ALICE, f"a{i}", 0) for i in range(3)]  # capped at 1
    bob = [await queue(BOB, f"b{i}", 1) for i in range(3)]  # capped at 2
    carol = [await queue("user-carol", f"c{i}", 3) for i in range(2)]  # uncapped
    # A shared execution counts against the user who started it (see gateway.jobs.pool)...
    shared = [await queue(ALICE, f"s{i}", 0, shared=True) for i in range(2)]
    # ... and only her: Bob joining one costs him nothing.
    await queue(BOB, "s0", 1, shared=True)

    first = await store.claim_batch("w1", 100, LEASE_S, CAPS)

    assert {j.id for j in first} == {alice[0].id, bob[0].id, bob[1].id, *(j.id for j in carol)}
    assert await store.claim_batch("w2", 100, LEASE_S, CAPS) == []
    # A finished job frees its owner's slot for her next one, oldest first.
    await store.complete_job(next(j.claim for j in first if j.id == alice[0].id), REF)
    second = await store.claim_batch("w2", 100, LEASE_S, CAPS)
    assert [j.id for j in second] == [alice[1].id]
    # Without caps everything due is claimed; a shared execution names its starter.
    rest = await store.claim_batch("w3", 100, LEASE_S)
    assert {j.id for j in rest} == {alice[2].id, bob[2].id, *(j.execution_id for j in shared)}
    executions = [j for j in rest if j.user_id is None]
    assert [(j.started_by, j.charged_user) for j in executions] == [(ALICE, ALICE)] * 2
    # Her own jobs done, the running shared executions alone hold her slot.
    await store.complete_job(second[0].claim, REF)
    await store.complete_job(next(j.claim for j in rest if j.id == alice[2].id), REF)
    later = await queue(ALICE, "s-later", 0, shared=True)
    await queue("user-dave", "d0", 0)
    assert [j.user_id for j in await store.claim_batch("w4", 100, LEASE_S, CAPS)] == ["user-dave"]
    for job in executions:
        await store.complete_job(job.claim, REF)
    assert [j.id for j in await store.claim_batch("w4", 100, LEASE_S, CAPS)] == [later.execution_id]


async def test_jobs_submitted_together_answer_as_each_would_alone(store: Store) -> None:
    earlier = (await store.join_or_create_active_job(new_job(dedupe="taken"))).job
    news = [new_job(dedupe=f"fresh-{n}") for n in range(5)]
    news += [new_job(dedupe="taken"), new_job(dedupe="fresh-0")]
    news += [new_job(dedupe=None, idempotency_key="k", request_hash=key("r"))] * 2

    outcomes = await store.join_or_create_active_jobs(news)

    assert [o.created for o in outcomes] == [True] * 5 + [False, False, True, False]
    assert outcomes[5].job.id == earlier.id
    assert outcomes[6].job.id == outcomes[0].job.id
    assert outcomes[8].job.id == outcomes[7].job.id
    assert len({o.job.id for o in outcomes}) == 7
    with pytest.raises(AlreadyExists):
        await store.join_or_create_active_jobs(
            [new_job(dedupe=None, idempotency_key="k", request_hash=key("other"))]
        )


async def test_a_capped_users_long_queue_does_not_hide_others_jobs_behind_it(
    store: Store,
) -> None:
    # More of Alice's jobs (capped at 1) than one page of a capped claim reads, all ahead of
    # Bob's one job of the same priority.
    alice = [
        (await store.join_or_create_active_job(new_job(ALICE, f"a{i}", priority=0))).job
        for i in range(150)
    ]
    bob = (await store.join_or_create_active_job(new_job(BOB, "b", priority=0))).job

    claimed = await store.claim_batch("w1", 2, LEASE_S, CAPS)

    assert [j.id for j in claimed] == [alice[0].id, bob.id]
    assert await store.claim_batch("w2", 2, LEASE_S, CAPS) == []


async def test_a_cap_holds_across_replicas_claiming_at_once(
    replicas: tuple[Store, Store],
) -> None:
    a, b = replicas
    for i in range(10):
        await a.join_or_create_active_job(new_job(dedupe=f"free-{i}", priority=0))

    batches = await asyncio.gather(
        *((a if i % 2 else b).claim_batch(f"w{i}", 2, LEASE_S, CAPS) for i in range(10))
    )

    assert sum(len(batch) for batch in batches) == 1


async def test_list_jobs_is_private_filtered_and_paged_newest_first(store: Store) -> None:
    mine = [
        (await store.join_or_create_active_job(new_job(dedupe=None, op=op))).job
        for op in ("analyze_video", "generate_thumbnail") * 3
    ]
    await store.join_or_create_active_job(new_job(BOB, dedupe=None))
    await store.cancel_job(mine[0].id, ALICE)
    newest_first = [j.id for j in sorted(mine, key=lambda j: (j.created_at, j.id), reverse=True)]

    pages: list[list[str]] = []
    after: JobCursor | None = None
    while True:
        page = await store.list_jobs(ALICE, JobFilter(), 4, after)
        pages.append([j.id for j in page])
        if len(page) < 4:
            break
        after = JobCursor(page[-1].created_at, page[-1].id)

    assert [len(p) for p in pages] == [4, 2]
    assert [i for p in pages for i in p] == newest_first
    thumbnails = await store.list_jobs(ALICE, JobFilter(ops=frozenset({"generate_thumbnail"})), 10)
    assert {j.id for j in thumbnails} == {j.id for j in mine[1::2]}
    cancelled = await store.list_jobs(
        ALICE, JobFilter(statuses=frozenset({JobStatus.CANCELLED})), 10
    )
    assert [j.id for j in cancelled] == [mine[0].id]
    both = JobFilter(frozenset({JobStatus.QUEUED}), frozenset({"analyze_video"}))
    assert {j.id for j in await store.list_jobs(ALICE, both, 10)} == {mine[2].id, mine[4].id}
    assert await store.list_jobs("user-nobody", JobFilter(), 10) == []


async def test_handles_cannot_be_claimed(store: Store) -> None:
    handle = (await store.join_or_create_active_job(new_job(shared=True))).job
    assert await store.claim_job(handle.id, "w1", LEASE_S) is None


async def test_heartbeat_extends_and_reports_progress(store: Store) -> None:
    job = await running(store, new_job())
    quiet = await store.heartbeat_job(held(job, "w1"), LEASE_S)
    assert quiet.event_seq == job.event_seq  # a heartbeat alone is no event
    assert quiet.locked_until is not None and job.locked_until is not None
    assert quiet.locked_until >= job.locked_until
    loud = await store.heartbeat_job(held(job, "w1"), LEASE_S, JobProgress(0.25, "generating"))
    assert loud.event_seq == job.event_seq + 1 and loud.progress == JobProgress(0.25, "generating")
    with pytest.raises(LeaseLost):
        await store.heartbeat_job(held(job, "w2"), LEASE_S)


async def test_only_the_holder_completes(store: Store) -> None:
    job = await running(store, new_job())
    with pytest.raises(LeaseLost):
        await store.complete_job(held(job, "w2"), REF)
    done = await store.complete_job(held(job, "w1"), REF)
    assert (done.status, done.result, done.locked_by) == (JobStatus.SUCCEEDED, REF, None)
    assert done.expires_at is not None and done.completed_at is not None
    with pytest.raises(LeaseLost) as lost:
        await store.complete_job(held(job, "w1"), REF)
    assert lost.value.job == done


async def test_failure_with_retry_requeues_until_attempts_run_out(store: Store) -> None:
    job = await running(store, new_job(max_attempts=2))
    error = JobError("UPSTREAM_UNAVAILABLE", "Gemini is overloaded")
    later = await store.fail_job(held(job, "w1"), error, retry_after_s=3600)
    assert (later.status, later.error, later.locked_by) == (JobStatus.QUEUED, error, None)
    assert later.run_after > job.run_after
    assert await store.claim_job(job.id, "w1", LEASE_S) is None  # not due yet
    # Still active: a new caller joins it rather than starting another.
    assert (await store.join_or_create_active_job(new_job())).job.id == job.id

    other = await running(store, new_job(dedupe="now", max_attempts=2))
    await store.fail_job(held(other, "w1"), error, retry_after_s=0)
    second = await store.claim_job(other.id, "w2", LEASE_S)
    assert second is not None and second.attempts == 2 and second.error is None
    final = await store.fail_job(second.claim, error, retry_after_s=0)
    assert final.status is JobStatus.FAILED and final.error == error


async def test_deferral_requeues_without_counting_the_attempt(store: Store) -> None:
    job = await running(store, new_job(max_attempts=1))
    denied = JobError("RATE_LIMITED", "over the limit")

    deferred = await store.defer_job(held(job, "w1"), denied, 3600)

    assert (deferred.status, deferred.attempts, deferred.error) == (JobStatus.QUEUED, 0, denied)
    assert deferred.locked_by is None and deferred.run_after > job.run_after
    assert deferred.event_seq == job.event_seq + 1
    assert await store.claim_job(job.id, "w1", LEASE_S) is None  # not due yet
    with pytest.raises(LeaseLost):
        await store.defer_job(held(job, "w1"), denied, 0)
    # Due at once: its one attempt is still there.
    again = await running(store, new_job(dedupe="now", max_attempts=1))
    await store.defer_job(held(again, "w1"), denied, 0)
    assert (await store.claim_job(again.id, "w2", LEASE_S)) is not None


async def test_failure_without_retry_is_final(store: Store) -> None:
    job = await running(store, new_job())
    error = JobError.from_exception(SafetyBlocked("the thumbnail shows a weapon"))
    failed = await store.fail_job(held(job, "w1"), error)
    assert failed.status is JobStatus.FAILED
    assert failed.error == JobError("SAFETY_BLOCKED", "the thumbnail shows a weapon")
    assert isinstance(failed.error.to_exception(), SafetyBlocked)


async def test_expired_lease_is_taken_over_by_another_replica(
    replicas: tuple[Store, Store],
) -> None:
    a, b = replicas
    job = (await a.join_or_create_active_job(new_job())).job
    mine = await a.claim_job(job.id, "replica-a", SHORT_LEASE_S)
    assert mine is not None
    # While the lease is valid nobody else runs it...
    assert await b.claim_job(job.id, "replica-b", LEASE_S) is None
    # ...and once it lapses (replica a stopped heartbeating) b takes over, as attempt 2.
    taken = await eventually(lambda: b.claim_job(job.id, "replica-b", LEASE_S))
    assert (taken.locked_by, taken.attempts, taken.status) == ("replica-b", 2, JobStatus.RUNNING)
    assert taken.fence == mine.fence + 1
    with pytest.raises(LeaseLost):
        await a.heartbeat_job(mine.claim, LEASE_S)
    with pytest.raises(LeaseLost):
        await a.complete_job(mine.claim, REF)
    assert (await b.complete_job(taken.claim, REF)).status is JobStatus.SUCCEEDED


async def test_expired_lease_without_attempts_left_fails(store: Store) -> None:
    job = (await store.join_or_create_active_job(new_job(max_attempts=1))).job
    assert await store.claim_job(job.id, "w1", SHORT_LEASE_S) is not None

    async def failed() -> Job | None:
        assert await store.claim_job(job.id, "w2", LEASE_S) is None
        current = await store.get_job(job.id, ALICE)
        return current if current.status is JobStatus.FAILED else None

    final = await eventually(failed)
    assert final.error is not None and final.error.reason == Unavailable.reason


async def test_rescue_requeues_expired_leases(store: Store) -> None:
    jobs = [await running(store, new_job(dedupe=f"r{i}")) for i in range(3)]
    for job in jobs[:2]:
        await store.heartbeat_job(held(job, "w1"), SHORT_LEASE_S)
    await asyncio.sleep(SHORT_LEASE_S + 0.1)
    assert await store.rescue_expired_leases(10) == 2
    statuses = [(await store.get_job(j.id, ALICE)).status for j in jobs]
    assert statuses == [JobStatus.QUEUED, JobStatus.QUEUED, JobStatus.RUNNING]
    assert await store.rescue_expired_leases(10) == 0


# -- cancellation ----------------------------------------------------------------------------


async def test_cancel_in_each_state(store: Store) -> None:
    queued = (await store.join_or_create_active_job(new_job(dedupe="q"))).job
    cancelled = await store.cancel_job(queued.id, ALICE)
    assert cancelled.status is JobStatus.CANCELLED and cancelled.completed_at is not None
    assert await store.claim_job(queued.id, "w1", LEASE_S) is None

    active = await running(store, new_job(dedupe="r"))
    assert (await store.cancel_job(active.id, ALICE)).status is JobStatus.CANCELLED
    with pytest.raises(LeaseLost):  # the runner learns at its next heartbeat
        await store.heartbeat_job(held(active, "w1"), LEASE_S)

    done = await running(store, new_job(dedupe="d"))
    finished = await store.complete_job(held(done, "w1"), REF)
    assert await store.cancel_job(done.id, ALICE) == finished

    with pytest.raises(NotFound):
        await store.cancel_job(finished.id, BOB)


# -- waiting for changes ---------------------------------------------------------------------


async def test_waiter_on_one_replica_wakes_on_a_change_on_another(
    replicas: tuple[Store, Store],
) -> None:
    a, b = replicas
    job = (await a.join_or_create_active_job(new_job())).job
    waiters = [
        asyncio.create_task(b.wait_for_job_change(job.id, ALICE, job.event_seq, 60))
        for _ in range(20)
    ]
    await asyncio.sleep(0.1)
    assert not any(w.done() for w in waiters)
    await a.claim_job(job.id, "w1", LEASE_S)
    # The store polls every 30 s in these tests: an answer within 10 s is NOTIFY's doing.
    async with asyncio.timeout(10):
        woken = await asyncio.gather(*waiters)
    assert {(w.status, w.event_seq) for w in woken} == {(JobStatus.RUNNING, job.event_seq + 1)}


async def test_jobs_becoming_due_wake_the_workers_of_every_replica(
    replicas: tuple[Store, Store],
) -> None:
    a, b = replicas
    due = asyncio.Event()

    async def signalled(action: Awaitable[object]) -> None:
        due.clear()
        await action
        # No poll sets this event: only the store's due signal (NOTIFY across replicas).
        async with asyncio.timeout(10):
            await due.wait()

    with b.subscribe_due(due):
        # The listener's first connect wakes every subscriber once (missed notifications).
        await eventually(lambda: _true_or_none(getattr(b, "listening", True)))
        await signalled(a.join_or_create_active_job(new_job(dedupe="created")))
        job = await running(a, new_job(dedupe="retried", max_attempts=3))
        await signalled(a.fail_job(held(job, "w1"), JobError("UNAVAILABLE", "x"), retry_after_s=0))
        again = await a.claim_job(job.id, "w1", LEASE_S)
        assert again is not None
        await signalled(a.defer_job(again.claim, JobError("RATE_LIMITED", "x"), 0))
        assert await a.claim_job(job.id, "w1", SHORT_LEASE_S) is not None
        await asyncio.sleep(SHORT_LEASE_S + 0.1)
        await signalled(a.rescue_expired_leases(10))


async def _true_or_none(value: bool) -> bool | None:
    return True if value else None


async def test_handle_waiters_wake_when_the_shared_execution_finishes(
    replicas: tuple[Store, Store],
) -> None:
    a, b = replicas
    alice = (await a.join_or_create_active_job(new_job(ALICE, shared=True))).job
    bob = (await b.join_or_create_active_job(new_job(BOB, shared=True))).job
    execution = await a.claim_job(alice.execution_id, "w1", LEASE_S)
    assert execution is not None
    seen = (await b.get_job(bob.id, BOB)).event_seq
    waiter = asyncio.create_task(b.wait_for_job_change(bob.id, BOB, seen, 60))
    await asyncio.sleep(0.1)
    await a.complete_job(held(execution, "w1"), REF)
    async with asyncio.timeout(10):
        done = await waiter
    assert done.status is JobStatus.SUCCEEDED and done.result == REF


async def test_wait_returns_at_once_for_news_and_terminal_jobs(store: Store) -> None:
    job = await running(store, new_job())
    news = await store.wait_for_job_change(job.id, ALICE, 0, 60)
    assert news.event_seq == job.event_seq
    quiet = await store.wait_for_job_change(job.id, ALICE, job.event_seq, 0.05)
    assert quiet.event_seq == job.event_seq and quiet.status is JobStatus.RUNNING
    done = await store.complete_job(held(job, "w1"), REF)
    assert await store.wait_for_job_change(job.id, ALICE, done.event_seq, 60) == done
    with pytest.raises(NotFound):
        await store.wait_for_job_change(job.id, BOB, 0, 1)


# -- coalescing across replicas --------------------------------------------------------------


async def test_a_burst_across_replicas_creates_exactly_one_execution(
    replicas: tuple[Store, Store],
) -> None:
    a, b = replicas
    outcomes = await asyncio.gather(
        *(
            (a if i % 2 else b).join_or_create_active_job(new_job(f"user-{i % 7}", shared=True))
            for i in range(40)
        )
    )
    assert sum(o.created for o in outcomes) == 1
    assert len({o.job.execution_id for o in outcomes}) == 1
    # One handle per user, whichever replica they came through.
    assert len({o.job.id for o in outcomes}) == 7
    assert {o.job.user_id for o in outcomes} == {f"user-{i}" for i in range(7)}


async def test_a_burst_of_one_user_creates_one_job(replicas: tuple[Store, Store]) -> None:
    a, b = replicas
    outcomes = await asyncio.gather(
        *((a if i % 2 else b).join_or_create_active_job(new_job()) for i in range(30))
    )
    assert sum(o.created for o in outcomes) == 1
    assert len({o.job.id for o in outcomes}) == 1


# -- queue depth -----------------------------------------------------------------------------


async def test_queue_depth_counts_active_executions_by_status_and_operation(
    store: Store,
) -> None:
    assert await store.queue_depth() == {}
    # Two users on one shared execution: one execution, two handles (not counted).
    await store.join_or_create_active_job(new_job(ALICE, "shared", shared=True))
    await store.join_or_create_active_job(new_job(BOB, "shared", shared=True))
    await store.join_or_create_active_job(new_job(ALICE, "a2", op="check_channel_consistency"))
    await running(store, new_job(BOB, "b1"))
    done = await running(store, new_job(BOB, "b2"))
    await store.complete_job(done.claim, REF)

    assert await store.queue_depth() == {
        (JobStatus.QUEUED, "analyze_video"): 1,
        (JobStatus.QUEUED, "check_channel_consistency"): 1,
        (JobStatus.RUNNING, "analyze_video"): 1,
    }


# -- retention, usage ------------------------------------------------------------------------


async def test_finished_jobs_are_purged_after_retention(make_store: MakeStore, kind: str) -> None:
    store = await make_store(kind, job_retention_s=0.01, cancelled_job_retention_s=0.01)
    finished = await running(store, new_job(dedupe="done"))
    await store.complete_job(held(finished, "w1"), REF)
    handle = (await store.join_or_create_active_job(new_job(shared=True, dedupe="s"))).job
    await store.cancel_job(handle.id, ALICE)  # the handle and its execution both finish
    active = (await store.join_or_create_active_job(new_job(dedupe="active"))).job
    await store.put_result(key("r"), op="x", scope="user", model="m", ref=REF, ttl_s=0.01)
    await asyncio.sleep(0.05)
    results, jobs = await purge_expired(store, batch_size=1)
    assert results == 1 and jobs[JobStatus.SUCCEEDED] == 1
    # The cascade may take the handle with its execution.
    assert jobs[JobStatus.CANCELLED] >= 1
    assert set(jobs) == {JobStatus.SUCCEEDED, JobStatus.CANCELLED}
    for gone in (finished.id, handle.id):
        with pytest.raises(NotFound):
            await store.get_job(gone, ALICE)
    assert (await store.get_job(active.id, ALICE)).active


async def test_usage_ledger(store: Store) -> None:
    job = (await store.join_or_create_active_job(new_job())).job
    records = [
        UsageRecord(
            labels=CallLabels("analyze_video", ALICE, job.id, "req-1"),
            model="gemini-test",
            attempt=attempt,
            outcome=outcome,
            duration_s=0.5,
            usage=Usage(prompt_tokens=100, output_tokens=20 * attempt, total_tokens=140),
            cost_usd=0.000123 * attempt,
        )
        for attempt, outcome in ((1, "UPSTREAM_UNAVAILABLE"), (2, "ok"))
    ]
    for record in records:
        await store.insert_usage(record)
    await store.insert_usage(
        UsageRecord(CallLabels("analyze_video", ALICE), "gemini-test", 1, "ok", 0.1)
    )
    stored = await store.list_usage(job.id)
    assert [e.record for e in stored] == records
    with pytest.raises(ValueError):
        await store.insert_usage(
            UsageRecord(CallLabels("analyze_video", ALICE, "job-7"), "m", 1, "ok", 0.1)
        )


# -- batches (Batch API delivery) --------------------------------------------------------------

#: A window no test waits out: only a full batch is gathered.
LONG_WINDOW_S = 3600.0


def batch_job(dedupe: str, **fields: Any) -> NewJob:
    return new_job(dedupe=dedupe, delivery=Delivery.BATCH, **fields)


async def test_batch_delivery_is_gathered_never_claimed_by_the_workers(store: Store) -> None:
    first = (await store.join_or_create_active_job(batch_job("b1"))).job
    second = (await store.join_or_create_active_job(batch_job("b2", priority=3))).job
    interactive = (await store.join_or_create_active_job(new_job(dedupe="i"))).job
    assert first.delivery is Delivery.BATCH and interactive.delivery is Delivery.INTERACTIVE

    claimed = await store.claim_batch("w1", 10, LEASE_S)
    assert [job.id for job in claimed] == [interactive.id]

    gathered = await store.gather_batch("replica-a", LEASE_S, 2, LONG_WINDOW_S)
    assert gathered is not None
    batch, jobs = gathered
    # Full, so sent without waiting for the window; highest priority first.
    assert [job.id for job in jobs] == [second.id, first.id] == list(batch.job_ids)
    assert (batch.model, batch.name, batch.locked_by, batch.attempts) == (
        "gemini-test",
        None,
        "replica-a",
        1,
    )
    for job in jobs:
        assert (job.status, job.locked_by, job.attempts) == (JobStatus.RUNNING, batch.holder, 1)
    assert await store.gather_batch("replica-a", LEASE_S, 2, LONG_WINDOW_S) is None


async def test_a_batch_is_gathered_when_full_or_when_its_oldest_job_waited_the_window(
    store: Store,
) -> None:
    job = (await store.join_or_create_active_job(batch_job("w"))).job
    assert await store.gather_batch("w1", LEASE_S, 5, LONG_WINDOW_S) is None
    gathered = await store.gather_batch("w1", LEASE_S, 5, 0.0)
    assert gathered is not None and gathered[0].job_ids == (job.id,)


async def test_a_batch_holds_one_model_the_one_waiting_longest(store: Store) -> None:
    older = [
        (await store.join_or_create_active_job(batch_job(f"a{i}", model="model-a"))).job
        for i in range(2)
    ]
    newer = (await store.join_or_create_active_job(batch_job("b", model="model-b"))).job
    first = await store.gather_batch("w1", LEASE_S, 10, 0.0)
    second = await store.gather_batch("w1", LEASE_S, 10, 0.0)
    assert first is not None and second is not None
    assert (first[0].model, set(first[0].job_ids)) == ("model-a", {j.id for j in older})
    assert (second[0].model, second[0].job_ids) == ("model-b", (newer.id,))


async def test_concurrent_gathers_never_share_a_job(replicas: tuple[Store, Store]) -> None:
    a, b = replicas
    for i in range(6):
        await a.join_or_create_active_job(batch_job(f"c{i}"))
    gathered = await asyncio.gather(
        a.gather_batch("replica-a", LEASE_S, 3, 0.0), b.gather_batch("replica-b", LEASE_S, 3, 0.0)
    )
    ids = [job_id for g in gathered if g is not None for job_id in g[0].job_ids]
    assert len(ids) == len(set(ids)) == 6


async def test_jobs_in_a_batch_outlive_rescue_and_end_through_the_batch(store: Store) -> None:
    jobs = [(await store.join_or_create_active_job(batch_job(f"e{i}"))).job for i in range(3)]
    gathered = await store.gather_batch("w1", LEASE_S, 3, 0.0)
    assert gathered is not None
    batch = gathered[0]
    held = {job.id: Claim(job.id, batch.holder, job.fence) for job in gathered[1]}
    done, retried, cancelled = (held[job.id] for job in jobs)

    # The batch holds them: no rescue, no claim by a waiter on another replica.
    assert await store.rescue_expired_leases(10) == 0
    assert await store.claim_job(done.job_id, "w2", LEASE_S) is None

    progress = JobProgress(0.0, "batch", "in batch batches/x: running")
    assert await store.record_batch_progress(batch, progress) == 3
    assert (await store.get_job(done.job_id, ALICE)).progress == progress

    await store.cancel_job(cancelled.job_id, ALICE)
    with pytest.raises(LeaseLost):  # a cancelled job's line is ignored
        await store.complete_job(cancelled, REF)
    assert (await store.complete_job(done, REF)).status is JobStatus.SUCCEEDED
    error = JobError(Unavailable.reason, "the line failed")
    again = await store.fail_job(retried, error, retry_after_s=0.0)
    assert (again.status, again.delivery, again.attempts) == (JobStatus.QUEUED, Delivery.BATCH, 1)
    assert await store.record_batch_progress(batch, progress) == 0

    executions = await store.batch_executions(batch)
    assert [(j.id, j.status) for j in executions] == [
        (done.job_id, JobStatus.SUCCEEDED),
        (retried.job_id, JobStatus.QUEUED),
        (cancelled.job_id, JobStatus.CANCELLED),
    ]


async def test_a_batch_whose_lease_lapsed_is_taken_over(replicas: tuple[Store, Store]) -> None:
    a, b = replicas
    jobs = [(await a.join_or_create_active_job(batch_job(f"t{i}"))).job for i in range(2)]
    gathered = await a.gather_batch("replica-a", SHORT_LEASE_S, 2, 0.0)
    assert gathered is not None
    batch = gathered[0]
    assert await b.take_over_batches("replica-b", LEASE_S, 10) == []

    async def taken() -> list[Any] | None:
        return await b.take_over_batches("replica-b", LEASE_S, 10) or None

    (taken_over,) = await eventually(taken)
    assert (taken_over.id, taken_over.locked_by, taken_over.attempts) == (
        batch.id,
        "replica-b",
        2,
    )
    with pytest.raises(BatchLost):
        await a.heartbeat_batch(batch.id, "replica-a", LEASE_S)

    order = (jobs[1].id, jobs[0].id)
    named = await b.heartbeat_batch(
        batch.id, "replica-b", LEASE_S, name="batches/abc", job_ids=order
    )
    assert (named.name, named.job_ids) == ("batches/abc", order)
    assert named.submitted_at is not None
    kept = await b.heartbeat_batch(batch.id, "replica-b", LEASE_S)
    assert (kept.name, kept.job_ids, kept.submitted_at) == (
        "batches/abc",
        order,
        named.submitted_at,
    )
    assert [job.id for job in await b.batch_executions(kept)] == list(order)

    with pytest.raises(BatchLost):
        await a.finish_batch(batch.id, "replica-a")
    await b.finish_batch(batch.id, "replica-b")
    with pytest.raises(BatchLost):
        await b.finish_batch(batch.id, "replica-b")
    assert await b.take_over_batches("replica-b", LEASE_S, 10) == []


async def test_a_shared_execution_in_a_batch_ends_for_every_handle(store: Store) -> None:
    mine = (await store.join_or_create_active_job(batch_job("s", shared=True))).job
    theirs = (await store.join_or_create_active_job(batch_job("s", shared=True, user_id=BOB))).job
    gathered = await store.gather_batch("w1", LEASE_S, 1, LONG_WINDOW_S)
    assert gathered is not None
    batch, (execution,) = gathered
    assert execution.id == mine.execution_id == theirs.execution_id
    assert (await store.get_job(theirs.id, BOB)).status is JobStatus.RUNNING
    await store.complete_job(Claim(execution.id, batch.holder, execution.fence), REF)
    for handle, user in ((mine, ALICE), (theirs, BOB)):
        assert (await store.get_job(handle.id, user)).result == REF


@pytest.fixture(params=["memory", "postgres"])
def kind(request: pytest.FixtureRequest) -> str:
    """A store kind, for tests that build their own stores."""
    param: str = request.param
    return param


# -- what executions spent -------------------------------------------------------------------

SPEND = JobSpend(Usage(prompt_tokens=100, output_tokens=20, total_tokens=120), 0.00125, 2)


async def test_an_execution_keeps_what_every_attempt_spent(store: Store) -> None:
    job = await running(store, new_job(max_attempts=3))
    assert job.spend == NO_SPEND and not job.cached and not job.coalesced
    failed = await store.fail_job(job.claim, JobError("UPSTREAM_UNAVAILABLE", "x"), 0, spend=SPEND)
    assert failed.spend == SPEND
    second = await store.claim_job(job.id, "w1", LEASE_S)
    assert second is not None
    await store.defer_job(second.claim, JobError("RATE_LIMITED", "wait"), 0, spend=SPEND)
    third = await store.claim_job(job.id, "w1", LEASE_S)
    assert third is not None
    done = await store.complete_job(third.claim, REF, spend=SPEND, result_cost_usd=0.00125)
    assert done.spend == SPEND + SPEND + SPEND
    assert done.spend.usage.prompt_tokens == 300 and done.spend.upstream_calls == 6
    assert (done.cached, done.result_cost_usd) == (False, 0.00125)
    assert await store.get_job(job.id, ALICE) == done


async def test_an_execution_completed_from_the_cache_says_so(store: Store) -> None:
    job = await running(store, new_job())
    done = await store.complete_job(job.claim, REF, cached=True, result_cost_usd=0.5)
    assert done.cached and done.spend == NO_SPEND and done.result_cost_usd == 0.5


async def test_handles_mirror_the_spend_and_say_who_joined(store: Store) -> None:
    alice = (await store.join_or_create_active_job(new_job(ALICE, shared=True))).job
    bob = (await store.join_or_create_active_job(new_job(BOB, shared=True))).job
    assert not alice.coalesced and bob.coalesced
    claimed = await store.claim_job(alice.execution_id, "w1", LEASE_S)
    assert claimed is not None
    await store.complete_job(claimed.claim, REF, spend=SPEND, result_cost_usd=0.00125)
    for handle, joined in ((alice, False), (bob, True)):
        seen = await store.get_job(handle.id, handle.user_id or "")
        assert seen.status is JobStatus.SUCCEEDED
        assert (seen.spend, seen.result_cost_usd, seen.coalesced) == (SPEND, 0.00125, joined)
    # A handle made after the execution spent something starts from what it spent.
    running_again = await running(store, new_job(ALICE, "again", shared=True))
    await store.fail_job(running_again.claim, JobError("UNAVAILABLE", "x"), 0, spend=SPEND)
    carol = (await store.join_or_create_active_job(new_job("user-carol", "again", shared=True))).job
    assert carol.coalesced and carol.spend == SPEND


# -- the usage ledger's report, roll-up and retention ----------------------------------------

#: Fixed days: the ledger's arithmetic depends on the days rows carry, never on today's date.
DAY = date(2031, 3, 14)


def at(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=UTC)


def call(
    user: str = ALICE, op: str = "analyze_video", model: str = "gemini-test", n: int = 1
) -> UsageRecord:
    return UsageRecord(
        CallLabels(op, user),
        model,
        1,
        "ok",
        0.3,
        Usage(
            prompt_tokens=10 * n,
            cached_prompt_tokens=n,
            output_tokens=n,
            thinking_tokens=2 * n,
            image_output_tokens=0,
            total_tokens=13 * n,
        ),
        cost_usd=n / 1000,
    )


def saving(
    outcome: str, user: str = ALICE, op: str = "analyze_video", saved: float = 0.002
) -> UsageRecord:
    return UsageRecord(CallLabels(op, user), "gemini-test", 0, outcome, 0.0, saved_usd=saved)


def total(*records: UsageRecord) -> UsageTotals:
    return sum((UsageTotals.of(r) for r in records), UsageTotals())


def close(a: UsageTotals, b: UsageTotals) -> bool:
    """Equal, dollar amounts to the ledger's 12 decimals."""
    return (
        (a.upstream_calls, a.usage, a.cache_hits, a.joins)
        == (b.upstream_calls, b.usage, b.cache_hits, b.joins)
        and a.cost_usd == pytest.approx(b.cost_usd, abs=1e-12)
        and a.saved_usd == pytest.approx(b.saved_usd, abs=1e-12)
    )


def same_days(got: list[UsageDay], want: dict[tuple[date, str, str], UsageTotals]) -> bool:
    return [(d.day, d.op, d.model) for d in got] == sorted(want) and all(
        close(d.totals, want[(d.day, d.op, d.model)]) for d in got
    )


async def test_usage_is_summed_by_day_operation_and_model(store: Store) -> None:
    next_day = DAY + timedelta(days=1)
    rows = [
        (call(n=1), at(DAY, 0, 0)),
        (call(n=2), at(DAY, 23, 59)),
        (call(model="gemini-image", op="generate_thumbnail", n=3), at(DAY, 12)),
        (saving(CACHE_HIT), at(DAY, 13)),
        (saving(COALESCED, saved=0.004), at(DAY, 14)),
        (call(n=4), at(next_day, 0, 0)),
        (call(BOB, n=5), at(DAY, 10)),
        (call(n=6), at(DAY - timedelta(days=1), 23, 59)),  # before the range
    ]
    await store.insert_usage_entries([UsageEntry(r, t) for r, t in rows])
    got = await store.usage_by_day(ALICE, at(DAY, 0), at(next_day + timedelta(days=1), 0))
    assert same_days(
        got,
        {
            (DAY, "analyze_video", "gemini-test"): total(
                call(n=1), call(n=2), saving(CACHE_HIT), saving(COALESCED, saved=0.004)
            ),
            (DAY, "generate_thumbnail", "gemini-image"): total(
                call(model="gemini-image", op="generate_thumbnail", n=3)
            ),
            (next_day, "analyze_video", "gemini-test"): total(call(n=4)),
        },
    )
    (first,) = [d for d in got if d.day == DAY and d.op == "analyze_video"]
    assert (first.totals.upstream_calls, first.totals.cache_hits, first.totals.joins) == (2, 1, 1)
    # Raw rows count by their time: the range ends are exact.
    late = await store.usage_by_day(ALICE, at(DAY, 23, 0), at(next_day, 0))
    assert same_days(late, {(DAY, "analyze_video", "gemini-test"): total(call(n=2))})
    fleet = await store.usage_by_day(None, at(DAY, 10), at(DAY, 10, 1))
    assert same_days(fleet, {(DAY, "analyze_video", "gemini-test"): total(call(BOB, n=5))})
    assert await store.usage_by_day("user-nobody", at(DAY, 0), at(next_day, 0)) == []


async def test_a_row_of_several_records_counts_each_of_them(store: Store) -> None:
    job = (await store.join_or_create_active_job(new_job())).job
    in_job = CallLabels("analyze_video", ALICE, job.id)
    # Folded savings rows (the ledger writer's): hits and joins of one second, their savings
    # summed; upstream attempts and a job's rows stand for one record each.
    rows = [
        UsageEntry(saving(CACHE_HIT, saved=0.006), at(DAY, 9), 3),
        UsageEntry(saving(COALESCED, saved=0.004), at(DAY, 9), 2),
        UsageEntry(call(n=1), at(DAY, 9)),
        UsageEntry(saving(CACHE_HIT, BOB, saved=0.5), at(DAY, 10), 7),
        UsageEntry(dataclasses.replace(call(n=2), labels=in_job), at(DAY, 11)),
    ]
    await store.insert_usage_entries(rows)
    whole = (at(DAY, 0), at(DAY + timedelta(days=1), 0))

    (alice,) = await store.usage_by_day(ALICE, *whole)
    totals = alice.totals
    assert (totals.upstream_calls, totals.cache_hits, totals.joins) == (2, 3, 2)
    assert totals.saved_usd == pytest.approx(0.010, abs=1e-12)
    (fleet,) = await store.usage_by_day(None, *whole)
    assert (fleet.totals.upstream_calls, fleet.totals.cache_hits) == (2, 10)
    assert [e.events for e in await store.list_usage(job.id)] == [1]

    # Rolled up, the daily totals sum the records too.
    assert await store.roll_up_usage(DAY + timedelta(days=1), 100) == 5
    assert await store.usage_by_day(None, *whole) == [fleet]
    (rolled,) = await store.usage_by_day(ALICE, *whole)
    assert (rolled.totals.upstream_calls, rolled.totals.cache_hits, rolled.totals.joins) == (
        2,
        3,
        2,
    )

    # A row stands for at least one record; a write with one that does not writes nothing.
    late = at(DAY + timedelta(days=1), 9)
    with pytest.raises(ValueError, match="at least one record"):
        await store.insert_usage_entries(
            [UsageEntry(call(n=3), late), UsageEntry(saving(CACHE_HIT), late, 0)]
        )
    assert await store.usage_by_day(None, late, late + timedelta(hours=1)) == []


async def test_old_rows_roll_up_into_daily_totals_exactly_once(store: Store) -> None:
    job = (await store.join_or_create_active_job(new_job())).job
    days = [DAY - timedelta(days=k) for k in (2, 1, 0)]
    in_job = UsageRecord(
        CallLabels("analyze_video", ALICE, job.id), "gemini-test", 1, "ok", 0.1, cost_usd=0.25
    )
    rows = [(call(n=k + 1), at(day, 6 + k)) for k, day in enumerate(days) for _ in range(3)]
    rows += [(saving(CACHE_HIT), at(days[0], 9)), (call(BOB, n=7), at(days[1], 9))]
    rows += [(in_job, at(days[0], 10))]
    await store.insert_usage_entries([UsageEntry(r, t) for r, t in rows])
    everything = (at(days[0], 0), at(DAY + timedelta(days=1), 0))
    before = await store.usage_by_day(None, *everything)

    moved = [await store.roll_up_usage(DAY, 3) for _ in range(4)]

    # Batches of 3: the 9 rows of the two days before DAY move, DAY's stay raw.
    assert moved == [3, 3, 3, 0]
    assert await store.usage_by_day(None, *everything) == before
    assert await store.list_usage(job.id) == []  # the rolled-up rows left the raw ledger
    # A late row of a rolled-up day is added to its total on the next roll-up.
    await store.insert_usage_entries([UsageEntry(call(n=9), at(days[0], 20))])
    assert await store.roll_up_usage(DAY, 100) == 1
    alice = await store.usage_by_day(ALICE, *everything)
    first = [d for d in alice if d.day == days[0]]
    assert len(first) == 1
    assert close(
        first[0].totals,
        total(call(n=1), call(n=1), call(n=1), saving(CACHE_HIT), in_job, call(n=9)),
    )
    # Rolled-up days count whole when the range covers any part of them; raw days by time.
    evening = await store.usage_by_day(ALICE, at(days[1], 23), at(DAY, 8, 30))
    assert same_days(
        evening,
        {
            (days[1], "analyze_video", "gemini-test"): total(*[call(n=2)] * 3),
            (DAY, "analyze_video", "gemini-test"): total(*[call(n=3)] * 3),
        },
    )
    assert await store.usage_by_day(ALICE, at(DAY, 8, 30), at(DAY, 9)) == []


async def test_daily_totals_past_their_retention_are_deleted(store: Store) -> None:
    days = [DAY - timedelta(days=k) for k in (3, 2, 1)]
    rows = [(call(user, n=1), at(day, 8)) for day in days for user in (ALICE, BOB)]
    await store.insert_usage_entries([UsageEntry(r, t) for r, t in rows])
    assert await store.roll_up_usage(DAY, 100) == 6
    assert [await store.purge_usage_days(days[2], 3) for _ in range(3)] == [3, 1, 0]
    left = await store.usage_by_day(None, at(days[0], 0), at(DAY, 0))
    assert [d.day for d in left] == [days[2]] and left[0].totals.upstream_calls == 2


async def test_the_maintenance_keeps_the_configured_days(store: Store) -> None:
    settings = UsageSettings(raw_retention_days=2, daily_retention_days=4)
    rows = [(call(n=1), at(DAY - timedelta(days=k), 12)) for k in range(7)]
    await store.insert_usage_entries([UsageEntry(r, t) for r, t in rows])

    assert await roll_up_usage(store, settings, DAY, batch_size=2) == (4, 2)

    # DAY and the two days before it stay raw, the two before those are daily totals (counted
    # whole), and the older ones are gone.
    days = await store.usage_by_day(ALICE, at(DAY - timedelta(days=10), 0), at(DAY, 23))
    assert [d.day for d in days] == [DAY - timedelta(days=k) for k in range(4, -1, -1)]
    raw = await store.usage_by_day(ALICE, at(DAY - timedelta(days=2), 11), at(DAY, 23))
    assert len(raw) == 3
    rolled_day = DAY - timedelta(days=3)
    (whole,) = await store.usage_by_day(ALICE, at(rolled_day, 13), at(DAY - timedelta(days=2), 11))
    assert whole.day == rolled_day and whole.totals.upstream_calls == 1
