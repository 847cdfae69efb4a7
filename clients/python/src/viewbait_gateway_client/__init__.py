"""Async Python client of the ViewBait AI Gateway.

The generated messages and stubs live in `viewbait.ai.v1` (same distribution); this package adds
credentials, TLS, typed methods, decoded errors, and jobs followed to their end (`run_job`,
`await_job`) across broken streams.
"""

from viewbait_gateway_client.client import DEFAULT_MAX_MESSAGE_BYTES, GatewayClient
from viewbait_gateway_client.credentials import (
    AUTHORIZATION_KEY,
    REQUEST_ID_KEY,
    TIER_KEY,
    USER_ID_KEY,
    call_metadata,
    credential_metadata,
)
from viewbait_gateway_client.errors import (
    RETRY_AFTER_KEY,
    FieldViolation,
    GatewayError,
    decode_status,
)
from viewbait_gateway_client.jobs import (
    DEFAULT_BACKOFF,
    TERMINAL_STATUSES,
    Backoff,
    JobCancelledError,
    JobFailedError,
    RetryHook,
    final_job,
)
from viewbait_gateway_client.tls import TlsConfig

__all__ = [
    "AUTHORIZATION_KEY",
    "DEFAULT_BACKOFF",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "REQUEST_ID_KEY",
    "RETRY_AFTER_KEY",
    "TERMINAL_STATUSES",
    "TIER_KEY",
    "USER_ID_KEY",
    "Backoff",
    "FieldViolation",
    "GatewayClient",
    "GatewayError",
    "JobCancelledError",
    "JobFailedError",
    "RetryHook",
    "TlsConfig",
    "call_metadata",
    "credential_metadata",
    "decode_status",
    "final_job",
]
