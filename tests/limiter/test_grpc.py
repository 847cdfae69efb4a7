"""Rate limits end to end: a real `GatewayServer` on 127.0.0.1:0, real channels and stubs.

Over a small admission limit, every RPC answers RESOURCE_EXHAUSTED with `retry-after-ms` trailing
metadata and a google.rpc.RetryInfo detail, before any upstream call; the upstream limit guards
each Gemini call; with failure mode `closed` and Redis unreachable, the limiter's health service
and the overall one say NOT_SERVING and calls answer UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import io
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from PIL import Image
from pydantic import SecretStr
from viewbait.ai.v1 import common_pb2, gateway_service_pb2_grpc, operations_pb2

from gateway.config import (
    AuthSettings,
    Backend,
    FailureMode,
    GeminiSettings,
    RateLimit,
    ServerSettings,
    Settings,
)
from gateway.limiter import LimiterMode
from gateway.rpc.status import RETRY_AFTER_KEY
from gateway.server import LIMITER_HEALTH_SERVICE, GatewayServer

SERVICE_TOKEN = "limiter-tests-service-token-0123456789"
TWO_PER_HOUR = RateLimit(rate=2, period_s=3600, burst=2)


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (320, 180), (200, 30, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def as_user(user: str, tier: str = "pro") -> tuple[tuple[str, str], ...]:
    return (
        ("authorization", f"Bearer {SERVICE_TOKEN}"),
        ("x-viewbait-user-id", user),
        ("x-viewbait-tier", tier),
    )


def gateway_settings(limits: Settings) -> Settings:
    """`limits` (policies and limiter) on a loopback server answered by the in-process
    emulator."""
    return limits.model_copy(
        update={
            "server": ServerSettings(host="127.0.0.1", port=0, shutdown_grace_s=1.0),
            "auth": AuthSettings(service_token=SecretStr(SERVICE_TOKEN)),
            # Asked for explicitly: with Redis configured this is not local mode.
            "gemini": GeminiSettings(
                backend=Backend.EMULATOR, backoff_initial_s=0.01, backoff_max_s=0.05
            ),
        }
    )


class Running:
    """A started gateway and a stub on a channel to it."""

    def __init__(self, server: GatewayServer, channel: aio.Channel) -> None:
        self.server = server
        self.channel = channel
        self.stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)


@pytest.fixture
async def start_gateway() -> AsyncIterator[Callable[[Settings], Any]]:
    """`await start_gateway(settings)`: a running in-process gateway, stopped after the test."""
    running: list[Running] = []

    async def start(settings: Settings) -> Running:
        server = GatewayServer(gateway_settings(settings))
        await server.start()
        gateway = Running(server, aio.insecure_channel(f"127.0.0.1:{server.port}"))
        running.append(gateway)
        return gateway

    try:
        yield start
    finally:
        for gateway in running:
            await gateway.channel.close()
            await gateway.server.stop(grace=1.0)


def _calls(stub: gateway_service_pb2_grpc.GatewayServiceStub, png: bytes) -> dict[str, Any]:
    """Two different unary RPCs, each as a zero-argument call for one user."""
    return {
        "AnalyzeVideo": lambda user: stub.AnalyzeVideo(
            operations_pb2.AnalyzeVideoRequest(video_id="dQw4w9WgXcQ", title="A treehouse"),
            metadata=as_user(user),
            timeout=30,
        ),
        "ComputeAttentionHeatmap": lambda user: stub.ComputeAttentionHeatmap(
            operations_pb2.ComputeAttentionHeatmapRequest(
                image=common_pb2.Image(data=png, mime_type="image/png")
            ),
            metadata=as_user(user),
            timeout=30,
        ),
    }


def _retry_info(error: aio.AioRpcError) -> tuple[float, str]:
    """RetryInfo's delay in seconds and ErrorInfo's reason, decoded from the status details."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    delay, reason = -1.0, ""
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            delay = info.retry_delay.ToMilliseconds() / 1000
        elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            error_info = error_details_pb2.ErrorInfo()
            detail.Unpack(error_info)
            reason = error_info.reason
    return delay, reason


@pytest.mark.parametrize("backend", ["embedded", "shared"])
async def test_over_the_admission_limit_every_rpc_answers_resource_exhausted(
    backend: str,
    start_gateway: Callable[[Settings], Any],
    make_settings: Callable[..., Settings],
    key_prefix: str,
    redis_url: str,
) -> None:
    limiter = {"redis_url": redis_url} if backend == "shared" else {}
    gateway: Running = await start_gateway(
        make_settings(key_prefix, admission=TWO_PER_HOUR, **limiter)
    )
    assert gateway.server.limiter is not None
    expected = LimiterMode.SHARED if backend == "shared" else LimiterMode.EMBEDDED
    assert gateway.server.limiter.mode is expected
    emulator = gateway.server.emulator
    assert emulator is not None
    for rpc, call in _calls(gateway.stub, _png()).items():
        for _ in range(2):
            await call("alice")
        upstream_before = emulator.stats().requests
        with pytest.raises(aio.AioRpcError) as denied:
            await call("alice")
        error = denied.value
        assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, rpc
        trailing = dict(error.trailing_metadata() or ())
        retry_after_ms = int(trailing[RETRY_AFTER_KEY])
        assert 1_799_000 <= retry_after_ms <= 1_800_000, rpc
        delay, reason = _retry_info(error)
        assert delay == retry_after_ms / 1000
        assert reason == "RATE_LIMITED"
        assert "retry in" in (error.details() or "")
        assert emulator.stats().requests == upstream_before, "a denied request costs nothing"
        # Someone else is not affected.
        await call("bob")


async def test_the_upstream_limit_guards_every_model_call(
    start_gateway: Callable[[Settings], Any],
    make_settings: Callable[..., Settings],
    key_prefix: str,
) -> None:
    settings = make_settings(key_prefix, upstream=TWO_PER_HOUR)
    # Requests of up to two variations: a burst of two can admit them.
    settings = settings.model_copy(
        update={"bounds": settings.bounds.model_copy(update={"max_variations": 2})}
    )
    gateway: Running = await start_gateway(settings)
    emulator = gateway.server.emulator
    assert emulator is not None
    one = operations_pb2.GenerateThumbnailRequest(prompt="A treehouse", variations=1)
    async for _ in gateway.stub.GenerateThumbnail(one, metadata=as_user("alice", "free")):
        pass
    two = operations_pb2.GenerateThumbnailRequest(prompt="A treehouse", variations=2)
    with pytest.raises(aio.AioRpcError) as denied:
        async for _ in gateway.stub.GenerateThumbnail(
            two, metadata=as_user("alice", "free"), timeout=30
        ):
            pass
    assert denied.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "Gemini-call limit of route 'generate'" in (denied.value.details() or "")
    assert RETRY_AFTER_KEY in dict(denied.value.trailing_metadata() or ())
    # One call left, two needed: neither variation reached the model.
    assert emulator.stats().requests == 1


async def test_closed_failure_mode_reports_not_serving_and_unavailable(
    start_gateway: Callable[[Settings], Any],
    make_settings: Callable[..., Settings],
    key_prefix: str,
) -> None:
    # A port nothing listens on.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    gateway: Running = await start_gateway(
        make_settings(
            key_prefix,
            admission=TWO_PER_HOUR,
            redis_url=f"redis://127.0.0.1:{dead_port}/0",
            failure_mode=FailureMode.CLOSED,
            probe_interval_s=0.05,
        )
    )
    assert gateway.server.limiter is not None
    assert gateway.server.limiter.mode is LimiterMode.CLOSED_FALLBACK
    health = health_pb2_grpc.HealthStub(gateway.channel)
    answer = await health.Check(health_pb2.HealthCheckRequest(service=LIMITER_HEALTH_SERVICE))
    assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING
    # A replica that refuses every request is no use to a load balancer either.
    overall = await health.Check(health_pb2.HealthCheckRequest(service=""))
    assert overall.status == health_pb2.HealthCheckResponse.NOT_SERVING
    with pytest.raises(aio.AioRpcError) as refused:
        await _calls(gateway.stub, _png())["AnalyzeVideo"]("alice")
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "failure_mode is 'closed'" in (refused.value.details() or "")


async def test_an_idle_replica_probes_redis_and_turns_not_serving_when_it_stops(
    start_gateway: Callable[[Settings], Any],
    make_settings: Callable[..., Settings],
    key_prefix: str,
    private_redis: Any,
) -> None:
    gateway: Running = await start_gateway(
        make_settings(
            key_prefix,
            admission=TWO_PER_HOUR,
            redis_url=private_redis.url,
            failure_mode=FailureMode.CLOSED,
            probe_interval_s=0.05,
        )
    )
    health = health_pb2_grpc.HealthStub(gateway.channel)

    async def status(service: str) -> int:
        answer = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        return int(answer.status)

    serving, not_serving = (
        health_pb2.HealthCheckResponse.SERVING,
        health_pb2.HealthCheckResponse.NOT_SERVING,
    )
    assert await status("") == serving
    assert await status(LIMITER_HEALTH_SERVICE) == serving

    private_redis.stop()
    # No request is made: only the replica's own probe can notice.
    for _ in range(400):
        if await status("") == not_serving:
            break
        await asyncio.sleep(0.05)
    assert await status("") == not_serving
    assert await status(LIMITER_HEALTH_SERVICE) == not_serving
    assert gateway.server.limiter is not None
    assert gateway.server.limiter.mode is LimiterMode.CLOSED_FALLBACK
