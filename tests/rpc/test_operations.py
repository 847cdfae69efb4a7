"""Each GatewayService RPC succeeds end to end, through raw generated stubs and the helper client.

Real gateway on 127.0.0.1:0 (in-process), real channel, the real google-genai SDK behind it
talking to the offline Gemini emulator over HTTP.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio
from google.protobuf.message import Message
from viewbait.ai.v1 import common_pb2, operations_pb2
from viewbait_gateway_client import GatewayClient

from gateway.config import Tier

pytestmark = pytest.mark.asyncio(loop_scope="module")


def new_request_id() -> str:
    return f"req-{uuid.uuid4().hex}"


def check_analysis(result: operations_pb2.VideoAnalysis, samples: Any) -> None:
    assert result.summary
    assert result.topics
    assert result.audience


def check_concepts(result: operations_pb2.ThumbnailConcepts, samples: Any) -> None:
    assert 3 <= len(result.concepts) <= 6
    assert all(concept.headline and concept.composition for concept in result.concepts)


def check_heatmap(result: operations_pb2.AttentionHeatmap, samples: Any) -> None:
    assert result.regions
    for region in result.regions:
        assert region.element != operations_pb2.ATTENTION_ELEMENT_UNSPECIFIED
        box = region.box
        assert 0 <= box.x <= box.x + box.width <= 1.0001
        assert 0 <= box.y <= box.y + box.height <= 1.0001
    samples.check_png(result.heatmap)


def check_consistency(result: operations_pb2.ChannelConsistency, samples: Any) -> None:
    assert 0 <= result.score <= 100
    assert result.verdict != operations_pb2.CONSISTENCY_VERDICT_UNSPECIFIED
    dimensions = [finding.dimension for finding in result.findings]
    assert sorted(dimensions) == list(range(1, 6))  # every ConsistencyDimension once


CHECKS: dict[str, Callable[[Any, Any], None]] = {
    "analyze_video": check_analysis,
    "suggest_thumbnail_concepts": check_concepts,
    "compute_attention_heatmap": check_heatmap,
    "check_channel_consistency": check_consistency,
}


async def check_metadata(
    metadata: common_pb2.ResponseMetadata, gateway: Any, *, request_id: str, model: str
) -> None:
    """The answer says who asked, which model answered, and what it cost; the ledger agrees
    (once it has written what it queued)."""
    assert metadata.request_id == request_id
    assert metadata.model == model
    assert not metadata.cached
    usage = metadata.usage
    assert usage.prompt_tokens > 0
    assert usage.total_tokens >= usage.prompt_tokens + usage.output_tokens > 0
    assert usage.cost_usd > 0
    assert usage.upstream_calls >= 1
    assert await gateway.server.usage.flush()
    ledger = gateway.server.store.usage_entries()
    recorded = [e.record for e in ledger if e.record.labels.request_id == request_id]
    assert [r.outcome for r in recorded] == ["ok"] * usage.upstream_calls
    assert sum(r.cost_usd for r in recorded) == pytest.approx(usage.cost_usd)


async def check_unary_response(
    response: Any, operation: Any, gateway: Any, samples: Any, request_id: str
) -> None:
    assert response.WhichOneof("outcome") == "result"
    await check_metadata(
        response.metadata,
        gateway,
        request_id=request_id,
        model=gateway.identity_for(operation.name),
    )
    CHECKS[operation.name](response.result, samples)


async def test_unary_rpc_through_generated_stub(
    gateway: Any, samples: Any, unary_operation: Any
) -> None:
    request_id = new_request_id()
    method = getattr(gateway.stub, unary_operation.rpc)

    response = await method(
        samples.request(unary_operation.name),
        metadata=gateway.as_service("user-stub", Tier.PRO, request_id=request_id),
        timeout=60,
    )

    await check_unary_response(response, unary_operation, gateway, samples, request_id)


async def test_unary_rpc_through_helper_client(
    gateway: Any, samples: Any, unary_operation: Any
) -> None:
    request_id = new_request_id()
    async with GatewayClient(
        gateway.target, token=gateway.service_token, user_id="user-client", tier="pro"
    ) as client:
        method = getattr(client, unary_operation.name)
        response = await method(
            samples.fresh_request(unary_operation.name), timeout_s=60, request_id=request_id
        )

    await check_unary_response(response, unary_operation, gateway, samples, request_id)


async def test_unary_rpc_as_a_jwt_user(gateway: Any, samples: Any) -> None:
    """A user's own JWT works as well as the backend's service token."""
    response = await gateway.stub.AnalyzeVideo(
        samples.request("analyze_video"), metadata=gateway.as_user(Tier.PRO), timeout=60
    )

    assert response.result.summary


Stream = Callable[[Message, str], AsyncIterator[Any]]


@pytest_asyncio.fixture(loop_scope="module", params=["generated stub", "helper client"])
async def open_stream(request: pytest.FixtureRequest, gateway: Any) -> AsyncIterator[Stream]:
    """Opens a GenerateThumbnail stream one way or the other."""
    if request.param == "generated stub":

        def through_stub(message: Message, request_id: str) -> AsyncIterator[Any]:
            metadata = gateway.as_service("user-stream", Tier.FREE, request_id=request_id)
            call = gateway.stub.GenerateThumbnail(message, metadata=metadata, timeout=60)
            return call.__aiter__()  # type: ignore[no-any-return]

        yield through_stub
        return
    async with GatewayClient(
        gateway.target, token=gateway.service_token, user_id="user-stream", tier="free"
    ) as client:

        def through_client(message: Message, request_id: str) -> AsyncIterator[Any]:
            return client.generate_thumbnail(message, timeout_s=60, request_id=request_id)  # type: ignore[arg-type]

        yield through_client


async def test_generate_thumbnail_streams_progress_images_then_one_summary(
    gateway: Any, samples: Any, open_stream: Stream
) -> None:
    variations = 3
    request_id = new_request_id()

    messages = [
        m
        async for m in open_stream(
            samples.request("generate_thumbnail", variations=variations), request_id
        )
    ]

    kinds = [m.WhichOneof("event") for m in messages]
    assert kinds[0] == "progress", kinds
    assert kinds.count("summary") == 1 and kinds[-1] == "summary", kinds
    fractions = [m.progress.fraction for m in messages if m.HasField("progress")]
    assert all(0 <= f <= 1 for f in fractions)
    assert fractions == sorted(fractions)

    images = [m.image for m in messages if m.HasField("image")]
    assert sorted(image.index for image in images) == list(range(variations))
    for image in images:
        samples.check_png(image.image)
    assert len({image.image.sha256 for image in images}) == variations  # distinct images

    summary = messages[-1].summary
    assert summary.image_count == variations
    await check_metadata(
        summary.metadata,
        gateway,
        request_id=request_id,
        model=gateway.identity_for("generate_thumbnail"),
    )
    assert summary.metadata.usage.image_output_tokens > 0
    assert summary.metadata.usage.upstream_calls == variations


async def test_request_id_is_generated_when_the_caller_sends_none(
    gateway: Any, samples: Any
) -> None:
    ids = []
    for _ in range(2):
        response = await gateway.stub.AnalyzeVideo(
            samples.request("analyze_video"), metadata=gateway.as_service(), timeout=60
        )
        ids.append(response.metadata.request_id)

    assert all(ids) and ids[0] != ids[1]
