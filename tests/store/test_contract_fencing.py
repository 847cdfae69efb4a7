"""The store contract, continued: fencing tokens, dead letters and their re-drive, listing by
error reason, retention by status. Every test runs against MemoryStore and PostgresStore alike
(the `store` and `replicas` fixtures of tests/store)."""

from __future__ import annotations

import asyncio

import pytest

from gateway.errors import FailedPrecondition, NotFound
from gateway.model import CallLabels, Usage, UsageRecord
from gateway.store import Claim, Job, JobError, JobProgress, JobStatus, LeaseLost, Store
from gateway.store.base import ABANDONED_OUTCOME, MAX_ERROR_HISTORY, JobFilter, lease_expired_error
from gateway.store.maintenance import purge_expired
from tests.fixtures.stores import KINDS, MakeStore

from .test_contract import (
    ALICE,
    BOB,
    LEASE_S,
    REF,
    SHORT_LEASE_S,
    eventually,
    key,
    new_job,
    running,
)

UNAVAILABLE = JobError("UPSTREAM_UNAVAILABLE", "Gemini is overloaded")
BLOCKED = JobError("SAFETY_BLOCKED", "the thumbnail shows a weapon")


async def dead_letter(store: Store, *, attempts: int = 1, **fields: object) -> Job:
    """A job of Alice's that failed each of its `attempts` (the last for good)."""
    job = await running(store, new_job(max_attempts=attempts, **fields))
    for attempt in range(1, attempts + 1):
        failed = await store.fail_job(job.claim, UNAVAILABLE if attempt < attempts else BLOCKED, 0)
        if attempt < attempts:
            again = await store.claim_job(job.id, f"w{attempt + 1}", LEASE_S)
            assert again is not None
            job = again
    assert failed.status is JobStatus.FAILED
    return failed


async def lapse(store: Store, job: Job) -> None:
    """Lets `job`'s lease lapse and has it rescued."""
    await store.heartbeat_job(job.claim, SHORT_LEASE_S)
    await asyncio.sleep(SHORT_LEASE_S + 0.1)
    assert await store.rescue_expired_leases(10) >= 1


# -- fencing ---------------------------------------------------------------------------------


async def test_every_claim_gets_the_next_fencing_token(store: Store) -> None:
    job = (await store.join_or_create_active_job(new_job(max_attempts=3))).job
    assert job.fence == 0
    first = await store.claim_job(job.id, "w1", LEASE_S)
    assert first is not None and first.fence == 1
    await store.fail_job(first.claim, UNAVAILABLE, retry_after_s=0)
    second = await store.claim_job(job.id, "w1", LEASE_S)
    assert second is not None and second.fence == 2
    assert second.claim == Claim(job.id, "w1", 2)


async def test_a_stale_claim_of_the_same_worker_writes_nothing(store: Store) -> None:
    # The same worker id claimed twice (a replica that lost its lease and claimed the job
    # again): only the token tells its first attempt from its second.
    first = await running(store, new_job(max_attempts=3))
    await lapse(store, first)
    second = await store.claim_job(first.id, "w1", LEASE_S)
    assert second is not None and second.locked_by == first.locked_by
    stale = first.claim

    writes = [
        store.heartbeat_job(stale, LEASE_S),
        store.heartbeat_job(stale, LEASE_S, JobProgress(0.9, "generating")),
        store.complete_job(stale, REF),
        store.fail_job(stale, UNAVAILABLE),
        store.defer_job(stale, UNAVAILABLE, 0),
        store.put_result(key("k"), op="x", scope="user", model="m", ref=REF, ttl_s=60, claim=stale),
    ]
    for write in writes:
        with pytest.raises(LeaseLost) as lost:
            await write
        # The refusal says where the execution went: running under the newer claim.
        assert lost.value.job is not None and lost.value.job.fence == second.fence

    now = await store.get_job(first.id, ALICE)
    assert (now.status, now.fence, now.progress, now.result) == (JobStatus.RUNNING, 2, None, None)
    assert await store.get_result(key("k")) is None
    assert (await store.complete_job(second.claim, REF)).status is JobStatus.SUCCEEDED


async def test_a_result_row_is_written_under_the_current_claim_only(store: Store) -> None:
    job = await running(store, new_job())
    put = await store.put_result(
        key("r"), op="x", scope="user", model="m", ref=REF, ttl_s=60, claim=job.claim
    )
    assert put.ref == REF and await store.get_result(key("r")) == put
    await store.cancel_job(job.id, ALICE)
    with pytest.raises(LeaseLost) as lost:
        await store.put_result(
            key("late"), op="x", scope="user", model="m", ref=REF, ttl_s=60, claim=job.claim
        )
    assert lost.value.job is not None and lost.value.job.status is JobStatus.CANCELLED
    assert await store.get_result(key("late")) is None


async def test_the_ledger_rows_of_a_lost_claim_read_abandoned_with_their_cost(
    replicas: tuple[Store, Store],
) -> None:
    a, b = replicas
    job = (await a.join_or_create_active_job(new_job(max_attempts=3))).job
    mine = await a.claim_job(job.id, "replica-a", SHORT_LEASE_S)
    assert mine is not None

    def attempt(claim: Claim, outcome: str, cost: float) -> UsageRecord:
        labels = CallLabels("analyze_video", ALICE, job.id, "req", fence=claim.fence)
        return UsageRecord(labels, "gemini-test", 1, outcome, 1.5, Usage(100, 0, 50), cost)

    await a.insert_usage(attempt(mine.claim, "UPSTREAM_UNAVAILABLE", 0.0))
    # Replica a stalls past its lease; b rescues the job and takes it over.
    taken = await eventually(lambda: b.claim_job(job.id, "replica-b", LEASE_S))
    # Replica a's late answer: paid for, recorded, and marked as thrown away.
    await a.insert_usage(attempt(mine.claim, "ok", 0.25))
    await b.insert_usage(attempt(taken.claim, "ok", 0.5))
    await b.complete_job(taken.claim, REF)
    # A row of a claim that ended by its own write keeps its outcome, however late it lands.
    await b.insert_usage(attempt(taken.claim, "UPSTREAM_UNAVAILABLE", 0.0))

    rows = [
        (e.record.outcome, e.record.cost_usd, e.record.labels.fence)
        for e in await b.list_usage(job.id)
    ]
    assert rows == [
        (ABANDONED_OUTCOME, 0.0, 1),  # written before the loss: relabelled
        (ABANDONED_OUTCOME, 0.25, 1),
        ("ok", 0.5, 2),
        ("UPSTREAM_UNAVAILABLE", 0.0, 2),
    ]


async def test_a_cancel_while_running_loses_the_claim_and_its_ledger_rows(store: Store) -> None:
    job = await running(store, new_job())
    labels = CallLabels("analyze_video", ALICE, job.id, "req", fence=job.fence)
    await store.insert_usage(UsageRecord(labels, "gemini-test", 1, "ok", 1.0, Usage(9), 0.1))
    await store.cancel_job(job.id, ALICE)
    await store.insert_usage(UsageRecord(labels, "gemini-test", 2, "CANCELLED", 1.0))
    outside = CallLabels("analyze_video", ALICE, job.id, "req")  # no claim: kept as it is
    await store.insert_usage(UsageRecord(outside, "gemini-test", 1, "ok", 1.0))

    outcomes = [(e.record.outcome, e.record.cost_usd) for e in await store.list_usage(job.id)]
    assert outcomes == [(ABANDONED_OUTCOME, 0.1), (ABANDONED_OUTCOME, 0.0), ("ok", 0.0)]


async def test_the_runner_hears_of_a_cancel_through_the_job_subscription(
    replicas: tuple[Store, Store],
) -> None:
    a, b = replicas
    job = await running(a, new_job())
    await eventually(lambda: _true_or_none(getattr(a, "listening", True)))
    changed = asyncio.Event()
    with a.subscribe_job(job.id, changed):
        changed.clear()
        await b.cancel_job(job.id, ALICE)
        # The store polls every 30 s in these tests: only the job's notification sets this.
        async with asyncio.timeout(10):
            await changed.wait()


async def _true_or_none(value: bool) -> bool | None:
    return True if value else None


# -- dead letters ----------------------------------------------------------------------------


async def test_a_dead_letter_keeps_the_error_of_every_attempt(store: Store) -> None:
    job = await running(store, new_job(max_attempts=3))
    await store.fail_job(job.claim, UNAVAILABLE, retry_after_s=0)
    second = await store.claim_job(job.id, "w2", SHORT_LEASE_S)
    assert second is not None
    await asyncio.sleep(SHORT_LEASE_S + 0.1)
    assert await store.rescue_expired_leases(10) == 1  # w2 stopped answering
    third = await store.claim_job(job.id, "w3", LEASE_S)
    assert third is not None
    failed = await store.fail_job(third.claim, BLOCKED)

    history = [(e.attempt, e.error, e.worker) for e in failed.error_history]
    assert failed.status is JobStatus.FAILED and failed.error == BLOCKED
    assert history == [(1, UNAVAILABLE, "w1"), (2, lease_expired_error(), "w2"), (3, BLOCKED, "w3")]
    times = [e.at for e in failed.error_history]
    assert times == sorted(times) and failed.completed_at is not None
    assert await store.get_job(job.id, ALICE) == failed


async def test_a_deferral_is_not_a_failed_attempt(store: Store) -> None:
    job = await running(store, new_job())
    deferred = await store.defer_job(job.claim, JobError("RATE_LIMITED", "wait"), 0)
    assert deferred.error_history == ()


async def test_the_error_history_keeps_the_most_recent_attempts(store: Store) -> None:
    attempts = MAX_ERROR_HISTORY + 3
    failed = await dead_letter(store, attempts=attempts)
    assert [e.attempt for e in failed.error_history] == list(range(4, attempts + 1))


async def test_handles_show_their_executions_error_history(store: Store) -> None:
    alice = (await store.join_or_create_active_job(new_job(ALICE, shared=True))).job
    execution = await store.claim_job(alice.execution_id, "w1", LEASE_S)
    assert execution is not None
    await store.fail_job(execution.claim, BLOCKED)
    seen = await store.get_job(alice.id, ALICE)
    assert seen.status is JobStatus.FAILED
    assert [(e.attempt, e.error) for e in seen.error_history] == [(1, BLOCKED)]


async def test_jobs_are_listed_by_error_reason_and_operators_see_everyone(store: Store) -> None:
    blocked = await dead_letter(store, dedupe="blocked")
    timed_out = await running(store, new_job(BOB, dedupe="bob"))
    bobs = await store.fail_job(timed_out.claim, JobError("DEADLINE_EXCEEDED", "slow"))
    shared = (await store.join_or_create_active_job(new_job(BOB, "s", shared=True))).job
    await running(store, new_job(dedupe="fine"))

    by_reason = JobFilter(error_reasons=frozenset({"SAFETY_BLOCKED", "DEADLINE_EXCEEDED"}))
    assert [j.id for j in await store.list_jobs(ALICE, by_reason, 10)] == [blocked.id]
    everyone = await store.list_jobs(None, by_reason, 10)
    assert [j.id for j in everyone] == [bobs.id, blocked.id]
    failed = JobFilter(statuses=frozenset({JobStatus.FAILED}))
    assert {j.id for j in await store.list_jobs(None, failed, 10)} == {bobs.id, blocked.id}
    # An operator sees the shared execution behind a handle, and may read it.
    listed = {j.id for j in await store.list_jobs(None, JobFilter(), 10)}
    assert {shared.id, shared.execution_id} <= listed
    assert (await store.get_job(shared.execution_id, None)).user_id is None


# -- re-drive --------------------------------------------------------------------------------


async def test_a_dead_letter_is_redriven_with_a_fresh_attempt_budget(
    replicas: tuple[Store, Store],
) -> None:
    a, b = replicas
    failed = await dead_letter(a, attempts=2)
    await eventually(lambda: _true_or_none(getattr(b, "listening", True)))
    changed = asyncio.Event()
    with b.subscribe_job(failed.id, changed):
        changed.clear()
        redrive = await a.retry_job(failed.id, ALICE, 3)
        async with asyncio.timeout(10):  # watchers hear of it (NOTIFY across replicas)
            await changed.wait()

    job = redrive.job
    assert redrive.redriven and job.id == failed.id
    assert (job.status, job.attempts, job.max_attempts) == (JobStatus.QUEUED, 2, 5)
    assert job.completed_at is None and job.expires_at is None
    assert job.error_history == failed.error_history and job.event_seq == failed.event_seq + 1
    # A watcher resuming after the failure's event sees it come back.
    resumed = await b.wait_for_job_change(failed.id, ALICE, failed.event_seq, 60)
    assert resumed.status is JobStatus.QUEUED
    claimed = await b.claim_job(job.id, "w9", LEASE_S)
    assert claimed is not None and (claimed.attempts, claimed.fence) == (3, 3)
    done = await b.complete_job(claimed.claim, REF)
    assert done.status is JobStatus.SUCCEEDED and len(done.error_history) == 2


async def test_a_redrive_is_idempotent_and_refuses_cancelled_jobs(store: Store) -> None:
    failed = await dead_letter(store)
    first = await store.retry_job(failed.id, ALICE, 3)
    again = await store.retry_job(failed.id, ALICE, 3)
    assert first.redriven and not again.redriven and again.job == first.job

    claimed = await store.claim_job(failed.id, "w1", LEASE_S)
    assert claimed is not None
    assert (await store.retry_job(failed.id, ALICE, 3)) == (claimed, False)
    done = await store.complete_job(claimed.claim, REF)
    assert (await store.retry_job(failed.id, ALICE, 3)) == (done, False)

    cancelled = (await store.join_or_create_active_job(new_job(dedupe="c"))).job
    await store.cancel_job(cancelled.id, ALICE)
    with pytest.raises(FailedPrecondition, match="cancel is final"):
        await store.retry_job(cancelled.id, ALICE, 3)


async def test_only_the_owner_or_an_operator_redrives(store: Store) -> None:
    failed = await dead_letter(store)
    with pytest.raises(NotFound):
        await store.retry_job(failed.id, BOB, 3)
    with pytest.raises(NotFound):
        await store.retry_job("not-a-job", None, 3)
    assert (await store.retry_job(failed.id, None, 3)).redriven


async def test_a_redrive_refuses_a_request_that_runs_again_already(store: Store) -> None:
    failed = await dead_letter(store, dedupe="same")
    again = (await store.join_or_create_active_job(new_job(dedupe="same"))).job
    assert again.id != failed.id
    with pytest.raises(FailedPrecondition, match=again.id):
        await store.retry_job(failed.id, ALICE, 3)
    assert (await store.get_job(failed.id, ALICE)).status is JobStatus.FAILED


async def test_a_handle_is_redriven_through_its_execution(store: Store) -> None:
    alice = (await store.join_or_create_active_job(new_job(ALICE, shared=True))).job
    bob = (await store.join_or_create_active_job(new_job(BOB, shared=True))).job
    execution = await store.claim_job(alice.execution_id, "w1", LEASE_S)
    assert execution is not None and execution.started_by == ALICE
    await store.fail_job(execution.claim, BLOCKED)

    bobs = await store.retry_job(bob.id, BOB, 2)

    # Bob's job comes back on the same execution, which now runs as (and is paid by) Bob...
    assert bobs.redriven and bobs.job.id == bob.id and bobs.job.status is JobStatus.QUEUED
    assert bobs.job.execution_id == alice.execution_id
    now = await store.get_job(alice.execution_id, None)
    assert (now.status, now.started_by, now.max_attempts) == (JobStatus.QUEUED, BOB, 3)
    # ...while Alice's stays failed until she asks too; then she follows it again.
    assert (await store.get_job(alice.id, ALICE)).status is JobStatus.FAILED
    alices = await store.retry_job(alice.id, ALICE, 2)
    assert alices.redriven and alices.job.status is JobStatus.QUEUED
    assert (await store.get_job(alice.execution_id, None)).max_attempts == 3  # not re-queued
    running_again = await store.claim_job(alice.execution_id, "w2", LEASE_S)
    assert running_again is not None
    await store.complete_job(running_again.claim, REF)
    for job_id, user in ((alice.id, ALICE), (bob.id, BOB)):
        assert (await store.get_job(job_id, user)).result == REF


async def test_an_operator_redrive_brings_back_the_handles_that_failed_with_it(
    store: Store,
) -> None:
    alice = (await store.join_or_create_active_job(new_job(ALICE, shared=True))).job
    bob = (await store.join_or_create_active_job(new_job(BOB, shared=True))).job
    carol = (await store.join_or_create_active_job(new_job("user-carol", shared=True))).job
    await store.cancel_job(carol.id, "user-carol")  # she left before it failed
    execution = await store.claim_job(alice.execution_id, "w1", LEASE_S)
    assert execution is not None
    await store.fail_job(execution.claim, BLOCKED)

    redrive = await store.retry_job(alice.execution_id, None, 2)

    assert redrive.redriven and redrive.job.status is JobStatus.QUEUED
    assert redrive.job.started_by == ALICE  # an operator's re-drive changes no payer
    statuses = [
        (await store.get_job(job_id, user)).status
        for job_id, user in ((alice.id, ALICE), (bob.id, BOB), (carol.id, "user-carol"))
    ]
    assert statuses == [JobStatus.QUEUED, JobStatus.QUEUED, JobStatus.CANCELLED]


async def test_an_operator_cancel_of_a_shared_execution_reaches_its_handles(store: Store) -> None:
    alice = (await store.join_or_create_active_job(new_job(ALICE, shared=True))).job
    bob = (await store.join_or_create_active_job(new_job(BOB, shared=True))).job

    cancelled = await store.cancel_job(alice.execution_id, None)

    assert cancelled.status is JobStatus.CANCELLED
    for job_id, user in ((alice.id, ALICE), (bob.id, BOB)):
        assert (await store.get_job(job_id, user)).status is JobStatus.CANCELLED


# -- retention by status ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_dead_letters_are_kept_longer_than_other_finished_jobs(
    make_store: MakeStore, kind: str
) -> None:
    store = await make_store(
        kind, job_retention_s=0.01, cancelled_job_retention_s=0.01, failed_job_retention_s=3600
    )
    done = await running(store, new_job(dedupe="done"))
    await store.complete_job(done.claim, REF)
    failed = await dead_letter(store, dedupe="failed")
    cancelled = (await store.join_or_create_active_job(new_job(dedupe="cancelled"))).job
    await store.cancel_job(cancelled.id, ALICE)
    await asyncio.sleep(0.05)

    _, purged = await purge_expired(store, batch_size=1)

    assert purged == {JobStatus.SUCCEEDED: 1, JobStatus.CANCELLED: 1}
    assert (await store.get_job(failed.id, ALICE)).status is JobStatus.FAILED
    assert failed.expires_at is not None and failed.completed_at is not None
    assert (failed.expires_at - failed.completed_at).total_seconds() == pytest.approx(3600)


async def test_an_operator_purges_finished_jobs_older_than_an_age(store: Store) -> None:
    failed = await dead_letter(store, dedupe="failed")
    done = await running(store, new_job(dedupe="done"))
    await store.complete_job(done.claim, REF)
    active = (await store.join_or_create_active_job(new_job(dedupe="active"))).job
    await asyncio.sleep(0.05)

    assert await store.purge_finished_jobs(10, finished_before_s=3600) == {}
    only_failed = frozenset({JobStatus.FAILED})
    purged = await store.purge_finished_jobs(10, finished_before_s=0.01, statuses=only_failed)
    assert purged == {JobStatus.FAILED: 1}
    with pytest.raises(NotFound):
        await store.get_job(failed.id, ALICE)
    assert await store.purge_finished_jobs(10, finished_before_s=0.01) == {JobStatus.SUCCEEDED: 1}
    assert (await store.get_job(active.id, ALICE)).active
