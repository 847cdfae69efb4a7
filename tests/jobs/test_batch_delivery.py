"""Batch delivery end to end on PostgreSQL: jobs submitted through the gRPC JobService with
`delivery` BATCH are gathered into one Gemini Batch API batch (the real google-genai SDK against
the emulator over HTTP), and each completes from its line, billed at batch prices and settled
against the budgets; cached and in-flight work never enters a batch; cancels, failed lines, and a
replica killed with its batch under way (`kill -9`, another replica process finishing the batch
from its stored name). One case runs on the embedded store.

Jobs are submitted through a gateway without workers (no batcher), then a gateway with workers
gathers them: every job is due when the first gather looks, so a batch holds them all however
fast the submits were. `batch_hold` keeps the emulator's batches RUNNING while a test acts.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import grpc
import pytest
from viewbait.ai.v1 import job_pb2, job_service_pb2, operations_pb2

from gateway import operations
from gateway.config import BatchSettings, BudgetSettings, PeriodBudgets, StoreSettings, Tier
from gateway.emulator import EmulatorServer
from gateway.errors import BudgetExceeded, UpstreamRejected, UpstreamUnavailable
from gateway.gemini import GeminiClient
from gateway.operations import codec
from gateway.store import UsageEntry
from gateway.store.base import ABANDONED_OUTCOME
from gateway.usage import PriceBook
from tests.fixtures.gateways import as_user, eventually
from tests.fixtures.stores import DATABASE_URL, store_settings

from .test_jobs import (
    CANCELLED,
    RUNNING,
    SUCCEEDED,
    TIMEOUT_S,
    Jobs,
    settings,
    status_code,
    video,
)

FAILED = job_pb2.JOB_STATUS_FAILED
BATCH = job_service_pb2.DELIVERY_BATCH
VIDEOS = ("aaaaaaaaaa1", "bbbbbbbbbb2", "ccccccccccc")
#: Polls quickly; batches are sent when full (the window is never waited out) or, with
#: `window`, as soon as anything is due.
FAST = BatchSettings(gather_window_s=3600, max_batch_size=len(VIDEOS), poll_interval_s=0.05)


def batched(video_id: str) -> job_service_pb2.SubmitJobRequest:
    request: job_service_pb2.SubmitJobRequest = video(video_id)
    request.delivery = BATCH
    return request


@pytest.fixture
def store(pg_schema: str) -> StoreSettings:
    return store_settings(pg_schema, migrate_on_start=True)


async def submitter(start_gateway: Any, emulator: EmulatorServer, tmp: Path, store: Any) -> Jobs:
    """A replica that queues jobs and runs none (no workers, no batcher)."""
    return Jobs(await start_gateway(settings(emulator, tmp, store, workers=0, batch=FAST)))


async def worker(
    start_gateway: Any, emulator: EmulatorServer, tmp: Path, store: Any, **batch: Any
) -> Jobs:
    """A replica with job workers and a batcher."""
    options = FAST.model_copy(update=batch)
    return Jobs(await start_gateway(settings(emulator, tmp, store, batch=options)))


async def usage(jobs: Jobs, job_id: str, rows: int = 1) -> list[UsageEntry]:
    """The job's ledger once it holds `rows` rows (each process writes its ledger in the
    background, within a flush interval)."""
    store = jobs.running.server.store
    assert store is not None
    for _ in range(TIMEOUT_S * 20):
        entries = await store.list_usage(job_id)
        if len(entries) >= rows:
            return list(entries)
        await asyncio.sleep(0.05)
    raise AssertionError(f"fewer than {rows} usage rows recorded for job {job_id}")


async def until_batch_submitted(jobs: Jobs, job_id: str) -> None:
    """Until the job's batch was sent (its progress names the batch)."""
    async for event in jobs.watch(job_id):
        if event.job.progress.stage == "batch":
            return
    raise AssertionError(f"job {job_id} ended before its batch was sent")


async def test_batch_jobs_complete_from_one_batch_at_batch_prices(
    start_gateway: Any, emulator: EmulatorServer, tmp_path: Path, store: StoreSettings
) -> None:
    jobs = await submitter(start_gateway, emulator, tmp_path, store)
    submitted = [await jobs.submit(batched(v)) for v in VIDEOS]
    await worker(start_gateway, emulator, tmp_path, store)

    finals = [(await jobs.watch_to_end(s.job.id))[-1].job for s in submitted]

    assert [f.status for f in finals] == [SUCCEEDED] * len(VIDEOS)
    assert all(f.analyze_video.summary for f in finals)
    stats = emulator.stats()
    assert [(b["lines"], b["state"]) for b in stats.batches] == [
        (len(VIDEOS), "BATCH_STATE_SUCCEEDED")
    ]
    assert stats.count() == 0  # no generateContent call for any of them

    # The same request answered interactively (another user: no cache) costs twice as much,
    # for the same tokens: the ledger prices batch lines at the batch discount.
    interactive = await jobs.submit(video(VIDEOS[0]), user="user-b")
    await jobs.watch_to_end(interactive.job.id, user="user-b")
    (batch_row,) = await usage(jobs, submitted[0].job.id)
    (interactive_row,) = await usage(jobs, interactive.job.id)
    assert batch_row.record.outcome == interactive_row.record.outcome == "ok"
    assert batch_row.record.usage == interactive_row.record.usage
    assert batch_row.record.cost_usd == pytest.approx(interactive_row.record.cost_usd * 0.5)
    price = PriceBook(jobs.running.server.settings.gemini.prices)
    assert interactive_row.record.cost_usd == pytest.approx(
        price.cost_usd(interactive_row.record.model, interactive_row.record.usage)
    )
    # And the batch's result was cached as usual: asked again, it answers from the cache.
    unary = await jobs.running.stub.AnalyzeVideo(
        video(VIDEOS[1]).analyze_video, metadata=as_user(), timeout=TIMEOUT_S
    )
    assert unary.metadata.cached and unary.result == finals[1].analyze_video


async def test_cached_and_in_flight_work_never_enters_a_batch(
    start_gateway: Any, emulator: EmulatorServer, tmp_path: Path, store: StoreSettings
) -> None:
    jobs = await submitter(start_gateway, emulator, tmp_path, store)
    cached_video, in_flight_video, fresh_video = VIDEOS
    # Cached: answered once interactively.
    await jobs.running.stub.AnalyzeVideo(
        video(cached_video).analyze_video, metadata=as_user(), timeout=TIMEOUT_S
    )
    # In flight: an interactive job of the same request, still queued.
    interactive = await jobs.submit(video(in_flight_video))

    joined = await jobs.submit(batched(in_flight_video))
    from_cache = await jobs.submit(batched(cached_video))
    fresh = await jobs.submit(batched(fresh_video))
    await worker(start_gateway, emulator, tmp_path, store, max_batch_size=2)

    finals = [
        (await jobs.watch_to_end(job_id))[-1].job
        for job_id in (interactive.job.id, from_cache.job.id, fresh.job.id)
    ]

    assert joined.existing and joined.job.id == interactive.job.id
    assert [f.status for f in finals] == [SUCCEEDED] * 3
    # One batch of one line: the cached job was completed from the cache when gathered.
    assert [b["lines"] for b in emulator.stats().batches] == [1]
    assert emulator.stats().count() == 2  # the first unary answer and the interactive job
    # Nothing paid for it: its ledger holds at most what the cache saved.
    assert [e for e in await usage(jobs, from_cache.job.id, rows=0) if e.record.upstream] == []


async def test_a_cancelled_job_inside_a_submitted_batch_ends_cancelled(
    start_gateway: Any, emulator: EmulatorServer, tmp_path: Path, store: StoreSettings
) -> None:
    emulator.set_knobs(batch_hold=True)
    jobs = await submitter(start_gateway, emulator, tmp_path, store)
    kept, cancelled, _ = [await jobs.submit(batched(v)) for v in VIDEOS]
    await worker(start_gateway, emulator, tmp_path, store)
    await until_batch_submitted(jobs, cancelled.job.id)

    assert (await jobs.get(cancelled.job.id)).status == RUNNING
    assert (await jobs.cancel(cancelled.job.id)).status == CANCELLED
    emulator.set_knobs(batch_hold=False)
    done = (await jobs.watch_to_end(kept.job.id))[-1].job

    assert done.status == SUCCEEDED
    assert (await jobs.get(cancelled.job.id)).status == CANCELLED
    # Its line came back and was paid for, but not delivered (nor cached): the attempt of a
    # claim the cancel took, in the ledger as abandoned.
    await eventually(lambda: not emulator.stats().batches[0]["state"].endswith("RUNNING"), "end")
    rows = await eventually_rows(jobs, cancelled.job.id)
    assert [r.record.outcome for r in rows] == [ABANDONED_OUTCOME]
    again = await jobs.submit(batched(VIDEOS[1]))
    assert not again.existing and again.job.id != cancelled.job.id


async def eventually_rows(jobs: Jobs, job_id: str) -> list[UsageEntry]:
    """The job's ledger rows once there are any."""
    return await usage(jobs, job_id)


async def test_a_batch_whose_jobs_are_all_cancelled_is_cancelled(
    start_gateway: Any, emulator: EmulatorServer, tmp_path: Path, store: StoreSettings
) -> None:
    emulator.set_knobs(batch_hold=True)
    jobs = await submitter(start_gateway, emulator, tmp_path, store)
    submitted = [await jobs.submit(batched(v)) for v in VIDEOS]
    await worker(start_gateway, emulator, tmp_path, store)
    await until_batch_submitted(jobs, submitted[0].job.id)

    for s in submitted:
        await jobs.cancel(s.job.id)

    await eventually(
        lambda: emulator.stats().batches[0]["state"] == "BATCH_STATE_CANCELLED", "the cancel"
    )
    assert [(await jobs.get(s.job.id)).status for s in submitted] == [CANCELLED] * 3


async def test_a_failed_line_is_retried_in_a_later_batch_or_fails_its_job(
    start_gateway: Any, emulator: EmulatorServer, tmp_path: Path, store: StoreSettings
) -> None:
    # Line 0 fails retryably (INTERNAL), line 1 for good (INVALID_ARGUMENT), line 2 is fine.
    emulator.set_knobs(batch_hold=True, batch_fail_lines=[0], batch_fail_code=13)
    jobs = await submitter(start_gateway, emulator, tmp_path, store)
    retried = await jobs.submit(batched(VIDEOS[0]))
    await worker(start_gateway, emulator, tmp_path, store, max_batch_size=1)
    await until_batch_submitted(jobs, retried.job.id)
    # The retry's batch is created after this one ends: it fails nothing.
    emulator.set_knobs(batch_hold=False, batch_fail_lines=[])
    retried_final = (await jobs.watch_to_end(retried.job.id))[-1].job

    emulator.set_knobs(batch_fail_lines=[0], batch_fail_code=3)
    rejected = await jobs.submit(batched(VIDEOS[1]))
    rejected_final = (await jobs.watch_to_end(rejected.job.id))[-1].job

    assert (retried_final.status, retried_final.attempts) == (SUCCEEDED, 2)
    outcomes = [r.record.outcome for r in await usage(jobs, retried.job.id, rows=2)]
    assert outcomes == [UpstreamUnavailable.reason, "ok"]
    assert (rejected_final.status, rejected_final.attempts) == (FAILED, 1)
    assert rejected_final.error.reason == UpstreamRejected.reason
    assert "batch" in rejected_final.error.message
    assert [b["lines"] for b in emulator.stats().batches] == [1, 1, 1]
    assert emulator.stats().count() == 0


async def test_image_generation_cannot_be_batched(
    start_gateway: Any, emulator: EmulatorServer, tmp_path: Path, store: StoreSettings
) -> None:
    jobs = await submitter(start_gateway, emulator, tmp_path, store)
    request = job_service_pb2.SubmitJobRequest(
        generate_thumbnail=operations_pb2.GenerateThumbnailRequest(prompt="a treehouse"),
        delivery=BATCH,
    )

    assert await status_code(jobs.submit(request)) is grpc.StatusCode.INVALID_ARGUMENT


async def test_a_replica_killed_with_its_batch_under_way_is_taken_over(
    pg_schema: str,
    start_gateway: Any,
    spawn_gateway: Any,
    emulator: EmulatorServer,
    tmp_path: Path,
    store: StoreSettings,
) -> None:
    emulator.set_knobs(batch_hold=True)
    jobs = await submitter(start_gateway, emulator, tmp_path, store)
    submitted = [await jobs.submit(batched(v)) for v in VIDEOS]
    env = {
        "VIEWBAIT_GEMINI__API_KEY": emulator.api_key,
        "VIEWBAIT_GEMINI__BASE_URL": emulator.base_url,
        "VIEWBAIT_STORE__DATABASE_URL": DATABASE_URL,
        "VIEWBAIT_STORE__SCHEMA": pg_schema,
        "VIEWBAIT_SERVER__LOG_LEVEL": "WARNING",
        # A batch whose replica died is taken over within about a second.
        "VIEWBAIT_EXECUTION__LEASE_S": "1",
        "VIEWBAIT_BATCH__GATHER_WINDOW_S": "3600",
        "VIEWBAIT_BATCH__MAX_BATCH_SIZE": str(len(VIDEOS)),
        "VIEWBAIT_BATCH__POLL_INTERVAL_S": "0.05",
    }
    first = spawn_gateway("worker", **env)
    await until_batch_submitted(jobs, submitted[0].job.id)
    first.process.send_signal(signal.SIGKILL)
    await asyncio.to_thread(first.process.wait, TIMEOUT_S)

    emulator.set_knobs(batch_hold=False)
    spawn_gateway("worker", **env)
    finals = [(await jobs.watch_to_end(s.job.id))[-1].job for s in submitted]

    assert [f.status for f in finals] == [SUCCEEDED] * len(VIDEOS)
    assert [f.attempts for f in finals] == [1] * len(VIDEOS)  # the batch was not sent again
    assert [b["lines"] for b in emulator.stats().batches] == [len(VIDEOS)]
    assert emulator.stats().count() == 0


async def test_a_batch_sent_but_not_recorded_is_found_by_its_taker(
    start_gateway: Any,
    emulator: EmulatorServer,
    tmp_path: Path,
    store: StoreSettings,
    gemini_client: GeminiClient,
) -> None:
    """A replica that stopped between sending a batch and storing its name: the replica taking
    the batch over finds it by its display name (the batch row's id) instead of sending it
    again."""
    jobs = await submitter(start_gateway, emulator, tmp_path, store)
    submitted = [await jobs.submit(batched(v)) for v in VIDEOS]
    gateway_store = jobs.running.server.store
    assert gateway_store is not None
    # What the stopped replica did: gathered (a lease it never renews), then sent the batch.
    gathered = await gateway_store.gather_batch("stopped-replica", 0.2, len(VIDEOS), 0.0)
    assert gathered is not None
    batch, gathered_jobs = gathered
    model = jobs.running.server.settings.gemini.text_model
    spec = operations.ANALYZE_VIDEO
    lines = [
        (job.id, spec.model_request(codec.from_json(spec.request_type, job.input_json, {}), model))
        for job in gathered_jobs
    ]
    await gemini_client.create_batch(model, lines, display_name=batch.id)

    await worker(start_gateway, emulator, tmp_path, store)
    finals = [(await jobs.watch_to_end(s.job.id))[-1].job for s in submitted]

    assert [f.status for f in finals] == [SUCCEEDED] * len(VIDEOS)
    assert [b["lines"] for b in emulator.stats().batches] == [len(VIDEOS)]
    assert emulator.stats().count() == 0


async def test_batch_delivery_works_with_the_embedded_store(
    start_gateway: Any, emulator: EmulatorServer, tmp_path: Path
) -> None:
    # One replica, no database: it gathers once the batch is full (the window is never waited).
    jobs = Jobs(await start_gateway(settings(emulator, tmp_path, batch=FAST)))
    submitted = [await jobs.submit(batched(v)) for v in VIDEOS]

    finals = [(await jobs.watch_to_end(s.job.id))[-1].job for s in submitted]

    assert [f.status for f in finals] == [SUCCEEDED] * len(VIDEOS)
    assert [b["lines"] for b in emulator.stats().batches] == [len(VIDEOS)]
    assert emulator.stats().count() == 0


async def test_batch_lines_reserve_the_budgets_and_settle_at_batch_prices(
    start_gateway: Any, emulator: EmulatorServer, tmp_path: Path, store: StoreSettings
) -> None:
    budgets = BudgetSettings(
        tiers={Tier.PRO: PeriodBudgets(day_usd=100.0)}, users={"poor": PeriodBudgets(day_usd=0)}
    )
    jobs = Jobs(
        await start_gateway(
            settings(emulator, tmp_path, store, workers=0, batch=FAST, budgets=budgets)
        )
    )
    paid = [await jobs.submit(batched(v)) for v in VIDEOS[:2]]
    refused = await jobs.submit(batched(VIDEOS[2]), user="poor")
    runner = Jobs(
        await start_gateway(settings(emulator, tmp_path, store, batch=FAST, budgets=budgets))
    )

    finals = [(await jobs.watch_to_end(s.job.id))[-1].job for s in paid]
    refusal = (await jobs.watch_to_end(refused.job.id, user="poor"))[-1].job

    assert [f.status for f in finals] == [SUCCEEDED, SUCCEEDED]
    assert (refusal.status, refusal.error.reason) == (FAILED, BudgetExceeded.reason)
    assert [b["lines"] for b in emulator.stats().batches] == [2]
    # The batcher that sent the lines settled their reservations at their (batch) cost.
    reader = runner.running.server.budgets
    assert reader is not None
    (day,) = await reader.user_budgets("user-a", "pro")
    ledger = [row for s in paid for row in await usage(jobs, s.job.id)]
    assert day.spent_usd == pytest.approx(sum(r.record.cost_usd for r in ledger), abs=1e-9)


async def test_an_interactive_request_takes_over_a_job_waiting_to_be_gathered(
    start_gateway: Any, emulator: EmulatorServer, tmp_path: Path, store: StoreSettings
) -> None:
    jobs = await submitter(start_gateway, emulator, tmp_path, store)
    waiting = await jobs.submit(batched(VIDEOS[0]))

    answer = await jobs.running.stub.AnalyzeVideo(
        video(VIDEOS[0]).analyze_video, metadata=as_user(), timeout=TIMEOUT_S
    )
    job = (await jobs.watch_to_end(waiting.job.id))[-1].job

    assert answer.result.summary and not answer.metadata.cached
    assert job.status == SUCCEEDED and job.analyze_video == answer.result
    assert emulator.stats().count() == 1 and emulator.stats().batches == []
