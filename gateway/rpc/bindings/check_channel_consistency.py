"""CheckChannelConsistency at the gRPC edge: its request, its result and its binding."""

from __future__ import annotations

from viewbait.ai.v1 import common_pb2, gateway_service_pb2, operations_pb2

from gateway import operations
from gateway.operations.check_channel_consistency import (
    ChannelConsistency,
    CheckChannelConsistencyRequest,
    Verdict,
)
from gateway.rpc import convert
from gateway.rpc.bindings.base import UnaryBinding

_VERDICTS = {
    Verdict.CONSISTENT: operations_pb2.CONSISTENCY_VERDICT_CONSISTENT,
    Verdict.PARTLY_CONSISTENT: operations_pb2.CONSISTENCY_VERDICT_PARTLY_CONSISTENT,
    Verdict.INCONSISTENT: operations_pb2.CONSISTENCY_VERDICT_INCONSISTENT,
}
_DIMENSIONS = (
    ("palette", operations_pb2.CONSISTENCY_DIMENSION_PALETTE),
    ("typography", operations_pb2.CONSISTENCY_DIMENSION_TYPOGRAPHY),
    ("faces", operations_pb2.CONSISTENCY_DIMENSION_FACES),
    ("composition", operations_pb2.CONSISTENCY_DIMENSION_COMPOSITION),
    ("branding", operations_pb2.CONSISTENCY_DIMENSION_BRANDING),
)


def to_request(
    message: operations_pb2.CheckChannelConsistencyRequest,
) -> CheckChannelConsistencyRequest:
    """CheckChannelConsistency's domain request."""
    return CheckChannelConsistencyRequest(
        target=convert.image_input(message.target),
        references=tuple(convert.image_input(ref) for ref in message.references),
        video_id=message.video_id,
    )


def to_result(result: ChannelConsistency) -> operations_pb2.ChannelConsistency:
    """CheckChannelConsistency's result, one finding per dimension in enum order."""
    findings = []
    for name, dimension in _DIMENSIONS:
        finding = getattr(result.findings, name)
        findings.append(
            operations_pb2.ConsistencyFinding(
                dimension=dimension,
                score=finding.score,
                finding=finding.finding,
                suggestion=finding.suggestion,
            )
        )
    return operations_pb2.ChannelConsistency(
        score=result.score,
        verdict=_VERDICTS[result.verdict],
        summary=result.summary,
        findings=findings,
    )


CHECK_CHANNEL_CONSISTENCY = UnaryBinding(
    operations.CHECK_CHANNEL_CONSISTENCY,
    common_pb2.OPERATION_CHECK_CHANNEL_CONSISTENCY,
    to_request,
    to_result,
    gateway_service_pb2.CheckChannelConsistencyResponse,
)
