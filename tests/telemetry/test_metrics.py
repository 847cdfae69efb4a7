"""The metrics' pieces (`gateway.telemetry.metrics`), each fed by the real part it measures: the
limiter deciding (embedded, and shared over a Redis nobody answers for), the usage ledger, the
stores, the `/metrics` HTTP endpoint, and in-process gateways answering real gRPC calls. Values
are read from each gateway's own registry."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from pydantic import SecretStr
from viewbait.ai.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc, operations_pb2

from gateway.budgets import BudgetState
from gateway.budgets.enforcement import Budgets
from gateway.config import (
    BudgetSettings,
    ConfigError,
    ExecutionSettings,
    FailureMode,
    JobSettings,
    LimiterSettings,
    MetricsSettings,
    RateLimit,
    RouteLimits,
    Settings,
    Tier,
    UsageSettings,
)
from gateway.emulator import EmulatorServer
from gateway.errors import Unavailable, UpstreamUnavailable
from gateway.limiter import LimiterMode, RateLimiter
from gateway.model import CACHE_HIT, COALESCED, CallLabels, Usage, UsageRecord
from gateway.server import GatewayServer
from gateway.store import MemoryStore, NewJob
from gateway.store.ledger import StoreUsageSink
from gateway.telemetry.metrics import (
    GatewayMetrics,
    MetricsServer,
    refresh_forever,
)
from gateway.testing.postgres import free_port
from tests.fixtures.gateways import as_user, gateway_settings
from tests.fixtures.usage import written
from tests.telemetry.prometheus_server import promtool_check_metrics

GATEWAY = "viewbait.ai.v1.GatewayService"
TEXT_MODEL = "gemini-3.6-flash"


def sample(metrics: GatewayMetrics, name: str, **labels: str) -> float | None:
    """One sample of the registry (None: not exported)."""
    return metrics.registry.get_sample_value(name, labels)


def metrics_for(*operations: str) -> GatewayMetrics:
    return GatewayMetrics((TEXT_MODEL, operation) for operation in operations)


# -- the parts, fed directly ------------------------------------------------------------------


def test_declared_series_are_exported_at_zero_before_their_first_event() -> None:
    metrics = metrics_for("analyze_video")
    metrics.rpc.declare([f"/{GATEWAY}/AnalyzeVideo"])

    rpc = {"service": GATEWAY, "method": "AnalyzeVideo"}
    assert sample(metrics, "viewbait_rpcs_total", **rpc, code="OK") == 0
    # A method's histogram (18 series) appears with its first call.
    assert sample(metrics, "viewbait_rpc_duration_seconds_count", **rpc) is None
    assert sample(metrics, "viewbait_cache_misses_total", operation="analyze_video") == 0
    assert sample(metrics, "viewbait_cache_hits_total", operation="analyze_video", layer="hot") == 0
    tokens = {"model": TEXT_MODEL, "operation": "analyze_video", "kind": "output"}
    assert sample(metrics, "viewbait_upstream_tokens_total", **tokens) == 0
    queued = {"status": "queued", "operation": "analyze_video"}
    assert sample(metrics, "viewbait_job_queue_depth", **queued) == 0
    # Nothing about a store that has no pool (the embedded one).
    assert sample(metrics, "viewbait_store_circuit_open") is None


def test_rpcs_count_by_code_and_time_by_method() -> None:
    metrics = metrics_for()
    path = f"/{GATEWAY}/AnalyzeVideo"
    for code, seconds in [
        (grpc.StatusCode.OK, 0.0002),
        (grpc.StatusCode.OK, 0.3),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 0.0001),
    ]:
        metrics.rpc.finished(path, code, seconds)

    rpc = {"service": GATEWAY, "method": "AnalyzeVideo"}
    assert sample(metrics, "viewbait_rpcs_total", **rpc, code="OK") == 2
    assert sample(metrics, "viewbait_rpcs_total", **rpc, code="RESOURCE_EXHAUSTED") == 1
    assert sample(metrics, "viewbait_rpc_duration_seconds_count", **rpc) == 3
    assert sample(metrics, "viewbait_rpc_duration_seconds_bucket", **rpc, le="0.0005") == 2
    assert sample(metrics, "viewbait_rpc_duration_seconds_sum", **rpc) == pytest.approx(0.3003)


def test_each_cacheable_answer_counts_once_by_how_it_was_produced() -> None:
    metrics = metrics_for("analyze_video")
    answered = metrics.execution.answered
    answered("analyze_video", cached=True, coalesced=True)  # a join of a flight that hit
    answered("analyze_video", cached=True, coalesced=False)
    answered("analyze_video", cached=False, coalesced=True)
    answered("analyze_video", cached=False, coalesced=False)
    answered("analyze_video", cached=False, coalesced=False)

    op = {"operation": "analyze_video"}
    assert sample(metrics, "viewbait_cache_hits_total", **op, layer="store") == 2
    assert sample(metrics, "viewbait_coalesced_joins_total", **op) == 1
    assert sample(metrics, "viewbait_cache_misses_total", **op) == 2


async def test_every_attempt_is_counted_then_reaches_the_ledger() -> None:
    store = MemoryStore()
    metrics = metrics_for("analyze_video")
    sink = StoreUsageSink(store, UsageSettings())
    sink.add_observer(metrics.observe_usage)
    labels = CallLabels(operation="analyze_video", user_id="user-a", request_id="r1")
    usage = Usage(
        prompt_tokens=100,
        cached_prompt_tokens=30,
        output_tokens=20,
        thinking_tokens=5,
        image_output_tokens=0,
        total_tokens=125,
    )
    await sink.record(
        UsageRecord(labels, TEXT_MODEL, 1, UpstreamUnavailable.reason, duration_s=0.2)
    )
    await sink.record(UsageRecord(labels, TEXT_MODEL, 2, "ok", 1.5, usage, cost_usd=0.000125))
    await written(sink)

    assert [entry.record.attempt for entry in store.usage_entries()] == [1, 2]
    model = {"model": TEXT_MODEL}
    assert sample(metrics, "viewbait_upstream_attempts_total", **model, outcome="ok") == 1
    failed = {"outcome": UpstreamUnavailable.reason}
    assert sample(metrics, "viewbait_upstream_attempts_total", **model, **failed) == 1
    assert sample(metrics, "viewbait_upstream_attempt_duration_seconds_count", **model) == 2
    route = {**model, "operation": "analyze_video"}
    tokens = {
        kind: sample(metrics, "viewbait_upstream_tokens_total", **route, kind=kind)
        for kind in ("input", "cached_input", "output", "thinking", "image_output")
    }
    assert tokens == {
        "input": 70,
        "cached_input": 30,
        "output": 20,
        "thinking": 5,
        "image_output": 0,
    }
    assert sample(metrics, "viewbait_upstream_cost_usd_total", **route) == pytest.approx(0.000125)


def test_savings_add_up_by_operation_and_source() -> None:
    metrics = metrics_for("analyze_video")
    metrics.savings.saved("analyze_video", 0.002, source="cache")
    metrics.savings.saved("analyze_video", 0.001, source="cache")
    metrics.savings.saved("analyze_video", 0.004, source="coalescing")
    metrics.savings.saved("analyze_video", 0.0, source="coalescing")

    saved = {"operation": "analyze_video"}
    assert sample(metrics, "viewbait_saved_cost_usd_total", **saved, source="cache") == (
        pytest.approx(0.003)
    )
    assert sample(metrics, "viewbait_saved_cost_usd_total", **saved, source="coalescing") == (
        pytest.approx(0.004)
    )
    with pytest.raises(ValueError, match="unknown savings source"):
        metrics.savings.saved("analyze_video", 1.0, source="hot")


def test_the_queue_depth_of_a_pair_gone_from_the_store_falls_to_zero() -> None:
    metrics = metrics_for("analyze_video")
    metrics.jobs.set_queue_depth({("queued", "analyze_video"): 3, ("running", "other_op"): 1})
    metrics.jobs.set_queue_depth({("running", "analyze_video"): 2})

    depth = "viewbait_job_queue_depth"
    assert sample(metrics, depth, status="queued", operation="analyze_video") == 0
    assert sample(metrics, depth, status="running", operation="analyze_video") == 2
    assert sample(metrics, depth, status="running", operation="other_op") == 0


async def test_the_refresh_reads_the_queue_and_the_budget_caps() -> None:
    store = MemoryStore()
    await store.join_or_create_active_job(
        NewJob(user_id="user-a", op="analyze_video", input_json="{}", dedupe_key=b"k1")
    )
    # The real (embedded) budgets with a $50 daily cap on the model, $12.50 of it spent, read
    # at a fixed instant.
    now = int(datetime(2030, 1, 1, 12, tzinfo=UTC).timestamp()) * 1_000_000_000
    budgets = Budgets(
        Settings(budgets=BudgetSettings(models={TEXT_MODEL: 50.0})), clock=lambda: now
    )
    await budgets.reserve("user-a", Tier.PRO, TEXT_MODEL, 12_500_000_000)
    metrics = metrics_for("analyze_video")
    rounds = asyncio.Event()
    refresh = asyncio.create_task(
        refresh_forever(metrics, store, budgets, 0.01, refreshed=rounds.set)
    )
    try:
        await asyncio.wait_for(rounds.wait(), 10)
        queued = {"status": "queued", "operation": "analyze_video"}
        assert sample(metrics, "viewbait_job_queue_depth", **queued) == 1
        cap = {"budget": "model_day", "model": TEXT_MODEL}
        assert sample(metrics, "viewbait_budget_remaining_usd", **cap) == 37.5
        assert sample(metrics, "viewbait_budget_limit_usd", **cap) == 50.0
    finally:
        refresh.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await refresh


# -- the limiter deciding ---------------------------------------------------------------------


def limited(**limiter: Any) -> Settings:
    """Settings whose every route and tier admits two requests an hour."""
    limits = {
        tier: RouteLimits(admission=RateLimit(rate=2, period_s=3600, burst=2)) for tier in Tier
    }
    defaults = Settings()
    policies = {
        name: policy.model_copy(update={"limits": limits})
        for name, policy in defaults.policies.items()
    }
    return Settings(policies=policies, limiter=LimiterSettings(**limiter))


async def test_limiter_decisions_by_limit_and_outcome_and_its_mode() -> None:
    metrics = metrics_for("analyze_video")
    limiter = RateLimiter(limited(), metrics=metrics.limiter)
    try:
        await limiter.admit("analyze_video", "user-a", Tier.PRO)
        await limiter.admit("analyze_video", "user-a", Tier.PRO)
        with pytest.raises(Exception, match="rate limit exceeded"):
            await limiter.admit("analyze_video", "user-a", Tier.PRO)
        await limiter.check_upstream("analyze_video", "user-a", Tier.PRO, TEXT_MODEL, calls=3)
    finally:
        await limiter.aclose()

    decisions = "viewbait_limiter_decisions_total"
    assert sample(metrics, decisions, limit="admission", outcome="allowed") == 2
    assert sample(metrics, decisions, limit="admission", outcome="denied") == 1
    # No upstream limit on the route here; the model's fleet-wide limit charged once.
    assert sample(metrics, decisions, limit="upstream", outcome="allowed") == 0
    assert sample(metrics, decisions, limit="model", outcome="allowed") == 1
    assert sample(metrics, "viewbait_limiter_mode", mode="embedded") == 1
    assert sample(metrics, "viewbait_limiter_mode", mode="shared") == 0


async def test_a_closed_limiter_counts_refusals_as_unavailable_and_reports_its_mode() -> None:
    # Nothing listens there: every Redis call fails at once.
    settings = limited(
        redis_url=SecretStr(f"redis://127.0.0.1:{free_port()}/0"),
        failure_mode=FailureMode.CLOSED,
        breaker_failures=1,
        probe_interval_s=60,
    )
    metrics = metrics_for("analyze_video")
    limiter = RateLimiter.from_settings(settings, metrics=metrics.limiter)
    try:
        assert sample(metrics, "viewbait_limiter_mode", mode="shared") == 1
        with pytest.raises(Unavailable):
            await limiter.admit("analyze_video", "user-a", Tier.PRO)
        assert limiter.mode is LimiterMode.CLOSED_FALLBACK
    finally:
        await limiter.aclose()

    unavailable = {"limit": "admission", "outcome": "unavailable"}
    assert sample(metrics, "viewbait_limiter_decisions_total", **unavailable) == 1
    assert sample(metrics, "viewbait_limiter_mode", mode="closed-fallback") == 1
    assert sample(metrics, "viewbait_limiter_mode", mode="shared") == 0


# -- the /metrics endpoint --------------------------------------------------------------------


async def test_the_endpoint_serves_the_text_format_or_openmetrics_as_asked() -> None:
    metrics = metrics_for("analyze_video")
    http = MetricsServer(metrics, "127.0.0.1", 0)
    port = await http.start()
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                assert response.status == 200
                assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
                text = await response.text()
            openmetrics = {"Accept": "application/openmetrics-text; version=1.0.0"}
            async with session.get(
                f"http://127.0.0.1:{port}/metrics", headers=openmetrics
            ) as response:
                assert response.headers["Content-Type"].startswith("application/openmetrics-text")
                assert (await response.text()).endswith("# EOF\n")
            async with session.get(f"http://127.0.0.1:{port}/") as response:
                assert response.status == 404
    finally:
        await http.stop()
    assert 'viewbait_cache_misses_total{operation="analyze_video"} 0.0' in text
    assert "process_resident_memory_bytes" in text


# -- gateways ---------------------------------------------------------------------------------


async def test_metrics_are_off_unless_a_port_is_set(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    server = GatewayServer(gateway_settings(emulator, tmp_path))
    await server.start()
    try:
        assert (server.metrics, server.metrics_port) == (None, 0)
    finally:
        await server.stop(grace=0)


async def test_a_metrics_port_in_use_stops_start_up_naming_the_setting(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = gateway_settings(emulator, tmp_path, metrics=MetricsSettings(port=port))
        server = GatewayServer(settings)
        with pytest.raises(ConfigError, match="VIEWBAIT_METRICS__PORT"):
            await server.start()
        # Nothing was left running: the gRPC listener's port was given back.
        assert server.metrics_port == 0


async def test_pending_answers_and_coalesced_joins_are_counted(
    start_gateway: Any, emulator: EmulatorServer, tmp_path: Path
) -> None:
    settings = gateway_settings(
        emulator,
        tmp_path,
        execution=ExecutionSettings(long_poll_s=0.3),
        metrics=MetricsSettings(port=0),
    )
    gateway = await start_gateway(settings)
    metrics = gateway.server.metrics
    emulator.set_knobs(latency_s=1.0)
    request = operations_pb2.AnalyzeVideoRequest(video_id="dQw4w9WgXcQ", title="Treehouse")

    # Two callers of one request share one piece of work; both stop waiting after the window.
    first, second = await asyncio.gather(
        *(gateway.stub.AnalyzeVideo(request, metadata=as_user(), timeout=30) for _ in range(2))
    )
    assert first.HasField("pending") and second.HasField("pending")
    op = {"operation": "analyze_video"}
    assert sample(metrics, "viewbait_pending_answers_total", **op) == 2

    # Three callers of another request: one miss, two joins, all within the window.
    other = operations_pb2.AnalyzeVideoRequest(video_id="dQw4w9WgXc0", title="Treehouse")
    emulator.set_knobs(latency_s=0.2)
    answers = await asyncio.gather(
        *(gateway.stub.AnalyzeVideo(other, metadata=as_user(), timeout=30) for _ in range(3))
    )
    assert sum(a.metadata.coalesced for a in answers) == 2
    assert sample(metrics, "viewbait_cache_misses_total", **op) == 1
    assert sample(metrics, "viewbait_coalesced_joins_total", **op) == 2
    # Labels are bounded: the caller's user id is nowhere.
    assert as_user()[1] == ("x-viewbait-user-id", "user-a")
    assert "user-a" not in metrics.exposition().decode()


async def test_job_attempts_and_retries_are_counted(
    start_gateway: Any, emulator: EmulatorServer, tmp_path: Path
) -> None:
    jobs = JobSettings(workers=1, poll_interval_s=0.05, retry_initial_s=0.01, retry_max_s=0.02)
    settings = gateway_settings(emulator, tmp_path, jobs=jobs, metrics=MetricsSettings(port=0))
    settings = settings.model_copy(
        update={"gemini": settings.gemini.model_copy(update={"max_attempts": 1})}
    )
    gateway = await start_gateway(settings)
    metrics = gateway.server.metrics
    # The job's first attempt fails (a retryable 503); the second succeeds.
    emulator.inject("unavailable", model=TEXT_MODEL)
    stub = job_service_pb2_grpc.JobServiceStub(gateway.channel)
    request = operations_pb2.AnalyzeVideoRequest(video_id="dQw4w9WgXcQ", title="Treehouse")
    job = (
        await stub.SubmitJob(
            job_service_pb2.SubmitJobRequest(analyze_video=request), metadata=as_user(), timeout=30
        )
    ).job
    watch = stub.WatchJob(
        job_service_pb2.WatchJobRequest(job_id=job.id), metadata=as_user(), timeout=30
    )
    events = [event async for event in watch]
    assert events[-1].job.status == job_pb2.JOB_STATUS_SUCCEEDED and events[-1].job.attempts == 2

    op = {"operation": "analyze_video"}
    attempts = "viewbait_job_attempt_duration_seconds_count"
    assert sample(metrics, attempts, **op, outcome="failed") == 1
    assert sample(metrics, attempts, **op, outcome="succeeded") == 1
    retried = {"reason": UpstreamUnavailable.reason}
    assert sample(metrics, "viewbait_job_retries_total", **op, **retried) == 1


async def test_savings_records_of_the_ledger_feed_the_money_saved_by_source() -> None:
    metrics = metrics_for("analyze_video")
    sink = StoreUsageSink(MemoryStore(), UsageSettings())
    sink.add_observer(metrics.observe_usage)
    labels = CallLabels(operation="analyze_video", user_id="user-a")
    for outcome, saved in ((CACHE_HIT, 0.25), (CACHE_HIT, 0.5), (COALESCED, 0.125)):
        await sink.record(UsageRecord(labels, TEXT_MODEL, 0, outcome, 0.0, saved_usd=saved))

    op = {"operation": "analyze_video"}
    assert sample(metrics, "viewbait_saved_cost_usd_total", **op, source="cache") == 0.75
    assert sample(metrics, "viewbait_saved_cost_usd_total", **op, source="coalescing") == 0.125
    assert sample(metrics, "viewbait_upstream_attempts_total", model=TEXT_MODEL, outcome="ok") == 0


async def test_promtool_accepts_every_family_populated() -> None:
    metrics = metrics_for("analyze_video")
    metrics.rpc.finished(f"/{GATEWAY}/AnalyzeVideo", grpc.StatusCode.UNAVAILABLE, 0.02)
    metrics.execution.answered("analyze_video", cached=False, coalesced=True)
    metrics.execution.of("analyze_video").pending.inc()
    labels = CallLabels(operation="analyze_video", user_id="user-a")
    sink = StoreUsageSink(MemoryStore(), UsageSettings())
    sink.add_observer(metrics.observe_usage)
    await sink.record(UsageRecord(labels, TEXT_MODEL, 1, "ok", 0.5, Usage(prompt_tokens=9), 0.1))
    metrics.savings.saved("analyze_video", 0.1, source="cache")
    limiter = RateLimiter(limited(), metrics=metrics.limiter)
    try:
        await limiter.admit("analyze_video", "user-a", Tier.PRO)
    finally:
        await limiter.aclose()
    metrics.jobs.attempt("analyze_video", "failed", 3.0)
    metrics.jobs.retried("analyze_video", UpstreamUnavailable.reason)
    metrics.jobs.rescued(2)
    metrics.jobs.set_queue_depth({("queued", "analyze_video"): 4})
    resets = datetime(2030, 1, 2, tzinfo=UTC)
    metrics.budgets.set_states([BudgetState("model_day", TEXT_MODEL, 50.0, 60.0, resets)])

    exposition = metrics.exposition()
    checked = promtool_check_metrics(exposition)

    assert (checked.returncode, checked.stdout, checked.stderr) == (0, "", "")
    assert b'viewbait_budget_remaining_usd{budget="model_day",model="gemini-3.6-flash"} 0.0' in (
        exposition
    )
