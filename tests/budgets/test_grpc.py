"""Budgets end to end: real `GatewayServer`s on 127.0.0.1:0, real channels, the emulator behind
the real Gemini adapter, and the budgets' wall clock injected (never the machine's date).

A user's daily budget is set to exactly one AnalyzeVideo estimate: the first request fits, and
what it leaves cannot cover another, which is refused with RESOURCE_EXHAUSTED / BUDGET_EXCEEDED
before any upstream call. Cache hits and coalesced joins cost nothing and still answer. A job the
budget refuses fails (the default) or waits for the day to reset (`job_refusal` `wait`).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc import aio
from grpc_status import rpc_status
from viewbait.ai.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc, operations_pb2

from gateway.config import (
    BudgetSettings,
    JobRefusal,
    JobSettings,
    PeriodBudgets,
    Settings,
    Tier,
)
from gateway.emulator import EmulatorServer
from gateway.operations.analyze_video import AnalyzeVideoRequest
from gateway.rpc.status import RETRY_AFTER_KEY
from tests.fixtures.gateways import as_user, gateway_settings

from .conftest import WallClock, at, estimate

TIMEOUT_S = 30
TITLE = "I built a treehouse"
#: 21:00 UTC: three hours before the day's budgets reset.
EVENING = at(2026, 7, 14, 21)


def video(n: int) -> operations_pb2.AnalyzeVideoRequest:
    """A distinct AnalyzeVideo request (its video id is part of its cache key)."""
    return operations_pb2.AnalyzeVideoRequest(video_id=f"video{n:06d}", title=TITLE)


def one_request_budget(**budgets: Any) -> BudgetSettings:
    """The pro tier's daily budget: exactly one AnalyzeVideo estimate."""
    one = estimate(Settings(), "analyze_video", AnalyzeVideoRequest("video000001", TITLE))
    return BudgetSettings(tiers={Tier.PRO: PeriodBudgets(day_usd=one / 1e9)}, **budgets)


def details(error: aio.AioRpcError) -> tuple[error_details_pb2.ErrorInfo, float]:
    """ErrorInfo and RetryInfo's delay in seconds (-1 without one)."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    info, delay = error_details_pb2.ErrorInfo(), -1.0
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            detail.Unpack(info)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            delay = retry.retry_delay.ToMilliseconds() / 1000
    return info, delay


async def analyze(gateway: Any, n: int, user: str = "alice") -> Any:
    return await gateway.stub.AnalyzeVideo(video(n), metadata=as_user(user), timeout=TIMEOUT_S)


async def test_a_refused_request_says_which_budget_and_when_it_resets(
    start_gateway: Any, emulator: EmulatorServer, tmp_path: Path
) -> None:
    settings = gateway_settings(emulator, tmp_path, budgets=one_request_budget())
    gateway = await start_gateway(settings, clock=WallClock(EVENING))
    first = await analyze(gateway, 1)
    assert first.metadata.usage.upstream_calls == 1

    with pytest.raises(aio.AioRpcError) as refused:
        await analyze(gateway, 2)

    error = refused.value
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    info, delay = details(error)
    assert info.reason == "BUDGET_EXCEEDED"
    assert info.metadata["budget"] == "user_day"
    assert info.metadata["subject"] == "alice"
    limit = settings.budgets.tiers[Tier.PRO].day_usd
    assert limit is not None and float(info.metadata["limit_usd"]) == pytest.approx(limit)
    assert info.metadata["resets_at"] == "2026-07-15T00:00:00Z"
    assert delay == 3 * 3600
    assert dict(error.trailing_metadata() or ())[RETRY_AFTER_KEY] == str(3 * 3600 * 1000)
    assert "the user's daily budget" in (error.details() or "")
    assert emulator.stats().requests == 1, "a refused request costs nothing upstream"
    # Another user's budget is their own.
    await analyze(gateway, 2, user="bob")
    # The budget is readable where the usage API and metrics will read it.
    budgets = gateway.server.budgets
    assert budgets is not None
    (day,) = await budgets.user_budgets("alice", "pro")
    assert day.spent_usd == pytest.approx(first.metadata.usage.cost_usd, abs=1e-9)


async def test_cache_hits_and_coalesced_joins_are_never_refused(
    start_gateway: Any, emulator: EmulatorServer, tmp_path: Path
) -> None:
    settings = gateway_settings(emulator, tmp_path, budgets=one_request_budget())
    gateway = await start_gateway(settings, clock=WallClock(EVENING))
    # Two callers of one request while it runs: one pays, the other joins. Without the join the
    # second would be refused: the first holds the whole budget until it settles.
    emulator.set_knobs(latency_s=0.6)
    both = await asyncio.gather(analyze(gateway, 1), analyze(gateway, 1))
    emulator.set_knobs(latency_s=0.0)
    assert sorted(a.metadata.coalesced for a in both) == [False, True]
    assert emulator.stats().requests == 1

    with pytest.raises(aio.AioRpcError) as refused:
        await analyze(gateway, 2)
    assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    # Out of budget, the user still reads what already exists.
    hit = await analyze(gateway, 1)
    assert hit.metadata.cached and hit.result == both[0].result
    assert emulator.stats().requests == 1


def jobs_settings(emulator: EmulatorServer, tmp_path: Path, refusal: JobRefusal) -> Settings:
    return gateway_settings(
        emulator,
        tmp_path,
        budgets=one_request_budget(job_refusal=refusal),
        jobs=JobSettings(workers=2, poll_interval_s=0.05),
    )


async def submit(gateway: Any, n: int) -> str:
    stub = job_service_pb2_grpc.JobServiceStub(gateway.channel)
    answer = await stub.SubmitJob(
        job_service_pb2.SubmitJobRequest(analyze_video=video(n)),
        metadata=as_user("alice"),
        timeout=TIMEOUT_S,
    )
    return str(answer.job.id)


def watch(gateway: Any, job_id: str) -> Any:
    stub = job_service_pb2_grpc.JobServiceStub(gateway.channel)
    return stub.WatchJob(
        job_service_pb2.WatchJobRequest(job_id=job_id), metadata=as_user("alice"), timeout=60
    )


async def test_a_job_the_budget_refuses_fails_by_default(
    start_gateway: Any, emulator: EmulatorServer, tmp_path: Path
) -> None:
    settings = jobs_settings(emulator, tmp_path, JobRefusal.FAIL)
    gateway = await start_gateway(settings, clock=WallClock(EVENING))
    await analyze(gateway, 1)

    events = [event async for event in watch(gateway, await submit(gateway, 2))]

    final = events[-1].job
    assert final.status == job_pb2.JOB_STATUS_FAILED
    assert final.error.reason == "BUDGET_EXCEEDED"
    assert "resets at 2026-07-15 00:00 UTC" in final.error.message
    assert final.attempts == 1
    assert emulator.stats().requests == 1


async def test_a_job_the_budget_refuses_waits_for_the_reset_when_asked_to(
    start_gateway: Any, emulator: EmulatorServer, tmp_path: Path
) -> None:
    settings = jobs_settings(emulator, tmp_path, JobRefusal.WAIT)
    # One second before midnight: the wait is one second of real time.
    clock = WallClock(at(2026, 7, 15) - 1_000_000_000)
    gateway = await start_gateway(settings, clock=clock)
    await analyze(gateway, 1)

    waited: Any = None
    async for event in watch(gateway, await submit(gateway, 2)):
        job = event.job
        if job.status == job_pb2.JOB_STATUS_QUEUED and job.HasField("error") and waited is None:
            # Deferred to the reset, its attempt not counted; now the day ends.
            waited = job
            clock.set(at(2026, 7, 15))
        if job.status in (job_pb2.JOB_STATUS_SUCCEEDED, job_pb2.JOB_STATUS_FAILED):
            final = job
            break

    assert waited is not None
    assert waited.error.reason == "BUDGET_EXCEEDED" and waited.attempts == 0
    assert waited.run_after_time.ToDatetime() > waited.create_time.ToDatetime()
    assert final.status == job_pb2.JOB_STATUS_SUCCEEDED and final.attempts == 1
    assert emulator.stats().requests == 2
