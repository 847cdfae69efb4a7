"""One binding per operation at the gRPC edge: the one table a new operation is added to.

A binding ties an operation spec to its messages: its `Operation` enum value, the conversion of
its proto request into the spec's domain request, the conversion of its result into the proto
result message, and (for a unary RPC) the response type that carries that result or a pending
job handle. Each operation's binding and conversions live in a module of this package named
like the operation; `base` says what a binding is, and `gateway.rpc.convert` holds the shapes
several operations and the job messages share. Both servicers run from this table:
GatewayService's RPCs, SubmitJob's oneof dispatch, the result of GetJob / WatchJob / CancelJob /
ListJobs and ListJobs' operation filter. The proto names the cases of
`SubmitJobRequest.operation` and `Job.result` like the operation (`analyze_video`), so the
spec's name is also the case's name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from viewbait.ai.v1 import common_pb2, job_pb2

from gateway.rpc import convert
from gateway.rpc.bindings.analyze_video import ANALYZE_VIDEO
from gateway.rpc.bindings.base import Binding, UnaryBinding
from gateway.rpc.bindings.check_channel_consistency import CHECK_CHANNEL_CONSISTENCY
from gateway.rpc.bindings.compute_attention_heatmap import COMPUTE_ATTENTION_HEATMAP
from gateway.rpc.bindings.generate_thumbnail import GENERATE_THUMBNAIL
from gateway.rpc.bindings.suggest_thumbnail_concepts import SUGGEST_THUMBNAIL_CONCEPTS
from gateway.store.base import Job

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


__all__ = [
    "ANALYZE_VIDEO",
    "BINDINGS",
    "BY_OPERATION",
    "CHECK_CHANNEL_CONSISTENCY",
    "COMPUTE_ATTENTION_HEATMAP",
    "GENERATE_THUMBNAIL",
    "SUGGEST_THUMBNAIL_CONCEPTS",
    "Binding",
    "UnaryBinding",
    "job",
]
