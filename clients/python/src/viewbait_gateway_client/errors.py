"""Gateway errors as typed Python exceptions.

The gateway answers failures with the google.rpc richer error model: a `google.rpc.Status` in the
`grpc-status-details-bin` trailer carrying ErrorInfo (a stable `reason`), BadRequest (field
violations) and RetryInfo (when to try again), plus the retry-after in `retry-after-ms` trailing
metadata. `GatewayError.from_rpc_error` turns all of that into one object callers can branch on.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

#: Trailing metadata key of the serialized google.rpc.Status.
STATUS_DETAILS_KEY = "grpc-status-details-bin"
#: Trailing metadata key of the retry-after in whole milliseconds (mirrors RetryInfo).
RETRY_AFTER_KEY = "retry-after-ms"

MetadataItems = Iterable[tuple[str, str | bytes]]


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One bad request field: its path (e.g. `references[2].data`) and what is wrong with it."""

    field: str
    description: str


class GatewayError(Exception):
    """A failed gateway call, with every detail the server sent decoded.

    Attributes:
        code: the gRPC status code.
        message: the status message, written for people.
        reason: google.rpc.ErrorInfo.reason, a stable UPPER_SNAKE_CASE code to branch on
            (e.g. "RATE_LIMITED", "SAFETY_BLOCKED"); None when the server sent no ErrorInfo.
        domain: google.rpc.ErrorInfo.domain ("ai.viewbait.app" for the gateway's own errors).
        error_metadata: google.rpc.ErrorInfo.metadata.
        retry_after_s: seconds to wait before retrying, from RetryInfo or else the
            `retry-after-ms` trailer; None when the server did not say.
        violations: BadRequest field violations (INVALID_ARGUMENT).
        details: every detail as sent, including types this class does not decode.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str | None = None,
        domain: str | None = None,
        error_metadata: dict[str, str] | None = None,
        retry_after_s: float | None = None,
        violations: Sequence[FieldViolation] = (),
        details: Sequence[any_pb2.Any] = (),
    ) -> None:
        super().__init__(f"{code.name}: {message}" if message else code.name)
        self.code = code
        self.message = message
        self.reason = reason
        self.domain = domain
        self.error_metadata: dict[str, str] = dict(error_metadata or {})
        self.retry_after_s = retry_after_s
        self.violations: tuple[FieldViolation, ...] = tuple(violations)
        self.details: tuple[any_pb2.Any, ...] = tuple(details)

    @classmethod
    def from_rpc_error(cls, error: grpc.aio.AioRpcError | grpc.Call) -> GatewayError:
        """Decodes a failed call (an aio `AioRpcError`, or a sync `grpc.RpcError`/`grpc.Call`)."""
        return decode_status(error.code(), error.details() or "", error.trailing_metadata() or ())


def decode_status(
    code: grpc.StatusCode, message: str, trailing_metadata: MetadataItems
) -> GatewayError:
    """Builds a `GatewayError` from a status code, message and the call's trailing metadata.

    Details are taken from `grpc-status-details-bin` only when its Status agrees with `code`: a
    proxy that rewrote the status must not leave stale details behind. A trailer that does not
    parse is ignored the same way; the code and message alone still make a usable error.
    """
    items = list(trailing_metadata)
    status = _status_details(items, code)
    if status is None:
        return GatewayError(code, message, retry_after_s=_retry_after_trailer(items))

    reason = domain = None
    error_metadata: dict[str, str] = {}
    retry_after_s: float | None = None
    violations: list[FieldViolation] = []
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        retry = error_details_pb2.RetryInfo()
        bad = error_details_pb2.BadRequest()
        try:
            # Unpack answers False, without parsing, when the detail is of another type.
            if detail.Unpack(info):
                reason, domain, error_metadata = info.reason, info.domain, dict(info.metadata)
            elif detail.Unpack(retry):
                retry_after_s = retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9
            elif detail.Unpack(bad):
                violations.extend(
                    FieldViolation(v.field, v.description) for v in bad.field_violations
                )
        except DecodeError:
            continue  # one corrupt detail must not hide the others
    if retry_after_s is None:
        retry_after_s = _retry_after_trailer(items)
    return GatewayError(
        code,
        message or status.message,
        reason=reason,
        domain=domain,
        error_metadata=error_metadata,
        retry_after_s=retry_after_s,
        violations=violations,
        details=list(status.details),
    )


def _status_details(
    items: list[tuple[str, str | bytes]], code: grpc.StatusCode
) -> status_pb2.Status | None:
    raw = next((value for key, value in items if key == STATUS_DETAILS_KEY), None)
    if not isinstance(raw, bytes):
        return None
    status = status_pb2.Status()
    try:
        status.ParseFromString(raw)
    except DecodeError:
        return None
    # StatusCode values are (number, name) pairs.
    return status if status.code == code.value[0] else None


def _retry_after_trailer(items: list[tuple[str, str | bytes]]) -> float | None:
    raw = next((value for key, value in items if key == RETRY_AFTER_KEY), None)
    if raw is None:
        return None
    text = raw.decode("ascii", "replace") if isinstance(raw, bytes) else raw
    try:
        millis = int(text.strip())
    except ValueError:
        return None
    return millis / 1000 if millis >= 0 else None
