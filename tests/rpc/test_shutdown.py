"""Graceful shutdown of `python -m gateway serve` on SIGTERM, as an orchestrator would send it.

While a GenerateThumbnail stream is in flight (the emulator holds each answer for a while):
health turns NOT_SERVING, new RPCs are refused, the stream still runs to its summary, and the
process exits 0 within its grace period. The usage ledger queued in memory, the drained
stream's calls included, is written before the store closes.
"""

from __future__ import annotations

import signal
import subprocess
import uuid
from typing import Any

import asyncpg
import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from viewbait.ai.v1 import gateway_service_pb2, gateway_service_pb2_grpc, operations_pb2

from gateway.server import LOCAL_DEV_SERVICE_TOKEN
from gateway.store.migrate import quote_ident
from tests.fixtures.stores import DATABASE_URL

#: How long the emulator holds each answer: the stream is still running when SIGTERM comes.
UPSTREAM_LATENCY_S = 1.5
GRACE_S = 15
LOCAL_CALLER = (
    ("authorization", f"Bearer {LOCAL_DEV_SERVICE_TOKEN}"),
    ("x-viewbait-user-id", "demo-user"),
    ("x-viewbait-tier", "pro"),
)


async def test_sigterm_drains_the_in_flight_stream_then_exits_zero(spawn_gateway: Any) -> None:
    served = spawn_gateway(
        VIEWBAIT_EMULATOR__LATENCY_S=str(UPSTREAM_LATENCY_S),
        VIEWBAIT_SERVER__SHUTDOWN_GRACE_S=str(GRACE_S),
    )
    async with aio.insecure_channel(served.address) as channel:
        # Any: types-grpcio-health-checking does not declare Watch.
        health: Any = health_pb2_grpc.HealthStub(channel)
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=60)
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
        stream = gateway_service_pb2_grpc.GatewayServiceStub(channel).GenerateThumbnail(
            operations_pb2.GenerateThumbnailRequest(prompt="a treehouse at dusk", variations=2),
            metadata=LOCAL_CALLER,
            timeout=60,
        )
        first = await stream.read()
        assert isinstance(first, gateway_service_pb2.GenerateThumbnailResponse), served.log()
        assert first.HasField("progress")  # the generation is under way

        served.process.send_signal(signal.SIGTERM)

        assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
        watch.cancel()  # a watcher would otherwise be drained for the whole grace
        async with aio.insecure_channel(served.address) as newcomer:
            with pytest.raises(aio.AioRpcError) as refused:
                await gateway_service_pb2_grpc.GatewayServiceStub(newcomer).AnalyzeVideo(
                    operations_pb2.AnalyzeVideoRequest(video_id="dQw4w9WgXcQ"),
                    metadata=LOCAL_CALLER,
                    timeout=10,
                )
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE

        rest: list[Any] = []
        while (message := await stream.read()) is not aio.EOF:
            rest.append(message)
        assert await stream.code() is grpc.StatusCode.OK
        kinds = [m.WhichOneof("event") for m in rest]
        assert kinds.count("image") == 2 and kinds[-1] == "summary", kinds
        assert rest[-1].summary.image_count == 2

    try:
        exit_code = served.process.wait(timeout=GRACE_S + 10)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"still running after the grace:\n{served.log()}") from None
    assert exit_code == 0, served.log()
    # The stream was drained, not done before the signal: it finished after the drain began.
    milestones = [m for record in served.log_records() if (m := milestone(record))]
    assert milestones[-4:] == [
        "signal received, shutting down",
        "draining",
        "GenerateThumbnail OK",
        "stopped",
    ], served.log()


def milestone(record: dict[str, Any]) -> str | None:
    """The server's lifecycle lines and the stream's outcome, from the structured log."""
    if str(record.get("rpc_method", "")).endswith("/GenerateThumbnail"):
        return f"GenerateThumbnail {record['rpc_code']}"
    if record["logger"] == "gateway.server":
        return str(record["msg"])
    return None


async def test_a_clean_stop_writes_the_whole_usage_ledger_first(
    spawn_gateway: Any, pg_schema: str
) -> None:
    # An interval no test outlasts: only the shutdown can have written these records.
    served = spawn_gateway(
        VIEWBAIT_GEMINI__BACKEND="emulator",
        VIEWBAIT_STORE__DATABASE_URL=DATABASE_URL,
        VIEWBAIT_STORE__SCHEMA=pg_schema,
        VIEWBAIT_STORE__MIGRATE_ON_START="true",
        VIEWBAIT_USAGE__FLUSH_INTERVAL_S="60",
        VIEWBAIT_EMULATOR__LATENCY_S="1.0",
        VIEWBAIT_SERVER__SHUTDOWN_GRACE_S=str(GRACE_S),
    )
    request_id = f"req-{uuid.uuid4().hex}"
    caller = (*LOCAL_CALLER, ("x-request-id", request_id))
    async with aio.insecure_channel(served.address) as channel:
        stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
        analysis = operations_pb2.AnalyzeVideoRequest(video_id="dQw4w9WgXcQ")
        for _ in range(2):  # paid, then from the cache
            await stub.AnalyzeVideo(analysis, metadata=caller, timeout=60)
        stream = stub.GenerateThumbnail(
            operations_pb2.GenerateThumbnailRequest(prompt="a treehouse at dusk", variations=2),
            metadata=caller,
            timeout=60,
        )
        assert (await stream.read()).HasField("progress"), served.log()

        served.process.send_signal(signal.SIGTERM)

        while await stream.read() is not aio.EOF:
            pass
        assert await stream.code() is grpc.StatusCode.OK
    assert served.process.wait(timeout=GRACE_S + 10) == 0, served.log()
    conn = await asyncpg.connect(DATABASE_URL)
    try:
        rows = await conn.fetch(
            # The schema is this test's own; the savings row carries no request id (savings
            # are folded per second, and a fold speaks for no one request).
            f"SELECT op, outcome, events FROM {quote_ident(pg_schema)}.ai_usage "
            "WHERE request_id IN ($1, '') ORDER BY id",
            request_id,
        )
    finally:
        await conn.close()
    assert [(r["op"], r["outcome"], r["events"]) for r in rows] == [
        ("analyze_video", "ok", 1),
        ("analyze_video", "cache_hit", 1),
        ("generate_thumbnail", "ok", 1),
        ("generate_thumbnail", "ok", 1),
    ], served.log()
