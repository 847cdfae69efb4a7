"""GenerateThumbnail at the gRPC edge: its request, its variations and its binding.

The RPC streams; its binding has no unary response type. A job's result carries every
variation at once (`to_result`); the stream sends each as it is ready (`generated_thumbnail`).
"""

from __future__ import annotations

from viewbait.ai.v1 import common_pb2, operations_pb2

from gateway import operations
from gateway.operations.generate_thumbnail import (
    DEFAULT_ASPECT_RATIO,
    GeneratedThumbnails,
    GenerateThumbnailRequest,
    ReferenceImage,
    ReferenceRole,
    StylePreset,
    ThumbnailVariation,
)
from gateway.rpc import convert
from gateway.rpc.bindings.base import Binding

_ROLES = {
    operations_pb2.REFERENCE_ROLE_FACE: ReferenceRole.FACE,
    operations_pb2.REFERENCE_ROLE_STYLE: ReferenceRole.STYLE,
}


def to_request(message: operations_pb2.GenerateThumbnailRequest) -> GenerateThumbnailRequest:
    """GenerateThumbnail's domain request ("" / 0 mean the documented defaults)."""
    style: StylePreset | str | None = message.style_preset or None
    references = tuple(
        ReferenceImage(convert.image_input(ref.image), _ROLES.get(ref.role))  # type: ignore[arg-type]
        for ref in message.references
    )
    return GenerateThumbnailRequest(
        prompt=message.prompt,
        style_preset=style,  # type: ignore[arg-type]
        references=references,
        aspect_ratio=message.aspect_ratio or DEFAULT_ASPECT_RATIO,
        variations=message.variations or 1,
    )


def generated_thumbnail(variation: ThumbnailVariation) -> operations_pb2.GeneratedThumbnail:
    """One generated variation."""
    return operations_pb2.GeneratedThumbnail(
        index=variation.index, image=convert.output_image(variation.image), text=variation.text
    )


def to_result(result: GeneratedThumbnails) -> operations_pb2.GenerateThumbnailResult:
    """All variations of a finished GenerateThumbnail, in order."""
    return operations_pb2.GenerateThumbnailResult(
        thumbnails=[generated_thumbnail(v) for v in result.variations]
    )


GENERATE_THUMBNAIL = Binding(
    operations.GENERATE_THUMBNAIL,
    common_pb2.OPERATION_GENERATE_THUMBNAIL,
    to_request,
    to_result,
)
