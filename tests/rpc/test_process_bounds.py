"""The gateway's memory and time bounds, hit on `python -m gateway serve` in local mode (the
embedded store, the in-process emulator), configured by environment variables as an operator
would:

- the embedded result cache keeps within `VIEWBAIT_STORE__EMBEDDED_CACHE_MAX_BYTES`, evicting
  the least recently used rows; a result larger than the whole budget is served, never kept;
- the embedded usage ledger keeps `VIEWBAIT_STORE__EMBEDDED_USAGE_MAX_ROWS` raw rows, and
  GetUsage still counts every call;
- 4096x4096 heatmaps render in bounded memory (the process's peak resident size), at full size;
- a Gemini RetryInfo delay beyond `VIEWBAIT_GEMINI__RETRY_DELAY_MAX_S`, or past the caller's
  deadline, ends the call at once with UNAVAILABLE and that delay as its retry-after;
- a job attempt whose Gemini call hangs ends at `VIEWBAIT_EXECUTION__RUN_TIMEOUT_S` and is
  retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from google.rpc import error_details_pb2
from grpc import aio
from grpc_status import rpc_status
from viewbait.ai.v1 import (
    common_pb2,
    gateway_service_pb2_grpc,
    job_pb2,
    job_service_pb2,
    job_service_pb2_grpc,
    operations_pb2,
    usage_service_pb2,
    usage_service_pb2_grpc,
)

from gateway.config import Tier
from gateway.server import LOCAL_DEV_SERVICE_TOKEN
from tests.fixtures.gateways import GatewayProcess, as_user, encode_png

Spawn = Callable[..., GatewayProcess]

#: Generous: the machine running the suite may be busy.
CALL_TIMEOUT_S = 120.0
#: How long a test waits for something the gateway does in the background.
PATIENCE_S = 60.0


def caller(user: str) -> tuple[tuple[str, str], ...]:
    """Local mode's dev service token acting for `user` at the pro tier."""
    return as_user(user, Tier.PRO, token=LOCAL_DEV_SERVICE_TOKEN)


def analyze(n: int) -> operations_pb2.AnalyzeVideoRequest:
    """An AnalyzeVideo request of its own (a video id no other request of the test uses)."""
    return operations_pb2.AnalyzeVideoRequest(video_id=f"bounds{n:05d}", title=f"Video {n}")


@contextlib.asynccontextmanager
async def with_metrics(
    spawn: Spawn, **env: str
) -> AsyncIterator[tuple[gateway_service_pb2_grpc.GatewayServiceStub, aio.Channel, int]]:
    """A gateway serving `/metrics` too: its GatewayService, a channel to it, the metrics port."""
    gateway = spawn(VIEWBAIT_METRICS__PORT="0", **env)
    ready = json.loads((gateway.log_path.parent / "ready.json").read_text())
    async with aio.insecure_channel(gateway.address) as channel:
        stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
        yield stub, channel, int(ready["metrics_port"])


async def scrape(port: int) -> dict[str, float]:
    """The embedded store's series of `/metrics` (unlabelled), by name."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        text = await response.text()
    values = {}
    for line in text.splitlines():
        if line.startswith("viewbait_store_embedded_"):
            name, value = line.split()
            values[name] = float(value)
    return values


async def until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Waits until `check()` holds; fails after `PATIENCE_S`."""
    give_up = time.monotonic() + PATIENCE_S
    while not await check():
        if time.monotonic() > give_up:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.05)


def retry_delay_s(error: aio.AioRpcError) -> float | None:
    """The RetryInfo delay of a failed call, if it carries one."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            return float(retry.retry_delay.ToMilliseconds() / 1000)
    return None


async def add_fault(gateway: GatewayProcess, **rule: Any) -> None:
    """Appends a fault rule to the gateway's in-process emulator."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{gateway.emulator_url}/_emulator/faults", json=rule) as response,
    ):
        assert response.status == 200, await response.text()


# -- the embedded result cache ---------------------------------------------------------------


async def test_the_embedded_cache_evicts_the_least_recently_used_past_its_budget(
    spawn_gateway: Spawn,
) -> None:
    budget = 16 * 1024
    count = 12
    async with with_metrics(
        spawn_gateway,
        VIEWBAIT_STORE__EMBEDDED_CACHE_MAX_BYTES=str(budget),
        # No in-process hot copy in front: every hit is the store's.
        VIEWBAIT_EXECUTION__HOT_CACHE_ENTRIES="0",
    ) as (stub, _, port):
        for n in range(count):
            answer = await stub.AnalyzeVideo(analyze(n), metadata=caller("u"), timeout=60)
            assert answer.HasField("result") and not answer.metadata.cached

        async def all_written() -> bool:
            seen = await scrape(port)
            kept = seen["viewbait_store_embedded_cache_rows"]
            return kept + seen["viewbait_store_embedded_cache_evictions_total"] == count

        # Results are written after they are answered.
        await until(all_written, "every result written to the cache")
        seen = await scrape(port)
        assert seen["viewbait_store_embedded_cache_max_bytes"] == budget
        assert 0 < seen["viewbait_store_embedded_cache_bytes"] <= budget
        assert 0 < seen["viewbait_store_embedded_cache_rows"] < count
        assert seen["viewbait_store_embedded_cache_refused_total"] == 0
        # The newest result is a hit; the oldest was evicted and is computed again.
        newest = await stub.AnalyzeVideo(analyze(count - 1), metadata=caller("u"), timeout=60)
        assert newest.metadata.cached
        oldest = await stub.AnalyzeVideo(analyze(0), metadata=caller("u"), timeout=60)
        assert not oldest.metadata.cached and oldest.metadata.usage.upstream_calls == 1


async def test_a_result_larger_than_the_cache_budget_is_served_and_not_kept(
    spawn_gateway: Spawn,
) -> None:
    async with with_metrics(
        spawn_gateway,
        VIEWBAIT_STORE__EMBEDDED_CACHE_MAX_BYTES="1024",
        VIEWBAIT_EXECUTION__HOT_CACHE_ENTRIES="0",
    ) as (stub, _, port):
        first = await stub.AnalyzeVideo(analyze(1), metadata=caller("u"), timeout=60)
        assert first.HasField("result") and not first.metadata.cached

        def refused(count: int) -> Callable[[], Awaitable[bool]]:
            async def check() -> bool:
                return (await scrape(port))["viewbait_store_embedded_cache_refused_total"] == count

            return check

        await until(refused(1), "the result refused by the cache")
        again = await stub.AnalyzeVideo(analyze(1), metadata=caller("u"), timeout=60)
        assert again.result == first.result
        assert not again.metadata.cached and again.metadata.usage.upstream_calls == 1
        await until(refused(2), "the result refused again")
        seen = await scrape(port)
        assert seen["viewbait_store_embedded_cache_bytes"] == 0
        assert seen["viewbait_store_embedded_cache_rows"] == 0


# -- the embedded usage ledger ---------------------------------------------------------------


async def test_the_embedded_ledger_is_bounded_and_get_usage_still_counts_every_call(
    spawn_gateway: Spawn,
) -> None:
    async with with_metrics(
        spawn_gateway,
        VIEWBAIT_STORE__EMBEDDED_USAGE_MAX_ROWS="3",
        VIEWBAIT_USAGE__FLUSH_INTERVAL_S="0.1",
    ) as (stub, channel, port):
        usage = usage_service_pb2_grpc.UsageServiceStub(channel)
        costs = []
        for n in range(5):
            answer = await stub.AnalyzeVideo(analyze(n), metadata=caller("ledger"), timeout=60)
            assert not answer.metadata.cached
            costs.append(answer.metadata.usage.cost_usd)
        for _ in range(2):
            hit = await stub.AnalyzeVideo(analyze(4), metadata=caller("ledger"), timeout=60)
            assert hit.metadata.cached
        # 5 upstream calls and 2 cache hits: 6 or 7 ledger rows (the hits' savings are folded
        # into one row when they fall in one second and one write), of which 3 are kept raw.
        requests = (
            usage_service_pb2.GetUsageRequest(),
            usage_service_pb2.GetUsageRequest(fleet=True),
        )

        async def all_counted() -> bool:
            for request in requests:
                report = await usage.GetUsage(request, metadata=caller("ledger"), timeout=60)
                if (report.totals.upstream_calls, report.totals.cache_hits) != (5, 2):
                    return False
            return True

        await until(all_counted, "GetUsage counting every call")
        metrics = await scrape(port)
        assert metrics["viewbait_store_embedded_usage_rows"] == 3
        assert metrics["viewbait_store_embedded_usage_folded_rows_total"] in (3, 4)
        for request in requests:
            report = await usage.GetUsage(request, metadata=caller("ledger"), timeout=60)
            assert report.totals.cost_usd == pytest.approx(sum(costs))
            # Each hit saved what the work behind its result cost.
            assert report.totals.saved_usd == pytest.approx(2 * costs[4])


# -- heatmaps --------------------------------------------------------------------------------


def peak_resident_bytes(pid: int) -> int:
    """The process's peak resident set size so far (Linux `VmHWM`)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc: the heatmap memory test needs Linux")


async def test_concurrent_4096_square_heatmaps_render_at_full_size_in_bounded_memory(
    spawn_gateway: Spawn,
) -> None:
    gateway = spawn_gateway()
    # Tiny PNGs (one colour each, so no two share a cache key) declaring the largest size the
    # bounds accept: a render of the whole field at once took about 200 MB each.
    large = [encode_png((4096, 4096), (40 * n, 90, 200)) for n in range(4)]
    assert all(len(png) < 100_000 for png in large)
    async with aio.insecure_channel(gateway.address) as channel:
        stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)

        async def heatmap(png: bytes) -> operations_pb2.AttentionHeatmap:
            request = operations_pb2.ComputeAttentionHeatmapRequest(
                image=common_pb2.Image(data=png)
            )
            answer = await stub.ComputeAttentionHeatmap(
                request, metadata=caller("u"), timeout=CALL_TIMEOUT_S
            )
            assert answer.HasField("result"), answer
            return answer.result

        # Warm: the first heatmap loads what every later one uses.
        await heatmap(encode_png((320, 180)))
        before = peak_resident_bytes(gateway.process.pid)
        results = await asyncio.gather(*(heatmap(png) for png in large))
        grown = peak_resident_bytes(gateway.process.pid) - before
    for result in results:
        assert (result.heatmap.width, result.heatmap.height) == (4096, 4096)
    # Measured: about 35 MB for the four, where the whole-field renders grew it by 675 MB.
    assert grown < 100 * 1024 * 1024, f"the peak resident size grew by {grown / 1e6:.0f} MB"


# -- Gemini's retry delays and the deadlines of background work -----------------------------


async def test_a_retry_delay_beyond_the_maximum_fails_at_once_with_that_retry_after(
    spawn_gateway: Spawn,
) -> None:
    # A short long-poll: a call whose shared work slept instead would answer pending at once.
    gateway = spawn_gateway(VIEWBAIT_EXECUTION__LONG_POLL_S="3")
    await add_fault(gateway, kind="rate_limited", count=1, retry_delay_s=3600)
    async with aio.insecure_channel(gateway.address) as channel:
        stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
        with pytest.raises(aio.AioRpcError) as raised:
            await stub.AnalyzeVideo(analyze(1), metadata=caller("u"), timeout=CALL_TIMEOUT_S)
        error = raised.value
        assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()
        assert retry_delay_s(error) == 3600
        assert dict(error.trailing_metadata() or ())["retry-after-ms"] == "3600000"
        assert "3600s" in (error.details() or "")
        # The next call, with Gemini answering again, is not stuck behind a sleeping one.
        answer = await stub.AnalyzeVideo(analyze(1), metadata=caller("u"), timeout=60)
        assert answer.HasField("result") and answer.metadata.usage.upstream_calls == 1


async def test_a_retry_delay_past_the_callers_deadline_fails_at_once(
    spawn_gateway: Spawn,
) -> None:
    gateway = spawn_gateway()
    # Within the maximum (60 s), but not within the caller's 20 s.
    await add_fault(gateway, kind="rate_limited", count=1, retry_delay_s=30)
    async with aio.insecure_channel(gateway.address) as channel:
        stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
        stream = stub.GenerateThumbnail(
            operations_pb2.GenerateThumbnailRequest(prompt="a treehouse at dusk", variations=1),
            metadata=caller("u"),
            timeout=20,
        )
        with pytest.raises(aio.AioRpcError) as raised:
            async for _ in stream:
                pass
        error = raised.value
        # Not DEADLINE_EXCEEDED: the call did not sleep into its deadline.
        assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()
        assert retry_delay_s(error) == 30


async def test_a_hung_job_attempt_ends_at_the_run_timeout_and_is_retried(
    spawn_gateway: Spawn,
) -> None:
    # The emulator holds the first answer for 300 s; a job attempt's run gets 2 s (the
    # per-attempt timeout, 120 s, would otherwise hold the worker past the test's patience).
    gateway = spawn_gateway(
        VIEWBAIT_EXECUTION__RUN_TIMEOUT_S="2", VIEWBAIT_JOBS__RETRY_INITIAL_S="0.1"
    )
    await add_fault(gateway, kind="hang", count=1)
    async with aio.insecure_channel(gateway.address) as channel:
        jobs = job_service_pb2_grpc.JobServiceStub(channel)
        submitted = await jobs.SubmitJob(
            job_service_pb2.SubmitJobRequest(analyze_video=analyze(1)),
            metadata=caller("u"),
            timeout=60,
        )
        job_id = submitted.job.id
        finished: list[job_pb2.Job] = []

        async def ended() -> bool:
            job = (
                await jobs.GetJob(
                    job_service_pb2.GetJobRequest(job_id=job_id), metadata=caller("u"), timeout=60
                )
            ).job
            if job.status in (job_pb2.JOB_STATUS_QUEUED, job_pb2.JOB_STATUS_RUNNING):
                return False
            finished.append(job)
            return True

        await until(ended, "the job to end")
    (job,) = finished
    assert job.status == job_pb2.JOB_STATUS_SUCCEEDED, gateway.log()
    assert job.attempts == 2
    assert [e.error.reason for e in job.error_history] == ["DEADLINE_EXCEEDED"]
