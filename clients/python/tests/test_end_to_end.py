"""`GatewayClient` against a real gateway: in-process `GatewayServer` on 127.0.0.1:0 in local mode
(its offline Gemini emulator behind it), called over a real channel.

Needs the gateway package (this repository) installed next to the client.
"""

from __future__ import annotations

import hashlib
import io
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
from PIL import Image as PILImage
from pydantic import SecretStr
from viewbait.ai.v1 import (
    common_pb2,
    job_pb2,
    job_service_pb2,
    operations_pb2,
    usage_service_pb2,
)
from viewbait_gateway_client import FieldViolation, GatewayClient, GatewayError

from gateway.auth import mint_dev_jwt
from gateway.config import AuthSettings, GeminiSettings, ServerSettings, Settings, Tier
from gateway.emulator import EmulatorServer
from gateway.server import GatewayServer
from gateway.store.memory import MemoryStore

from .conftest import eventually

SERVICE_TOKEN = "client-e2e-service-token-0123456789"
JWT_SECRET = "client-e2e-hs256-secret-of-at-least-32-bytes"
VIDEO_ID = "dQw4w9WgXcQ"


@pytest.fixture
async def server() -> AsyncIterator[GatewayServer]:
    """A running gateway that accepts the service token above and JWTs signed with the secret."""
    gateway = GatewayServer(
        Settings(
            server=ServerSettings(host="127.0.0.1", port=0),
            auth=AuthSettings(
                service_token=SecretStr(SERVICE_TOKEN), jwt_secret=SecretStr(JWT_SECRET)
            ),
            gemini=GeminiSettings(backoff_initial_s=0.01, backoff_max_s=0.05),
        )
    )
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.stop(grace=1.0)


def emulator_of(server: GatewayServer) -> EmulatorServer:
    emulator = server.emulator
    assert emulator is not None, "the gateway runs in local mode"
    return emulator


def backend_client(server: GatewayServer, tier: str = "pro") -> GatewayClient:
    """The trusted backend's client, acting for one user."""
    return GatewayClient(
        f"127.0.0.1:{server.port}", token=SERVICE_TOKEN, user_id="user-1", tier=tier
    )


def png(size: tuple[int, int] = (320, 180)) -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", size, (200, 30, 30)).save(buffer, "PNG")
    return buffer.getvalue()


async def test_unary_call(server: GatewayServer) -> None:
    async with backend_client(server) as client:
        response = await client.compute_attention_heatmap(
            operations_pb2.ComputeAttentionHeatmapRequest(
                image=common_pb2.Image(data=png(), mime_type="image/png")
            ),
            timeout_s=60,
            request_id="req-unary-1",
        )

    assert response.WhichOneof("outcome") == "result"
    assert response.result.regions
    heatmap = response.result.heatmap
    assert hashlib.sha256(heatmap.image.data).hexdigest() == heatmap.sha256
    assert response.metadata.request_id == "req-unary-1"
    assert response.metadata.usage.cost_usd > 0


async def test_a_users_own_jwt(server: GatewayServer) -> None:
    token = mint_dev_jwt(JWT_SECRET, "user-jwt", Tier.PRO)
    async with GatewayClient(f"127.0.0.1:{server.port}", token=token) as client:
        response = await client.analyze_video(
            operations_pb2.AnalyzeVideoRequest(video_id=VIDEO_ID), timeout_s=60
        )

    assert response.result.summary


async def test_a_user_reads_what_they_spent_and_saved(server: GatewayServer) -> None:
    token = mint_dev_jwt(JWT_SECRET, "user-usage", Tier.PRO)
    request = operations_pb2.AnalyzeVideoRequest(video_id=VIDEO_ID)
    async with GatewayClient(f"127.0.0.1:{server.port}", token=token) as client:
        paid = await client.analyze_video(request, timeout_s=60)
        await client.analyze_video(request, timeout_s=60)  # from the cache
        assert server.usage is not None and await server.usage.flush()
        usage = await client.get_usage(usage_service_pb2.GetUsageRequest(), timeout_s=60)

        assert usage.user_id == "user-usage"
        assert usage.totals.cost_usd == pytest.approx(paid.metadata.usage.cost_usd)
        assert usage.totals.cache_hits == 1
        assert usage.totals.saved_usd == pytest.approx(paid.metadata.usage.cost_usd)
        with pytest.raises(GatewayError) as refused:
            await client.get_usage(usage_service_pb2.GetUsageRequest(fleet=True), timeout_s=60)
    assert refused.value.code is grpc.StatusCode.PERMISSION_DENIED


async def test_stream_as_an_async_iterator(server: GatewayServer) -> None:
    async with backend_client(server, tier="free") as client:
        events = [
            event
            async for event in client.generate_thumbnail(
                operations_pb2.GenerateThumbnailRequest(prompt="a treehouse", variations=2),
                timeout_s=60,
                request_id="req-stream-1",
            )
        ]

    kinds = [event.WhichOneof("event") for event in events]
    assert kinds[0] == "progress"
    assert kinds.count("image") == 2
    assert kinds.count("summary") == 1 and kinds[-1] == "summary"
    for event in events:
        if event.HasField("image"):
            image = event.image.image
            assert image.image.data.startswith(b"\x89PNG")
            assert hashlib.sha256(image.image.data).hexdigest() == image.sha256
    assert events[-1].summary.image_count == 2
    assert events[-1].summary.metadata.request_id == "req-stream-1"


async def test_leaving_the_stream_early_cancels_the_work(server: GatewayServer) -> None:
    emulator = emulator_of(server)
    emulator.set_knobs(latency_s=5.0)  # the image is still being made when the loop is left
    request_id = f"req-{uuid.uuid4().hex}"

    async with backend_client(server) as client:
        async for event in client.generate_thumbnail(
            operations_pb2.GenerateThumbnailRequest(prompt="a treehouse"),
            timeout_s=60,
            request_id=request_id,
        ):
            assert event.HasField("progress")
            await eventually(lambda: emulator.stats().requests == 1, "the upstream request")
            break

        def outcomes() -> list[str]:
            assert isinstance(server.store, MemoryStore), "the embedded store keeps the ledger"
            ledger = server.store.usage_entries()
            return [e.record.outcome for e in ledger if e.record.labels.request_id == request_id]

        await eventually(lambda: bool(outcomes()), "the upstream attempt to end")
    assert outcomes() == ["CANCELLED"]


async def test_invalid_argument_carries_field_violations(server: GatewayServer) -> None:
    async with backend_client(server) as client:
        with pytest.raises(GatewayError) as caught:
            await client.analyze_video(
                operations_pb2.AnalyzeVideoRequest(video_id="nope"), timeout_s=60
            )

    error = caught.value
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == "INVALID_ARGUMENT"
    assert error.domain == "ai.viewbait.app"
    assert error.violations == (
        FieldViolation(
            "video_id", "must be a YouTube video id: 11 characters of A-Z, a-z, 0-9, '_' or '-'"
        ),
    )
    assert error.retry_after_s is None


async def test_upstream_rate_limit_carries_retry_after(server: GatewayServer) -> None:
    emulator_of(server).inject("rate_limited", rate=1.0, retry_delay_s=0.25)

    async with backend_client(server) as client:
        with pytest.raises(GatewayError) as caught:
            await client.suggest_thumbnail_concepts(
                operations_pb2.SuggestThumbnailConceptsRequest(
                    video_id=VIDEO_ID, analytics_json='{"views": 10}'
                ),
                timeout_s=60,
            )

    error = caught.value
    assert error.code is grpc.StatusCode.UNAVAILABLE
    assert error.reason == "UPSTREAM_UNAVAILABLE"
    assert error.retry_after_s == pytest.approx(0.25)


async def test_permission_denied_names_the_tier(server: GatewayServer) -> None:
    async with backend_client(server, tier="starter") as client:
        with pytest.raises(GatewayError) as caught:
            await client.compute_attention_heatmap(
                operations_pb2.ComputeAttentionHeatmapRequest(image=common_pb2.Image(data=png())),
                timeout_s=60,
            )

    error = caught.value
    assert error.code is grpc.StatusCode.PERMISSION_DENIED
    assert error.reason == "PERMISSION_DENIED"
    assert error.error_metadata["required_tiers"] == "advanced,pro"
    assert "your tier is starter" in error.message


async def test_submit_then_watch_a_job_to_its_result(server: GatewayServer) -> None:
    """A submitted job streams its states through WatchJob and ends with the result."""
    request = job_service_pb2.SubmitJobRequest(
        analyze_video=operations_pb2.AnalyzeVideoRequest(video_id="jobWatch_01")
    )
    async with backend_client(server) as client:
        submitted = await client.submit_job(request, timeout_s=60)
        job_id = submitted.job.id
        statuses = []
        last = None
        async for event in client.watch_job(
            job_service_pb2.WatchJobRequest(job_id=job_id), timeout_s=60
        ):
            statuses.append(event.job.status)
            last = event
        fetched = await client.get_job(job_service_pb2.GetJobRequest(job_id=job_id), timeout_s=60)
        with pytest.raises(GatewayError) as caught:
            await client.acting_as("someone-else", "pro").get_job(
                job_service_pb2.GetJobRequest(job_id=job_id), timeout_s=60
            )

    assert last is not None
    assert statuses[-1] == job_pb2.JOB_STATUS_SUCCEEDED
    assert last.job.WhichOneof("result") == "analyze_video"
    assert last.job.analyze_video.summary
    assert fetched.job.analyze_video == last.job.analyze_video
    assert caught.value.code is grpc.StatusCode.NOT_FOUND
