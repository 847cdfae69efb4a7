"""ComputeAttentionHeatmap at the gRPC edge: its request, its result and its binding."""

from __future__ import annotations

from viewbait.ai.v1 import common_pb2, gateway_service_pb2, operations_pb2

from gateway import operations
from gateway.operations.compute_attention_heatmap import (
    AttentionElement,
    AttentionHeatmap,
    ComputeAttentionHeatmapRequest,
)
from gateway.operations.normalise import unit_span
from gateway.rpc import convert
from gateway.rpc.bindings.base import UnaryBinding

_ELEMENTS = {
    AttentionElement.FACE: operations_pb2.ATTENTION_ELEMENT_FACE,
    AttentionElement.TEXT: operations_pb2.ATTENTION_ELEMENT_TEXT,
    AttentionElement.OBJECT: operations_pb2.ATTENTION_ELEMENT_OBJECT,
    AttentionElement.LOGO: operations_pb2.ATTENTION_ELEMENT_LOGO,
    AttentionElement.BACKGROUND: operations_pb2.ATTENTION_ELEMENT_BACKGROUND,
    AttentionElement.OTHER: operations_pb2.ATTENTION_ELEMENT_OTHER,
}


def to_request(
    message: operations_pb2.ComputeAttentionHeatmapRequest,
) -> ComputeAttentionHeatmapRequest:
    """ComputeAttentionHeatmap's domain request."""
    return ComputeAttentionHeatmapRequest(image=convert.image_input(message.image))


def to_result(result: AttentionHeatmap) -> operations_pb2.AttentionHeatmap:
    """ComputeAttentionHeatmap's result; regions centred on their peak become boxes clipped to
    the image (in float32, so x + width <= 1.0 holds for what the client reads)."""
    regions = []
    for r in result.regions:
        x, width = unit_span(r.x - r.width / 2, r.x + r.width / 2)
        y, height = unit_span(r.y - r.height / 2, r.y + r.height / 2)
        regions.append(
            operations_pb2.AttentionRegion(
                label=r.label,
                weight=r.weight,
                box=operations_pb2.NormalizedBox(x=x, y=y, width=width, height=height),
                element=_ELEMENTS[r.element],
            )
        )
    return operations_pb2.AttentionHeatmap(
        regions=regions, heatmap=convert.output_image(result.overlay)
    )


COMPUTE_ATTENTION_HEATMAP = UnaryBinding(
    operations.COMPUTE_ATTENTION_HEATMAP,
    common_pb2.OPERATION_COMPUTE_ATTENTION_HEATMAP,
    to_request,
    to_result,
    gateway_service_pb2.ComputeAttentionHeatmapResponse,
)
