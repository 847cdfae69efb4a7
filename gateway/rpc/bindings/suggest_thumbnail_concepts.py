"""SuggestThumbnailConcepts at the gRPC edge: its request, its result and its binding."""

from __future__ import annotations

from viewbait.ai.v1 import common_pb2, gateway_service_pb2, operations_pb2

from gateway import operations
from gateway.operations.suggest_thumbnail_concepts import (
    SuggestThumbnailConceptsRequest,
    ThumbnailConcepts,
)
from gateway.rpc.bindings.base import UnaryBinding


def to_request(
    message: operations_pb2.SuggestThumbnailConceptsRequest,
) -> SuggestThumbnailConceptsRequest:
    """SuggestThumbnailConcepts' domain request."""
    return SuggestThumbnailConceptsRequest(
        video_id=message.video_id, analytics_json=message.analytics_json
    )


def to_result(result: ThumbnailConcepts) -> operations_pb2.ThumbnailConcepts:
    """SuggestThumbnailConcepts' result."""
    return operations_pb2.ThumbnailConcepts(
        concepts=[
            operations_pb2.ThumbnailConcept(
                headline=c.headline_text,
                composition=c.composition,
                palette=c.palette,
                emotion=c.emotion,
                rationale=c.rationale,
            )
            for c in result.concepts
        ]
    )


SUGGEST_THUMBNAIL_CONCEPTS = UnaryBinding(
    operations.SUGGEST_THUMBNAIL_CONCEPTS,
    common_pb2.OPERATION_SUGGEST_THUMBNAIL_CONCEPTS,
    to_request,
    to_result,
    gateway_service_pb2.SuggestThumbnailConceptsResponse,
)
