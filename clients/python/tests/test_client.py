"""`GatewayClient` without a gateway: failures surface as `GatewayError`, views share the channel.

Calls go to a loopback port nobody listens on, so every call really fails in gRPC's transport.
End-to-end tests against the real gateway live with the server's tests.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import grpc
import pytest
from viewbait.ai.v1 import job_service_pb2, operations_pb2
from viewbait_gateway_client import GatewayClient, GatewayError


@pytest.fixture
def dead_target() -> Iterator[str]:
    """host:port of a loopback port that was free a moment ago (connections are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    yield f"127.0.0.1:{port}"


async def test_unary_failure_is_a_gateway_error(dead_target: str) -> None:
    async with GatewayClient(dead_target, token="t" * 20, user_id="u-1", tier="pro") as client:
        with pytest.raises(GatewayError) as caught:
            await client.analyze_video(
                operations_pb2.AnalyzeVideoRequest(video_id="dQw4w9WgXcQ"), timeout_s=10
            )

    assert caught.value.code is grpc.StatusCode.UNAVAILABLE
    assert isinstance(caught.value.__cause__, grpc.aio.AioRpcError)


async def test_stream_failure_is_a_gateway_error(dead_target: str) -> None:
    async with GatewayClient(dead_target) as client:
        events = client.watch_job(job_service_pb2.WatchJobRequest(job_id="j-1"), timeout_s=10)
        with pytest.raises(GatewayError) as caught:
            async for _ in events:
                pass

    assert caught.value.code is grpc.StatusCode.UNAVAILABLE


async def test_closing_a_view_leaves_the_shared_channel_open(dead_target: str) -> None:
    async with GatewayClient(dead_target, token="service-token-0123456789") as client:
        view = client.acting_as("u-2", "free")
        await view.close()

        # Still a transport failure (UNAVAILABLE), not "channel closed".
        with pytest.raises(GatewayError) as caught:
            await client.get_job(job_service_pb2.GetJobRequest(job_id="j-1"), timeout_s=10)

    assert caught.value.code is grpc.StatusCode.UNAVAILABLE


async def test_acting_as_needs_a_token(dead_target: str) -> None:
    async with GatewayClient(dead_target) as client:
        with pytest.raises(ValueError, match="service token"):
            client.acting_as("u-2", "free")
