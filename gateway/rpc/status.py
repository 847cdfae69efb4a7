"""The single table from domain errors to gRPC status codes, and the rich error details.

Servicers never choose status codes: they raise `gateway.errors.GatewayError` subclasses and the
error-mapping interceptor turns them into a status with google.rpc details (ErrorInfo always,
BadRequest for field violations, RetryInfo when a retry-after is known) plus `retry-after-ms`
trailing metadata, the same for every RPC. Every message ends with the RPC's request id.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from gateway import errors

#: Domain error class -> gRPC status code. Lookup walks the class's MRO, so a subclass inherits
#: its parent's code unless listed itself.
STATUS_CODES: dict[type[errors.GatewayError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.SafetyBlocked: grpc.StatusCode.INVALID_ARGUMENT,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.RateLimited: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.BudgetExceeded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.ConcurrencyLimited: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Cancelled: grpc.StatusCode.CANCELLED,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.Unimplemented: grpc.StatusCode.UNIMPLEMENTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.UpstreamUnavailable: grpc.StatusCode.UNAVAILABLE,
    # An operator must fix the gateway's key; to the caller this replica cannot serve for now.
    errors.UpstreamCredentialsRefused: grpc.StatusCode.UNAVAILABLE,
    # The model's answer was malformed twice in a row: transient, a retry may well succeed.
    errors.UpstreamBadResponse: grpc.StatusCode.UNAVAILABLE,
    # Gemini refused a request we built: nothing the caller can change fixes it.
    errors.UpstreamRejected: grpc.StatusCode.INTERNAL,
    errors.UpstreamError: grpc.StatusCode.INTERNAL,
    errors.Internal: grpc.StatusCode.INTERNAL,
    errors.GatewayError: grpc.StatusCode.INTERNAL,
}

#: google.rpc.ErrorInfo.domain of every error the gateway raises.
ERROR_DOMAIN = "ai.viewbait.app"
#: Trailing metadata key carrying the retry-after in whole milliseconds.
RETRY_AFTER_KEY = "retry-after-ms"
_STATUS_DETAILS_KEY = "grpc-status-details-bin"


def status_code(error: errors.GatewayError) -> grpc.StatusCode:
    """The gRPC code for a domain error."""
    for cls in type(error).__mro__:
        code = STATUS_CODES.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


@dataclass(frozen=True, slots=True)
class RpcStatus:
    """What to abort an RPC with."""

    code: grpc.StatusCode
    message: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...]


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def to_rpc_status(error: errors.GatewayError, *, request_id: str = "") -> RpcStatus:
    """The status, details and trailing metadata that report `error` to a caller."""
    code = status_code(error)
    metadata = dict(error.metadata)
    if request_id:
        metadata["request_id"] = request_id
    details = [
        _pack(
            error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN, metadata=metadata)
        )
    ]
    if isinstance(error, errors.InvalidArgument):
        details.append(
            _pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=v.field, description=v.description
                        )
                        for v in error.violations
                    ]
                )
            )
        )
    trailing: list[tuple[str, str | bytes]] = []
    if error.retry_after_s is not None and error.retry_after_s >= 0:
        millis = math.ceil(error.retry_after_s * 1000)
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(millis)
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
        trailing.append((RETRY_AFTER_KEY, str(millis)))
    message = public_message(error, request_id)
    status = status_pb2.Status(code=_code_number(code), message=message, details=details)
    trailing.append((_STATUS_DETAILS_KEY, status.SerializeToString()))
    return RpcStatus(code, message, tuple(trailing))


def public_message(error: errors.GatewayError, request_id: str = "") -> str:
    """The status message a caller reads: the error's message, ending with the request id to
    quote to support (it is in ErrorInfo.metadata too, for programs)."""
    if not request_id:
        return error.message
    return f"{error.message} (request id {request_id})"


def _code_number(code: grpc.StatusCode) -> int:
    number = code.value[0]
    assert isinstance(number, int)
    # google.rpc.Code and grpc.StatusCode share their numbering.
    assert code_pb2.Code.Name(number)
    return number
