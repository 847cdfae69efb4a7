"""The metadata that carries a caller's credentials to the gateway.

Two ways to authenticate, both as `authorization: Bearer <token>`:

- a user's Supabase JWT: the gateway reads the user id and tier from the token itself;
- the trusted backend's service token: the backend then says whom the call is for, in
  `x-viewbait-user-id` and `x-viewbait-tier`.
"""

from __future__ import annotations

AUTHORIZATION_KEY = "authorization"
USER_ID_KEY = "x-viewbait-user-id"
TIER_KEY = "x-viewbait-tier"
REQUEST_ID_KEY = "x-request-id"

Metadata = tuple[tuple[str, str], ...]


def credential_metadata(
    token: str | None, *, user_id: str | None = None, tier: str | None = None
) -> Metadata:
    """The metadata pairs for a token and, with a service token, the user and tier it acts for.

    Raises `ValueError` for a user id or tier without a token (the gateway would ignore them, which
    hides a configuration mistake) and for values gRPC metadata cannot carry.
    """
    if token is None:
        if user_id is not None or tier is not None:
            raise ValueError("user_id and tier are only sent with a (service) token")
        return ()
    pairs = [(AUTHORIZATION_KEY, f"Bearer {_checked('token', token)}")]
    if user_id is not None:
        pairs.append((USER_ID_KEY, _checked("user_id", user_id)))
    if tier is not None:
        pairs.append((TIER_KEY, _checked("tier", tier)))
    return tuple(pairs)


def call_metadata(base: Metadata, request_id: str | None) -> Metadata:
    """`base` plus the caller's request id, when given (the gateway echoes it in its logs)."""
    if request_id is None:
        return base
    return (*base, (REQUEST_ID_KEY, _checked("request_id", request_id)))


def _checked(name: str, value: str) -> str:
    # gRPC rejects non-printable-ASCII metadata only when the call is made, with a vague error;
    # saying which argument is wrong up front is kinder.
    if not value or not value.isascii() or not value.isprintable() or value != value.strip():
        raise ValueError(f"{name} must be non-empty printable ASCII without surrounding spaces")
    return value
