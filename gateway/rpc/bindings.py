"""One binding per operation at the gRPC edge: the one table a new operation is added to.

A binding ties an operation spec to its messages: its `Operation` enum value, the conversion of
its proto request into the spec's domain request, the conversion of its result into the proto
result message, and (for a unary RPC) the response type that carries that result or a pending
job handle. Both servicers run from this table: GatewayService's RPCs, SubmitJob's oneof
dispatch, the result of GetJob / WatchJob / CancelJob / ListJobs and ListJobs' operation
filter. The proto names the cases of `SubmitJobRequest.operation` and `Job.result` like the
operation (`analyze_video`), so the spec's name is also the case's name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from google.protobuf.message import Message
from viewbait.ai.v1 import common_pb2, gateway_service_pb2, job_pb2

from gateway import operations
from gateway.operations.base import OperationSpec
from gateway.rpc import convert
from gateway.store.base import Job

ResponseT = TypeVar("ResponseT", bound=Message)


@dataclass(frozen=True, slots=True)
class Binding:
    """An operation as the gRPC services see it."""

    spec: OperationSpec[Any, Any]
    #: Its `viewbait.ai.v1.Operation` value (jobs report it; ListJobs filters by it).
    operation: common_pb2.Operation.ValueType
    #: Proto request message -> the spec's domain request (shapes only; the spec validates).
    to_request: Callable[[Any], Any]
    #: The spec's result -> the proto result message (a unary response's and a job's `result`).
    to_result: Callable[[Any], Message]

    @property
    def name(self) -> str:
        """The operation's name: its spec's, its policy's, and the case of
        `SubmitJobRequest.operation` and of `Job.result` that carries it."""
        return self.spec.name


@dataclass(frozen=True, slots=True)
class UnaryBinding(Binding, Generic[ResponseT]):
    """An operation with a unary RPC, answered by `response_type(result=...)` or, when the work
    outlasts the long-poll window, `response_type(pending=...)`."""

    response_type: Callable[..., ResponseT]


GENERATE_THUMBNAIL = Binding(
    operations.GENERATE_THUMBNAIL,
    common_pb2.OPERATION_GENERATE_THUMBNAIL,
    convert.generate_thumbnail_request,
    convert.generate_thumbnail_result,
)
ANALYZE_VIDEO = UnaryBinding(
    operations.ANALYZE_VIDEO,
    common_pb2.OPERATION_ANALYZE_VIDEO,
    convert.analyze_video_request,
    convert.video_analysis,
    gateway_service_pb2.AnalyzeVideoResponse,
)
SUGGEST_THUMBNAIL_CONCEPTS = UnaryBinding(
    operations.SUGGEST_THUMBNAIL_CONCEPTS,
    common_pb2.OPERATION_SUGGEST_THUMBNAIL_CONCEPTS,
    convert.suggest_thumbnail_concepts_request,
    convert.thumbnail_concepts,
    gateway_service_pb2.SuggestThumbnailConceptsResponse,
)
COMPUTE_ATTENTION_HEATMAP = UnaryBinding(
    operations.COMPUTE_ATTENTION_HEATMAP,
    common_pb2.OPERATION_COMPUTE_ATTENTION_HEATMAP,
    convert.compute_attention_heatmap_request,
    convert.attention_heatmap,
    gateway_service_pb2.ComputeAttentionHeatmapResponse,
)
CHECK_CHANNEL_CONSISTENCY = UnaryBinding(
    operations.CHECK_CHANNEL_CONSISTENCY,
    common_pb2.OPERATION_CHECK_CHANNEL_CONSISTENCY,
    convert.check_channel_consistency_request,
    convert.channel_consistency,
    gateway_service_pb2.CheckChannelConsistencyResponse,
)

#: Every binding, by operation name.
BINDINGS: Mapping[str, Binding] = {
    binding.name: binding
    for binding in (
        GENERATE_THUMBNAIL,
        ANALYZE_VIDEO,
        SUGGEST_THUMBNAIL_CONCEPTS,
        COMPUTE_ATTENTION_HEATMAP,
        CHECK_CHANNEL_CONSISTENCY,
    )
}
#: Every binding, by `Operation` enum value.
BY_OPERATION: Mapping[common_pb2.Operation.ValueType, Binding] = {
    binding.operation: binding for binding in BINDINGS.values()
}


def job(row: Job, result: Any = None) -> job_pb2.Job:
    """A job as its owner sees it, its result (decoded, or None: left out) converted by the
    binding of the job's operation."""
    binding = BINDINGS[row.op]
    return convert.job(
        row, binding.operation, None if result is None else binding.to_result(result)
    )
