"""Decoding the gateway's rich errors from real grpc statuses (built with grpcio-status)."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc import aio
from grpc_status import rpc_status
from viewbait_gateway_client import FieldViolation, GatewayError, decode_status


def _packed(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _rpc_error(
    status: status_pb2.Status, extra_trailers: tuple[tuple[str, str], ...] = ()
) -> aio.AioRpcError:
    """What a grpc.aio client raises for a call the server aborted with `status`."""
    wire = rpc_status.to_status(status)
    return aio.AioRpcError(
        wire.code,
        aio.Metadata(),
        aio.Metadata(*wire.trailing_metadata, *extra_trailers),
        details=wire.details,
    )


def _retry_info(seconds: int, nanos: int = 0) -> any_pb2.Any:
    delay = duration_pb2.Duration(seconds=seconds, nanos=nanos)
    return _packed(error_details_pb2.RetryInfo(retry_delay=delay))


def _error_info(reason: str, **metadata: str) -> any_pb2.Any:
    return _packed(
        error_details_pb2.ErrorInfo(reason=reason, domain="ai.viewbait.app", metadata=metadata)
    )


def test_rate_limit_denial_decodes_reason_and_retry_info() -> None:
    status = status_pb2.Status(
        code=code_pb2.RESOURCE_EXHAUSTED,
        message="rate limit of route youtube-analyze reached; retry in 1.5 s",
        details=[
            _error_info("RATE_LIMITED", route="youtube-analyze"),
            _retry_info(1, 500_000_000),
        ],
    )

    error = GatewayError.from_rpc_error(_rpc_error(status, (("retry-after-ms", "1500"),)))

    assert error.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.message == "rate limit of route youtube-analyze reached; retry in 1.5 s"
    assert error.reason == "RATE_LIMITED"
    assert error.domain == "ai.viewbait.app"
    assert error.error_metadata == {"route": "youtube-analyze"}
    assert error.retry_after_s == pytest.approx(1.5)
    assert error.violations == ()
    assert len(error.details) == 2
    assert str(error) == f"RESOURCE_EXHAUSTED: {error.message}"


def test_retry_info_wins_over_the_trailer_when_both_are_present() -> None:
    status = status_pb2.Status(
        code=code_pb2.UNAVAILABLE,
        message="Gemini is overloaded",
        details=[_retry_info(7)],
    )

    error = GatewayError.from_rpc_error(_rpc_error(status, (("retry-after-ms", "250"),)))

    assert error.retry_after_s == 7.0


def test_retry_after_trailer_alone_is_enough() -> None:
    error = decode_status(
        grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down", [("retry-after-ms", "250")]
    )

    assert error.retry_after_s == 0.25
    assert error.reason is None


@pytest.mark.parametrize("value", ["soon", "-5", ""])
def test_unusable_retry_after_trailer_is_ignored(value: str) -> None:
    trailer = ("retry-after-ms", value)

    error = decode_status(grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down", [trailer])

    assert error.retry_after_s is None


def test_bad_request_field_violations_keep_their_order() -> None:
    status = status_pb2.Status(
        code=code_pb2.INVALID_ARGUMENT,
        message="video_id: must be a YouTube video id; references[2].data: image is empty",
        details=[
            _error_info("INVALID_ARGUMENT"),
            _packed(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field="video_id", description="must be a YouTube video id"
                        ),
                        error_details_pb2.BadRequest.FieldViolation(
                            field="references[2].data", description="image is empty"
                        ),
                    ]
                )
            ),
        ],
    )

    error = GatewayError.from_rpc_error(_rpc_error(status))

    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == "INVALID_ARGUMENT"
    assert error.retry_after_s is None
    assert error.violations == (
        FieldViolation("video_id", "must be a YouTube video id"),
        FieldViolation("references[2].data", "image is empty"),
    )


def test_detail_types_it_does_not_decode_are_kept_raw() -> None:
    violation = error_details_pb2.QuotaFailure.Violation(subject="user:u1", description="daily")
    quota = error_details_pb2.QuotaFailure(violations=[violation])
    status = status_pb2.Status(
        code=code_pb2.RESOURCE_EXHAUSTED,
        message="daily budget spent",
        details=[_error_info("BUDGET_EXHAUSTED"), _packed(quota)],
    )

    error = GatewayError.from_rpc_error(_rpc_error(status))

    assert error.reason == "BUDGET_EXHAUSTED"
    unpacked = error_details_pb2.QuotaFailure()
    assert error.details[1].Unpack(unpacked)
    assert unpacked == quota


def test_details_of_another_status_code_are_not_trusted() -> None:
    # A proxy rewrote the status to UNAVAILABLE but left the original details trailer behind.
    original = status_pb2.Status(
        code=code_pb2.INVALID_ARGUMENT, message="bad", details=[_error_info("INVALID_ARGUMENT")]
    )
    trailer = ("grpc-status-details-bin", original.SerializeToString())

    error = decode_status(grpc.StatusCode.UNAVAILABLE, "upstream connect error", [trailer])

    assert error.code is grpc.StatusCode.UNAVAILABLE
    assert error.message == "upstream connect error"
    assert error.reason is None
    assert error.details == ()


def test_corrupt_details_trailer_still_gives_code_and_message() -> None:
    trailer = ("grpc-status-details-bin", b"\xff\xff not a status")

    error = decode_status(grpc.StatusCode.INTERNAL, "boom", [trailer, ("retry-after-ms", "10")])

    assert error.code is grpc.StatusCode.INTERNAL
    assert error.message == "boom"
    assert error.reason is None
    assert error.retry_after_s == 0.01


def test_a_corrupt_detail_does_not_hide_the_others() -> None:
    corrupt = any_pb2.Any(
        type_url="type.googleapis.com/google.rpc.ErrorInfo", value=b"\xff\xff\xff"
    )
    status = status_pb2.Status(
        code=code_pb2.UNAVAILABLE,
        message="try later",
        details=[corrupt, _retry_info(2)],
    )

    error = GatewayError.from_rpc_error(_rpc_error(status))

    assert error.reason is None
    assert error.retry_after_s == 2.0


def test_status_without_details_trailer_uses_the_call_message() -> None:
    error = GatewayError.from_rpc_error(
        aio.AioRpcError(grpc.StatusCode.UNAUTHENTICATED, aio.Metadata(), aio.Metadata(), "no token")
    )

    assert error.code is grpc.StatusCode.UNAUTHENTICATED
    assert error.message == "no token"
    assert error.reason is None
    assert error.retry_after_s is None
