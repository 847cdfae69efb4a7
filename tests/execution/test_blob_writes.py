"""When a request's input images are written to the blob store: only after admission and the
upstream limits passed, and only within the user's blob write limit (over real gRPC)."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import grpc
import pytest
from PIL import Image as PILImage
from viewbait.ai.v1 import common_pb2, operations_pb2

from gateway.config import InputBounds, RateLimit, RouteLimits, Settings, StoreSettings, Tier
from gateway.emulator import EmulatorServer
from tests.fixtures.gateways import as_user, gateway_settings

TIMEOUT_S = 30


def noise_png(side: int = 400) -> bytes:
    """A PNG of random pixels (about `side`*`side`*3 bytes: it does not compress)."""
    out = io.BytesIO()
    PILImage.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(out, format="PNG")
    return out.getvalue()


def heatmap(data: bytes) -> operations_pb2.ComputeAttentionHeatmapRequest:
    return operations_pb2.ComputeAttentionHeatmapRequest(image=common_pb2.Image(data=data))


def with_heatmap_limits(limits: RouteLimits) -> dict[str, Any]:
    policies = dict(Settings().policies)
    policy = policies["compute_attention_heatmap"]
    policies["compute_attention_heatmap"] = policy.model_copy(update={"limits": {Tier.PRO: limits}})
    return {"policies": policies}


async def test_a_request_refused_by_a_limit_writes_no_blob(
    start_gateway: Any, emulator: EmulatorServer, tmp_path: Path
) -> None:
    one_call = RateLimit(rate=1, period_s=3600, burst=1)
    gateway = await start_gateway(
        gateway_settings(emulator, tmp_path, **with_heatmap_limits(RouteLimits(upstream=one_call)))
    )
    blobs = gateway.server.blobs
    first, refused = noise_png(), noise_png()

    await gateway.stub.ComputeAttentionHeatmap(
        heatmap(first), metadata=as_user(), timeout=TIMEOUT_S
    )
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await gateway.stub.ComputeAttentionHeatmap(
            heatmap(refused), metadata=as_user(), timeout=TIMEOUT_S
        )

    assert denied.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await blobs.exists(hashlib.sha256(first).digest())
    assert not await blobs.exists(hashlib.sha256(refused).digest())


async def test_the_blob_write_limit_refuses_a_user_over_it_with_a_retry_after(
    start_gateway: Any, emulator: EmulatorServer, tmp_path: Path
) -> None:
    image_limit = 1024 * 1024
    store = StoreSettings(blob_write_limit=RateLimit(rate=1024, period_s=3600, burst=1024))
    gateway = await start_gateway(
        gateway_settings(
            emulator,
            tmp_path,
            store=store,
            bounds=InputBounds(max_image_bytes=image_limit, max_total_image_bytes=image_limit),
        )
    )
    images = [noise_png() for _ in range(3)]  # about 470 KiB each: two fit in the burst
    for data in images[:2]:
        await gateway.stub.ComputeAttentionHeatmap(
            heatmap(data), metadata=as_user(), timeout=TIMEOUT_S
        )
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await gateway.stub.ComputeAttentionHeatmap(
            heatmap(images[2]), metadata=as_user(), timeout=TIMEOUT_S
        )
    # Another user has a limit of their own.
    await gateway.stub.ComputeAttentionHeatmap(
        heatmap(images[2]), metadata=as_user("user-b"), timeout=TIMEOUT_S
    )

    error = denied.value
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "input KiB written per user" in (error.details() or "")
    trailers = dict(error.trailing_metadata() or ())
    assert int(trailers["retry-after-ms"]) > 0


def test_a_blob_write_limit_below_the_largest_request_is_refused() -> None:
    with pytest.raises(ValueError, match=r"blob_write_limit\.burst"):
        Settings(store=StoreSettings(blob_write_limit=RateLimit(rate=1, period_s=60, burst=10)))
