"""A caller that goes away mid-stream: the gateway stops the upstream work nobody waits for, and
keeps serving everyone else; its log line says CANCELLED.

The emulator holds each answer for a while (latency knob), so the upstream requests are in
flight when the caller cancels. The adapter records every attempt in the usage ledger, so an
attempt cut short shows up there as CANCELLED, and one that ran to the end as "ok".
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from grpc_health.v1 import health_pb2

pytestmark = pytest.mark.asyncio(loop_scope="module")

#: Long enough that the upstream requests are still running when the caller leaves.
UPSTREAM_LATENCY_S = 5.0
#: Upper bound on waiting for something that should happen promptly.
PATIENCE_S = 20.0


async def eventually(condition: Callable[[], bool], what: str) -> None:
    """Waits until `condition()` holds; fails after `PATIENCE_S`."""
    give_up = time.monotonic() + PATIENCE_S
    while not condition():
        if time.monotonic() > give_up:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.02)


def logged_codes(caplog: pytest.LogCaptureFixture, request_id: str) -> list[str]:
    """The status codes the gateway's "rpc finished" log lines for one request report."""
    return [
        str(getattr(r, "rpc_code", None))
        for r in caplog.records
        if r.getMessage() == "rpc finished" and getattr(r, "request_id", None) == request_id
    ]


def outcomes(gateway: Any, request_id: str) -> list[str]:
    """The usage ledger's outcome of each upstream attempt made for one request."""
    ledger = gateway.server.store.usage_entries()
    return [e.record.outcome for e in ledger if e.record.labels.request_id == request_id]


async def test_cancelled_stream_cancels_its_upstream_calls(
    gateway: Any, upstream: Any, samples: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.rpc")
    upstream.set_knobs(latency_s=UPSTREAM_LATENCY_S)
    image_model = gateway.model_for("generate_thumbnail")
    request_id = f"req-{uuid.uuid4().hex}"
    call = gateway.stub.GenerateThumbnail(
        samples.request("generate_thumbnail", variations=2),
        metadata=gateway.as_service(request_id=request_id),
        timeout=60,
    )

    first = await call.read()
    assert first.HasField("progress")
    await eventually(
        lambda: upstream.stats().count(model=image_model) == 2, "both upstream requests"
    )
    call.cancel()

    await eventually(
        lambda: len(outcomes(gateway, request_id)) == 2, "the two attempts to be recorded"
    )
    assert outcomes(gateway, request_id) == ["CANCELLED", "CANCELLED"]
    assert upstream.stats().count(model=image_model) == 2  # nothing was retried either
    await eventually(lambda: bool(logged_codes(caplog, request_id)), "the RPC's log line")
    assert logged_codes(caplog, request_id) == ["CANCELLED"]

    # The gateway is unharmed: the next caller's stream runs to its summary.
    upstream.set_knobs(latency_s=0.0)
    messages = await gateway.call(
        gateway.operation("generate_thumbnail"),
        samples.request("generate_thumbnail"),
        gateway.as_service(),
    )
    assert messages[-1].summary.image_count == 1


async def test_cancelled_unary_call_cancels_its_upstream_call(
    gateway: Any, upstream: Any, samples: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.rpc")
    upstream.set_knobs(latency_s=UPSTREAM_LATENCY_S)
    request_id = f"req-{uuid.uuid4().hex}"
    call = gateway.stub.AnalyzeVideo(
        samples.request("analyze_video"),
        metadata=gateway.as_service(request_id=request_id),
        timeout=60,
    )

    await eventually(lambda: upstream.stats().requests == 1, "the upstream request")
    call.cancel()

    await eventually(lambda: bool(outcomes(gateway, request_id)), "the attempt to be recorded")
    assert outcomes(gateway, request_id) == ["CANCELLED"]
    await eventually(lambda: bool(logged_codes(caplog, request_id)), "the RPC's log line")
    assert logged_codes(caplog, request_id) == ["CANCELLED"]
    health = await gateway.health.Check(health_pb2.HealthCheckRequest(), timeout=30)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
