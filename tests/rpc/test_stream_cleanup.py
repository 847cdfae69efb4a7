"""Streams the caller abandons leave nothing behind: no task destroyed while pending, no task
exception never retrieved (both reach the event loop's exception handler, which this module
replaces for the duration of each test to catch them).

The emulator holds each answer a while, so the streams are mid-run when the caller cancels;
some of the callers are refused by the rate limit instead, which is a path of its own (the run
fails while nobody waits for it any more).
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import pytest_asyncio
from grpc import aio
from viewbait.ai.v1 import job_service_pb2

pytestmark = pytest.mark.asyncio(loop_scope="module")

#: Long enough that a stream is still running when its caller cancels it.
UPSTREAM_LATENCY_S = 0.3
STREAMS = 100
WATCHES = 40
#: Streams open at once (each wave is cancelled before the next starts).
WAVE = 10
#: What the event loop reports about tasks left behind.
LEAK_SIGNS = ("Task was destroyed but it is pending", "exception was never retrieved")


@pytest_asyncio.fixture(loop_scope="module")
async def loop_reports() -> AsyncIterator[list[dict[str, Any]]]:
    """Everything reported to the event loop's exception handler during the test."""
    loop = asyncio.get_running_loop()
    reports: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: reports.append(context))
    try:
        yield reports
    finally:
        loop.set_exception_handler(previous)


async def _read_then_cancel(call: Any) -> str:
    """Reads one message of a stream (or its error), then cancels it; returns what came."""
    try:
        message = await call.read()
    except aio.AioRpcError as exc:
        return exc.code().name
    call.cancel()
    return "cancelled" if message is not aio.EOF else "ended"


async def _leftovers(reports: list[dict[str, Any]], caplog: pytest.LogCaptureFixture) -> list[str]:
    """What the loop reported once abandoned work had time to wind down and be collected."""
    for _ in range(5):
        await asyncio.sleep(UPSTREAM_LATENCY_S)
        gc.collect()
    lines = [str(report.get("message", "")) for report in reports]
    lines += [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    return [line for line in lines if any(sign in line for sign in LEAK_SIGNS)]


async def test_cancelled_thumbnail_streams_leave_no_task_behind(
    gateway: Any,
    upstream: Any,
    samples: Any,
    loop_reports: list[dict[str, Any]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="asyncio")
    upstream.set_knobs(latency_s=UPSTREAM_LATENCY_S)
    outcomes: list[str] = []
    for wave in range(STREAMS // WAVE):
        calls = [
            gateway.stub.GenerateThumbnail(
                samples.request("generate_thumbnail", prompt=f"a treehouse, take {wave}-{i}"),
                metadata=gateway.as_service(user_id="canceller"),
                timeout=60,
            )
            for i in range(WAVE)
        ]
        outcomes += await asyncio.gather(*(_read_then_cancel(call) for call in calls))

    assert "cancelled" in outcomes, outcomes  # streams really were abandoned mid-run
    assert set(outcomes) <= {"cancelled", grpc.StatusCode.RESOURCE_EXHAUSTED.name}, outcomes
    assert await _leftovers(loop_reports, caplog) == []


async def test_cancelled_job_watches_leave_no_task_behind(
    gateway: Any,
    upstream: Any,
    samples: Any,
    loop_reports: list[dict[str, Any]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="asyncio")
    upstream.set_knobs(latency_s=UPSTREAM_LATENCY_S * 10)
    metadata = gateway.as_service(user_id="watcher")
    submitted = await gateway.jobs.SubmitJob(
        job_service_pb2.SubmitJobRequest(analyze_video=samples.request("analyze_video")),
        metadata=metadata,
        timeout=30,
    )
    outcomes: list[str] = []
    for _ in range(WATCHES // WAVE):
        calls = [
            gateway.jobs.WatchJob(
                job_service_pb2.WatchJobRequest(job_id=submitted.job.id),
                metadata=metadata,
                timeout=60,
            )
            for _ in range(WAVE)
        ]
        outcomes += await asyncio.gather(*(_read_then_cancel(call) for call in calls))

    assert "cancelled" in outcomes, outcomes
    assert set(outcomes) <= {"cancelled", grpc.StatusCode.RESOURCE_EXHAUSTED.name}, outcomes
    assert await _leftovers(loop_reports, caplog) == []
