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


#: UTF-8 bytes of the parts of a status that may echo a caller's input. The status travels in
#: trailing metadata twice (grpc-message, percent-encoded: up to three bytes a byte, and inside
#: grpc-status-details-bin, base64), and a client drops trailers past 8 KiB by default
#: ("received metadata size exceeds soft limit"): the caller would get RESOURCE_EXHAUSTED
#: instead of the error. These bounds keep the whole status under 5 KiB.
MAX_MESSAGE_BYTES = 512
MAX_METADATA_VALUE_BYTES = 128
MAX_FIELD_BYTES = 128
MAX_DESCRIPTION_BYTES = 256
#: Field names and descriptions of all violations together; later ones are dropped past it.
MAX_VIOLATIONS_BYTES = 1024


def clip(text: str, max_bytes: int) -> str:
    """`text` cut to at most `max_bytes` of UTF-8 (ending in "…" when cut)."""
    data = text.encode()
    if len(data) <= max_bytes:
        return text
    return data[: max_bytes - 3].decode(errors="ignore") + "…"


def _violations(error: errors.InvalidArgument) -> list[error_details_pb2.BadRequest.FieldViolation]:
    kept: list[error_details_pb2.BadRequest.FieldViolation] = []
    budget = MAX_VIOLATIONS_BYTES
    for violation in error.violations:
        field = clip(violation.field, MAX_FIELD_BYTES)
        description = clip(violation.description, MAX_DESCRIPTION_BYTES)
        budget -= len(field.encode()) + len(description.encode())
        if kept and budget < 0:
            break
        kept.append(
            error_details_pb2.BadRequest.FieldViolation(field=field, description=description)
        )
    return kept


def to_rpc_status(error: errors.GatewayError, *, request_id: str = "") -> RpcStatus:
    """The status, details and trailing metadata that report `error` to a caller."""
    code = status_code(error)
    metadata = {
        clip(key, MAX_METADATA_VALUE_BYTES): clip(value, MAX_METADATA_VALUE_BYTES)
        for key, value in error.metadata.items()
    }
    if request_id:
        metadata["request_id"] = request_id
    details = [
        _pack(
            error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN, metadata=metadata)
        )
    ]
    if isinstance(error, errors.InvalidArgument):
        details.append(_pack(error_details_pb2.BadRequest(field_violations=_violations(error))))
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
    """The status message a caller reads: the error's message (cut to `MAX_MESSAGE_BYTES`),
    ending with the request id to quote to support (in ErrorInfo.metadata too, for programs)."""
    message = clip(error.message, MAX_MESSAGE_BYTES)
    if not request_id:
        return message
    return f"{message} (request id {request_id})"


def _code_number(code: grpc.StatusCode) -> int:
    number = code.value[0]
    assert isinstance(number, int)
    # google.rpc.Code and grpc.StatusCode share their numbering.
    assert code_pb2.Code.Name(number)
    return number
