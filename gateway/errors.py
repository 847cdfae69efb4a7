"""The gateway's domain errors.

Every failure a caller can see is one of these. Each class names what went wrong in the caller's
terms; the gRPC layer maps classes to status codes in one table (`gateway.rpc.status`), so nothing
else picks a status code. Messages must tell the caller what to change and must never carry
secrets or raw upstream bodies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One bad field: its path in the request (e.g. `references[2].data`) and what is wrong."""

    field: str
    description: str


class GatewayError(Exception):
    """Base of every error the gateway reports to a caller.

    `reason` is a stable, UPPER_SNAKE_CASE code (sent as google.rpc.ErrorInfo.reason) that clients
    may branch on; the message is for people.
    """

    reason: ClassVar[str] = "INTERNAL"
    #: Whether the same request may succeed if simply tried again later.
    retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        retry_after_s: float | None = None,
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        #: Seconds after which a retry may succeed (sent as google.rpc.RetryInfo), if known.
        self.retry_after_s = retry_after_s
        #: Extra key/values for google.rpc.ErrorInfo.metadata. Never secrets.
        self.metadata: dict[str, str] = dict(metadata or {})


class InvalidArgument(GatewayError):
    """The request is malformed or out of bounds; `violations` name each bad field."""

    reason = "INVALID_ARGUMENT"

    def __init__(self, violations: list[FieldViolation] | FieldViolation, **kwargs: object) -> None:
        items = [violations] if isinstance(violations, FieldViolation) else list(violations)
        if not items:
            raise ValueError("InvalidArgument needs at least one field violation")
        message = "; ".join(f"{v.field}: {v.description}" for v in items)
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.violations = items

    @classmethod
    def field(cls, field: str, description: str) -> InvalidArgument:
        """One violation, the common case."""
        return cls(FieldViolation(field, description))


class SafetyBlocked(GatewayError):
    """The model refused the content on safety grounds; the caller must change the input."""

    reason = "SAFETY_BLOCKED"


class Unauthenticated(GatewayError):
    """Missing, malformed, expired or otherwise unacceptable credentials."""

    reason = "UNAUTHENTICATED"


class PermissionDenied(GatewayError):
    """The caller is known but may not do this (e.g. the tier lacks the feature)."""

    reason = "PERMISSION_DENIED"


class NotFound(GatewayError):
    """The thing asked for does not exist, or belongs to someone else."""

    reason = "NOT_FOUND"


class AlreadyExists(GatewayError):
    """An idempotency key was reused with a different request."""

    reason = "ALREADY_EXISTS"


class FailedPrecondition(GatewayError):
    """The request is valid but the system is not in a state to run it."""

    reason = "FAILED_PRECONDITION"


class RateLimited(GatewayError):
    """A rate limit denied the request; `retry_after_s` says when to come back."""

    reason = "RATE_LIMITED"
    retryable = True


class ConcurrencyLimited(GatewayError):
    """A cap on RPCs in flight refused a new one before its request was read; one frees as
    soon as another RPC ends, so `retry_after_s` is a hint. Subclasses say which cap."""

    reason = "CONCURRENCY_LIMITED"
    retryable = True


class Overloaded(ConcurrencyLimited):
    """The replica has as many RPCs in flight as it takes (load shedding)."""

    reason = "OVERLOADED"


class TooManyConcurrentRpcs(ConcurrencyLimited):
    """The caller has as many RPCs in flight on this replica as the tier allows."""

    reason = "TOO_MANY_CONCURRENT_RPCS"


class TooManyStreams(ConcurrencyLimited):
    """The caller has as many WatchJob and GenerateThumbnail streams open on this replica as
    the tier allows."""

    reason = "TOO_MANY_STREAMS"


class BudgetExceeded(GatewayError):
    """A spend budget refused an upstream attempt. `retry_after_s` is when the refusing
    budget's period resets (None when the request's estimate exceeds the whole budget: only a
    larger budget helps); `user_id` is whose budget it was (None for a fleet-wide model cap).
    Not retryable by simply trying again: the period has to reset first."""

    reason = "BUDGET_EXCEEDED"

    def __init__(self, message: str, *, user_id: str | None = None, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.user_id = user_id


class Cancelled(GatewayError):
    """The work was cancelled (by the caller, or because nobody waits for it any more)."""

    reason = "CANCELLED"


class DeadlineExceeded(GatewayError):
    """The caller's deadline passed before the work finished."""

    reason = "DEADLINE_EXCEEDED"
    retryable = True


class Unimplemented(GatewayError):
    """The RPC exists in the contract but is not served yet."""

    reason = "UNIMPLEMENTED"


class Unavailable(GatewayError):
    """A dependency of the gateway (database, limiter backend) is unreachable right now."""

    reason = "UNAVAILABLE"
    retryable = True


class UpstreamError(GatewayError):
    """Gemini failed. Subclasses say whether trying again can help."""

    reason = "UPSTREAM_ERROR"


class UpstreamUnavailable(UpstreamError):
    """Gemini was overloaded, rate limited, timed out or unreachable, after our own retries."""

    reason = "UPSTREAM_UNAVAILABLE"
    retryable = True


class UpstreamRejected(UpstreamError):
    """Gemini rejected the request itself (400/403/404): retrying the same request cannot help."""

    reason = "UPSTREAM_REJECTED"


class UpstreamCredentialsRefused(UpstreamError):
    """Gemini refused the gateway's own credentials (its API key): an operator must act, the
    caller can only come back later. The message never carries Gemini's text."""

    reason = "UPSTREAM_CREDENTIALS_REFUSED"
    retryable = True


class UpstreamBadResponse(UpstreamError):
    """Gemini answered, but not in the shape the operation's schema demands."""

    reason = "UPSTREAM_BAD_RESPONSE"
    retryable = True


class Internal(GatewayError):
    """A bug or an unexpected state in the gateway itself."""

    reason = "INTERNAL"
