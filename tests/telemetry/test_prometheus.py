"""The metrics as an operator sees them: a real Prometheus server (Debian's package) on loopback
scrapes a live gateway and a `viewbait-gateway worker` process sharing its PostgreSQL store,
after known gRPC traffic over real sockets; every value is read back through Prometheus's HTTP
API and checked exactly, and `promtool check metrics` accepts both expositions.

No timing assertion: the test waits (bounded) until Prometheus has scraped each target after the
traffic ended, by Prometheus's own clock, and only then reads the counters.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import grpc
import pytest
from viewbait.ai.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc, operations_pb2

from gateway.config import ExecutionSettings, JobSettings, MetricsSettings, RateLimit, Tier
from gateway.emulator import EmulatorServer
from gateway.errors import UpstreamUnavailable
from gateway.testing.postgres import free_port
from tests.fixtures.gateways import as_user, gateway_settings
from tests.fixtures.stores import DATABASE_URL, store_settings
from tests.telemetry.prometheus_server import prometheus, promtool_check_metrics

TEXT_MODEL = "gemini-3.6-flash"
#: Distinct AnalyzeVideo requests (each a miss), then repeats of the first (each a hot hit).
MISSES, HITS = 3, 4
TIMEOUT_S = 30
REFRESH_S = 0.1


async def until(
    condition: Callable[[], Awaitable[bool]], what: str, patience_s: float = 30
) -> None:
    """Polls `condition` until it holds (bounded: only a hang fails)."""
    give_up = asyncio.get_running_loop().time() + patience_s
    while not await condition():
        if asyncio.get_running_loop().time() > give_up:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.05)


def analyze(n: int) -> operations_pb2.AnalyzeVideoRequest:
    """An AnalyzeVideo request of its own video (the video is its cache key)."""
    return operations_pb2.AnalyzeVideoRequest(video_id=f"dQw4w9W{n:04d}", title="Treehouse")


async def _exposition(port: int) -> bytes:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        assert response.status == 200
        return await response.read()


async def _ledger_totals(schema: str) -> dict[str, Any]:
    """Every attempt in the usage ledger, summed the way the token kinds are defined, and the
    savings records (cache hits and joins, folded per second: `events`) with what they saved."""
    conn = await asyncpg.connect(DATABASE_URL)
    try:
        row = await conn.fetchrow(
            f"""SELECT count(*) FILTER (WHERE NOT savings) AS attempts,
                sum(prompt_tokens - least(cached_prompt_tokens, prompt_tokens)) AS input,
                sum(least(cached_prompt_tokens, prompt_tokens)) AS cached_input,
                sum(output_tokens) AS output, sum(thinking_tokens) AS thinking,
                sum(image_output_tokens) AS image_output, sum(cost_usd)::float8 AS cost,
                sum(events) FILTER (WHERE savings) AS hits, sum(saved_usd)::float8 AS saved
            FROM (SELECT *, outcome IN ('cache_hit', 'coalesced') AS savings
                  FROM "{schema}".ai_usage) AS rows"""
        )
    finally:
        await conn.close()
    assert row is not None
    return dict(row)


async def test_prometheus_scrapes_exact_counts_from_a_gateway_and_a_worker(
    # The schema first: fixtures end in reverse order, so it is dropped after the processes.
    pg_schema: str,
    start_gateway: Any,
    spawn_gateway: Any,
    emulator: EmulatorServer,
    tmp_path: Path,
) -> None:
    store = store_settings(pg_schema, migrate_on_start=True)
    settings = gateway_settings(
        emulator,
        tmp_path / "gateway",
        store=store,
        # Jobs run only in the worker process, so the queue's depth can be seen first.
        jobs=JobSettings(workers=0),
        execution=ExecutionSettings(rescue_interval_s=0.2),
        metrics=MetricsSettings(port=0, refresh_interval_s=REFRESH_S),
    )
    # Every AnalyzeVideo request and the job's submission pass the admission limit; one more
    # is refused (one request an hour refills: none during the test).
    policy = settings.policies["analyze_video"]
    limits = dict(policy.limits)
    limits[Tier.PRO] = limits[Tier.PRO].model_copy(
        update={"admission": RateLimit(rate=1, period_s=3600, burst=MISSES + HITS + 1)}
    )
    settings.policies["analyze_video"] = policy.model_copy(update={"limits": limits})
    gateway = await start_gateway(settings)
    gateway_port = gateway.server.metrics_port
    worker_port = free_port()
    targets = {"gateway": f"127.0.0.1:{gateway_port}", "worker": f"127.0.0.1:{worker_port}"}

    async with prometheus(tmp_path / "prometheus", targets) as server:
        # The first attempt of the first miss fails (503) and is retried.
        emulator.inject("unavailable", model=TEXT_MODEL)
        for n in range(MISSES):
            answer = await gateway.stub.AnalyzeVideo(analyze(n), metadata=as_user(), timeout=30)
            assert not answer.metadata.cached
        for _ in range(HITS):
            answer = await gateway.stub.AnalyzeVideo(analyze(0), metadata=as_user(), timeout=30)
            assert answer.metadata.cached
        jobs = job_service_pb2_grpc.JobServiceStub(gateway.channel)
        submitted = await jobs.SubmitJob(
            job_service_pb2.SubmitJobRequest(analyze_video=analyze(100)),
            metadata=as_user(),
            timeout=TIMEOUT_S,
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await gateway.stub.AnalyzeVideo(analyze(0), metadata=as_user(), timeout=30)
        assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED

        # The job waits: the gateway's refresh shows it queued (the same in every process).
        depth = 'viewbait_job_queue_depth{job="gateway",status="queued",operation="analyze_video"}'
        await server.eventually_equals(depth, 1)

        spawn_gateway(
            "worker",
            VIEWBAIT_GEMINI__API_KEY=emulator.api_key,
            VIEWBAIT_GEMINI__BASE_URL=emulator.base_url,
            VIEWBAIT_STORE__DATABASE_URL=DATABASE_URL,
            VIEWBAIT_STORE__SCHEMA=pg_schema,
            VIEWBAIT_STORE__POOL_MAX_SIZE="3",
            VIEWBAIT_SERVER__LOG_LEVEL="WARNING",
            VIEWBAIT_METRICS__PORT=str(worker_port),
            VIEWBAIT_METRICS__REFRESH_INTERVAL_S=str(REFRESH_S),
        )
        events = [
            event
            async for event in jobs.WatchJob(
                job_service_pb2.WatchJobRequest(job_id=submitted.job.id),
                metadata=as_user(),
                timeout=TIMEOUT_S,
            )
        ]
        assert events[-1].job.status == job_pb2.JOB_STATUS_SUCCEEDED
        # Both processes' attempts reach the ledger (MISSES + the retried one + the job's).
        ledger: dict[str, Any] = {}

        async def ledger_complete() -> bool:
            ledger.update(await _ledger_totals(pg_schema))
            return bool(ledger["attempts"] == MISSES + 2 and ledger["hits"] == HITS)

        await until(ledger_complete, "every attempt in the usage ledger")

        # The traffic is over: read what the next scrape of each target holds.
        at = await server.scraped_after(await server.now())

        async def value(expr: str) -> float | None:
            return await server.value(expr, at)

        gw, wk = 'job="gateway"', 'job="worker"'
        av = 'service="viewbait.ai.v1.GatewayService",method="AnalyzeVideo"'
        assert await value(f'viewbait_rpcs_total{{{gw},{av},code="OK"}}') == MISSES + HITS
        assert await value(f'viewbait_rpcs_total{{{gw},{av},code="RESOURCE_EXHAUSTED"}}') == 1
        assert await value(f'viewbait_rpcs_total{{{gw},method="SubmitJob",code="OK"}}') == 1
        assert await value(f'viewbait_rpcs_total{{{gw},method="WatchJob",code="OK"}}') == 1
        count = f"viewbait_rpc_duration_seconds_count{{{gw},{av}}}"
        assert await value(count) == MISSES + HITS + 1
        inf = f'viewbait_rpc_duration_seconds_bucket{{{gw},{av},le="+Inf"}}'
        assert await value(inf) == MISSES + HITS + 1

        op = 'operation="analyze_video"'
        assert await value(f"viewbait_cache_misses_total{{{gw},{op}}}") == MISSES
        assert await value(f'viewbait_cache_hits_total{{{gw},{op},layer="hot"}}') == HITS
        assert await value(f'viewbait_cache_hits_total{{{gw},{op},layer="store"}}') == 0
        assert await value(f"viewbait_coalesced_joins_total{{{gw},{op}}}") == 0
        assert await value(f"viewbait_pending_answers_total{{{gw},{op}}}") == 0

        model = f'model="{TEXT_MODEL}"'
        attempts = "viewbait_upstream_attempts_total"
        assert await value(f'{attempts}{{{gw},{model},outcome="ok"}}') == MISSES
        unavailable = UpstreamUnavailable.reason
        assert await value(f'{attempts}{{{gw},{model},outcome="{unavailable}"}}') == 1
        assert await value(f'{attempts}{{{wk},{model},outcome="ok"}}') == 1
        latency = "viewbait_upstream_attempt_duration_seconds_count"
        assert await value(f"sum({latency}{{{model}}})") == MISSES + 2
        for kind in ("input", "cached_input", "output", "thinking", "image_output"):
            tokens = await value(f'sum(viewbait_upstream_tokens_total{{kind="{kind}"}})')
            assert tokens == ledger[kind], kind
        cost = await value(f"sum(viewbait_upstream_cost_usd_total{{{op}}})")
        assert cost is not None and cost == pytest.approx(ledger["cost"], rel=1e-9, abs=1e-12)
        assert ledger["cost"] > 0
        # Each hot hit saved what its miss cost, as the ledger's savings rows say.
        saved = await value(f'viewbait_saved_cost_usd_total{{{gw},{op},source="cache"}}')
        assert saved is not None and saved == pytest.approx(ledger["saved"], rel=1e-9)
        assert ledger["saved"] > 0

        decisions = "viewbait_limiter_decisions_total"
        assert await value(f'{decisions}{{{gw},limit="admission",outcome="allowed"}}') == (
            MISSES + HITS + 1
        )
        assert await value(f'{decisions}{{{gw},limit="admission",outcome="denied"}}') == 1
        # Each attempt passes the user's upstream limit and the model's fleet limit.
        for limit in ("upstream", "model"):
            assert await value(f'{decisions}{{{gw},limit="{limit}",outcome="allowed"}}') == (
                MISSES + 1
            )
            assert await value(f'{decisions}{{{wk},limit="{limit}",outcome="allowed"}}') == 1
        # The worker admits nothing: admission happened when the job was submitted.
        assert await value(f'{decisions}{{{wk},limit="admission",outcome="allowed"}}') == 0
        for job, pool_size in ((gw, 4), (wk, 3)):
            assert await value(f'viewbait_limiter_mode{{{job},mode="embedded"}}') == 1
            assert await value(f"sum(viewbait_limiter_mode{{{job}}})") == 1
            assert await value(f"viewbait_store_circuit_open{{{job}}}") == 0
            assert await value(f"viewbait_store_pool_max_connections{{{job}}}") == pool_size
            connections = await value(f"sum(viewbait_store_pool_connections{{{job}}})")
            assert connections is not None and 1 <= connections <= pool_size

        job_count = f'viewbait_job_attempt_duration_seconds_count{{{wk},{op},outcome="succeeded"}}'
        assert await value(job_count) == 1
        assert await value(f"viewbait_job_retries_total{{{wk}}}") is None
        # The worker serves no RPCs.
        assert await server.query(f"viewbait_rpcs_total{{{wk}}}", at) == []
        # The job is done: both processes' refreshes see the queue empty.
        await server.eventually_equals(depth.replace(gw, wk), 0)
        await server.eventually_equals(depth, 0)

        for port in (gateway_port, worker_port):
            checked = promtool_check_metrics(await _exposition(port))
            assert (checked.returncode, checked.stdout, checked.stderr) == (0, "", "")
