"""The metadata that carries credentials and request ids."""

from __future__ import annotations

import pytest
from viewbait_gateway_client import call_metadata, credential_metadata


def test_user_jwt_is_sent_as_a_bearer_token_only() -> None:
    assert credential_metadata("eyJhbGciOi.payload.sig") == (
        ("authorization", "Bearer eyJhbGciOi.payload.sig"),
    )


def test_service_token_carries_the_user_and_tier_it_acts_for() -> None:
    assert credential_metadata("service-token-0123456789", user_id="u-42", tier="pro") == (
        ("authorization", "Bearer service-token-0123456789"),
        ("x-viewbait-user-id", "u-42"),
        ("x-viewbait-tier", "pro"),
    )


def test_no_token_sends_nothing() -> None:
    assert credential_metadata(None) == ()


@pytest.mark.parametrize("kwargs", [{"user_id": "u-42"}, {"tier": "pro"}])
def test_user_or_tier_without_a_token_is_a_mistake(kwargs: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="only sent with a"):
        credential_metadata(None, **kwargs)


@pytest.mark.parametrize(
    ("token", "user_id"),
    [
        ("tok\r\nx-viewbait-tier: pro", "u-1"),  # header injection
        ("", "u-1"),
        ("token", " u-1"),
        ("token", "usér"),
    ],
)
def test_values_metadata_cannot_carry_are_refused(token: str, user_id: str) -> None:
    with pytest.raises(ValueError, match="printable ASCII"):
        credential_metadata(token, user_id=user_id)


def test_request_id_is_appended_when_given() -> None:
    base = credential_metadata("tok")

    assert call_metadata(base, None) == base
    assert call_metadata(base, "req-1") == (*base, ("x-request-id", "req-1"))
