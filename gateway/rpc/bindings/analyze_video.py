"""AnalyzeVideo at the gRPC edge: its request, its result and its binding."""

from __future__ import annotations

from viewbait.ai.v1 import common_pb2, gateway_service_pb2, operations_pb2

from gateway import operations
from gateway.operations.analyze_video import AnalyzeVideoRequest, VideoAnalysis
from gateway.rpc.bindings.base import UnaryBinding


def to_request(message: operations_pb2.AnalyzeVideoRequest) -> AnalyzeVideoRequest:
    """AnalyzeVideo's domain request."""
    return AnalyzeVideoRequest(
        video_id=message.video_id, title=message.title, description=message.description
    )


def to_result(result: VideoAnalysis) -> operations_pb2.VideoAnalysis:
    """AnalyzeVideo's result."""
    return operations_pb2.VideoAnalysis(
        summary=result.summary,
        topics=result.topics,
        hook_moments=[
            operations_pb2.HookMoment(timestamp_seconds=m.timestamp_s, description=m.description)
            for m in result.hook_moments
        ],
        audience=result.audience,
        tone=result.tone,
        recommended_thumbnail_elements=result.recommended_thumbnail_elements,
    )


ANALYZE_VIDEO = UnaryBinding(
    operations.ANALYZE_VIDEO,
    common_pb2.OPERATION_ANALYZE_VIDEO,
    to_request,
    to_result,
    gateway_service_pb2.AnalyzeVideoResponse,
)
