"""What a finished job's metadata says it cost, over JobService on real gRPC, on each store:
the tokens and cost of every attempt (a retried job's failed attempts included), `cached` for a
job its worker answered from the result cache, and `coalesced` with zero usage for a user who
joined a shared execution another user started; the usage ledger agrees."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from viewbait.ai.v1 import common_pb2

from gateway.emulator import EmulatorServer
from gateway.model import CACHE_HIT
from tests.fixtures.gateways import as_user
from tests.fixtures.usage import written

from .test_jobs import SUCCEEDED, TIMEOUT_S, Jobs, heatmap, settings, video


async def ledger(jobs: Jobs, job_id: str) -> list[Any]:
    """The usage ledger's records of a job, once the gateway has written what it queued."""
    server = jobs.running.server
    await written(server.usage)
    return [entry.record for entry in await server.store.list_usage(job_id)]


async def test_a_retried_job_reports_what_every_attempt_spent(
    start_gateway: Any, emulator: EmulatorServer, tmp_path: Path, store_for: Any
) -> None:
    jobs = Jobs(await start_gateway(settings(emulator, tmp_path, store_for)))
    # Two answers that do not fit the schema (both billed) fail the first attempt; the job is
    # retried and its second attempt succeeds.
    emulator.inject("invalid_answer", count=2)

    submitted = await jobs.submit(video("retriedjob1"))
    final = (await jobs.watch_to_end(submitted.job.id))[-1].job

    assert final.status == SUCCEEDED and final.attempts == 2
    metadata = final.metadata
    assert not metadata.cached and not metadata.coalesced and metadata.model
    assert metadata.usage.upstream_calls == 3 == emulator.stats().requests
    records = await ledger(jobs, final.id)
    # Gemini answered all three (the first two in the wrong shape): three billed calls.
    assert [r.outcome for r in records] == ["ok"] * 3
    assert metadata.usage.cost_usd == pytest.approx(sum(r.cost_usd for r in records), abs=1e-9)
    assert metadata.usage.cost_usd > sum(r.cost_usd for r in records[2:])  # not the last alone
    assert metadata.usage.total_tokens == sum(r.usage.total_tokens for r in records)
    assert metadata.usage.prompt_tokens == sum(r.usage.prompt_tokens for r in records)
    assert (await jobs.get(final.id)).metadata == metadata


async def test_a_job_answered_from_the_cache_says_so_and_records_the_saving(
    start_gateway: Any, emulator: EmulatorServer, tmp_path: Path, store_for: Any
) -> None:
    jobs = Jobs(await start_gateway(settings(emulator, tmp_path, store_for)))
    request = video("cachedjob01")
    first = await jobs.running.stub.AnalyzeVideo(
        request.analyze_video, metadata=as_user("user-a"), timeout=TIMEOUT_S
    )
    # The answer comes before its execution is completed and cached (in the background): a
    # job submitted before that would join the execution instead.
    executor = jobs.running.server.executor
    assert executor is not None
    await executor.flush()

    submitted = await jobs.submit(request)
    final = (await jobs.watch_to_end(submitted.job.id))[-1].job

    assert final.status == SUCCEEDED and emulator.stats().requests == 1
    assert final.metadata.cached and not final.metadata.coalesced
    assert final.metadata.usage == common_pb2.Usage()
    assert final.metadata.model == first.metadata.model
    (saving,) = await ledger(jobs, final.id)
    assert saving.outcome == CACHE_HIT and saving.labels.user_id == "user-a"
    assert saving.cost_usd == 0 and saving.saved_usd == pytest.approx(
        first.metadata.usage.cost_usd, abs=1e-9
    )


async def test_a_user_who_joined_a_shared_execution_paid_nothing(
    start_gateway: Any, emulator: EmulatorServer, tmp_path: Path, store_for: Any
) -> None:
    # The execution runs long enough for the second user to join it.
    emulator.set_knobs(latency_s=0.5)
    jobs = Jobs(await start_gateway(settings(emulator, tmp_path, store_for)))
    starter = await jobs.submit(heatmap(), user="user-a")
    joiner = await jobs.submit(heatmap(), user="user-b")

    started = (await jobs.watch_to_end(starter.job.id, user="user-a"))[-1].job
    joined = (await jobs.watch_to_end(joiner.job.id, user="user-b"))[-1].job

    assert started.status == joined.status == SUCCEEDED and emulator.stats().requests == 1
    assert not started.metadata.coalesced and joined.metadata.coalesced
    assert started.metadata.usage.upstream_calls == 1 and started.metadata.usage.cost_usd > 0
    assert joined.metadata.usage == common_pb2.Usage()
    assert joined.metadata.model == started.metadata.model
