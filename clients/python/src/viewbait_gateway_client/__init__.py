"""Async Python client of the ViewBait AI Gateway.

The generated messages and stubs live in `viewbait.ai.v1` (same distribution); this package adds
credentials, typed methods and decoded errors on top.
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

__all__ = [
    "AUTHORIZATION_KEY",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "REQUEST_ID_KEY",
    "RETRY_AFTER_KEY",
    "TIER_KEY",
    "USER_ID_KEY",
    "FieldViolation",
    "GatewayClient",
    "GatewayError",
    "call_metadata",
    "credential_metadata",
    "decode_status",
]
