"""Caller authentication and tier gating (gateway.auth), over plain metadata.

Keys are generated here with `cryptography`; the JWKS file is written by hand from the raw key
numbers so that the gateway's JWKS parsing is checked against an independent encoding.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import SecretStr, ValidationError

from gateway.auth import (
    ANONYMOUS_USER_ID,
    Authenticator,
    Metadata,
    Principal,
    load_jwks,
    mint_dev_jwt,
    require_tier,
)
from gateway.config import AuthSettings, Settings, Tier
from gateway.errors import PermissionDenied, Unauthenticated

SECRET = "hs256-test-secret-0123456789-abcdefghijkl"
SERVICE_TOKEN = "svc-test-token-9f8e7d6c5b4a"
USER = "6f1c2a9e-0b7d-4c3e-9a51-2f0e8d7c6b5a"
HOUR = 3600


def _b64url_uint(value: int, size: int | None = None) -> str:
    raw = value.to_bytes(size or (value.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def jwks_path(
    tmp_path_factory: pytest.TempPathFactory,
    rsa_key: rsa.RSAPrivateKey,
    ec_key: ec.EllipticCurvePrivateKey,
) -> Path:
    rsa_numbers = rsa_key.public_key().public_numbers()
    ec_numbers = ec_key.public_key().public_numbers()
    document = {
        "keys": [
            {
                "kty": "RSA",
                "kid": "rsa-1",
                "use": "sig",
                "alg": "RS256",
                "n": _b64url_uint(rsa_numbers.n),
                "e": _b64url_uint(rsa_numbers.e),
            },
            {
                "kty": "EC",
                "kid": "ec-1",
                "crv": "P-256",
                "x": _b64url_uint(ec_numbers.x, 32),
                "y": _b64url_uint(ec_numbers.y, 32),
            },
            # A key type the gateway does not use: skipped, not fatal.
            {
                "kty": "OKP",
                "kid": "ed-1",
                "crv": "Ed25519",
                "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
            },
        ]
    }
    path = tmp_path_factory.mktemp("jwks") / "jwks.json"
    path.write_text(json.dumps(document))
    return path


def _settings(jwks_path: Path | None = None, **overrides: Any) -> AuthSettings:
    values: dict[str, Any] = {"jwt_secret": SECRET, "service_token": SERVICE_TOKEN}
    if jwks_path is not None:
        values["jwks_file"] = str(jwks_path)
    values.update(overrides)
    return AuthSettings(**values)


@pytest.fixture(scope="module")
def auth(jwks_path: Path) -> Authenticator:
    """Everything configured: service token, HS256 secret and the JWKS file."""
    return Authenticator(_settings(jwks_path))


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": USER,
        "aud": "authenticated",
        "role": "authenticated",
        "iat": now,
        "exp": now + HOUR,
        "app_metadata": {"tier": "pro"},
    }
    claims.update(overrides)
    return {key: value for key, value in claims.items() if value is not None}


def _hs256(**overrides: Any) -> str:
    return jwt.encode(_claims(**overrides), SECRET, algorithm="HS256")


def _bearer(token: str, **headers: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}", **headers}


def _rejected(auth: Authenticator, metadata: Metadata, *fragments: str) -> Unauthenticated:
    """Assert `metadata` is refused with a message naming each fragment and leaking nothing."""
    pairs: list[tuple[str, str | bytes]] = (
        list(metadata.items()) if isinstance(metadata, Mapping) else list(metadata)
    )
    with pytest.raises(Unauthenticated) as caught:
        auth.authenticate(pairs)
    message = caught.value.message
    for fragment in fragments:
        assert fragment.lower() in message.lower(), message
    leaks = {SECRET, SERVICE_TOKEN}
    for key, value in pairs:
        if key.lower() == "authorization" and isinstance(value, str):
            credential = value.partition(" ")[2].strip()
            leaks.add(credential)
            # Any dot-separated JWT segment (header, payload or signature) counts as a leak.
            leaks.update(part for part in credential.split(".") if len(part) >= 8)
    for leak in leaks:
        if leak:
            assert leak not in message
            assert leak not in repr(caught.value)
            assert leak not in str(caught.value.metadata)
    # PyJWT's exception must not ride along as the printed cause.
    assert caught.value.__cause__ is None
    return caught.value


# --- the authorization header itself ---------------------------------------------------------


def test_no_credentials_is_refused_with_what_to_send(auth: Authenticator) -> None:
    _rejected(auth, {}, "no credentials", "authorization: Bearer")
    _rejected(auth, {"x-viewbait-user-id": USER, "x-viewbait-tier": "pro"}, "no credentials")


@pytest.mark.parametrize(
    "value",
    [
        "Basic dXNlcjpwYXNz",
        SECRET,  # a bare credential without a scheme
        "Bearer",
        "Bearer    ",
        "Bearer two words",
        "Token abc.def.ghi",
    ],
)
def test_malformed_authorization_header(auth: Authenticator, value: str) -> None:
    _rejected(auth, {"authorization": value}, "authorization header")


def test_scheme_is_case_insensitive(auth: Authenticator) -> None:
    principal = auth.authenticate({"authorization": f"bearer {_hs256()}"})
    assert principal == Principal(USER, Tier.PRO, "jwt")


def test_two_authorization_headers_are_ambiguous(auth: Authenticator) -> None:
    _rejected(
        auth,
        [("authorization", f"Bearer {_hs256()}"), ("authorization", f"Bearer {SERVICE_TOKEN}")],
        "exactly one authorization",
    )


def test_metadata_pairs_with_binary_values_are_accepted(auth: Authenticator) -> None:
    pairs: list[tuple[str, str | bytes]] = [
        ("trace-bin", b"\x00\x01"),
        ("authorization", f"Bearer {_hs256()}"),
        ("x-request-id", "r-1"),
    ]
    assert auth.authenticate(pairs) == Principal(USER, Tier.PRO, "jwt")


@pytest.mark.parametrize("garbage", ["abc", "abc.def", "a.b.c", "eyJhbGciOi.x.y"])
def test_neither_service_token_nor_jwt(auth: Authenticator, garbage: str) -> None:
    _rejected(auth, _bearer(garbage), "neither the service token nor a well-formed JWT")


# --- HS256 user JWTs -------------------------------------------------------------------------


def test_valid_hs256_jwt(auth: Authenticator) -> None:
    assert auth.authenticate(_bearer(_hs256())) == Principal(USER, Tier.PRO, "jwt")


def test_bad_signature(auth: Authenticator) -> None:
    forged = jwt.encode(_claims(), "another-secret-of-sufficient-length-xyz", algorithm="HS256")
    _rejected(auth, _bearer(forged), "bad JWT signature")


def test_tampered_payload(auth: Authenticator) -> None:
    header, _, signature = _hs256().split(".")
    upgraded = _b64url_json(_claims(app_metadata={"tier": "pro"}, sub="someone-else"))
    _rejected(auth, _bearer(f"{header}.{upgraded}.{signature}"), "bad JWT signature")


def test_expired(auth: Authenticator) -> None:
    now = int(time.time())
    _rejected(auth, _bearer(_hs256(iat=now - 2 * HOUR, exp=now - HOUR)), "expired")


def test_expiry_within_leeway_is_accepted(jwks_path: Path) -> None:
    now = int(time.time())
    token = _hs256(iat=now - HOUR, exp=now - 5)
    assert Authenticator(_settings(leeway_s=120)).authenticate(_bearer(token)).user_id == USER
    _rejected(Authenticator(_settings(leeway_s=0)), _bearer(token), "expired")


def test_not_yet_valid(auth: Authenticator) -> None:
    now = int(time.time())
    _rejected(auth, _bearer(_hs256(nbf=now + HOUR, exp=now + 2 * HOUR)), "not valid yet")
    _rejected(auth, _bearer(_hs256(iat=now + HOUR, exp=now + 2 * HOUR)), "not valid yet")


@pytest.mark.parametrize("claim", ["exp", "sub", "aud"])
def test_missing_required_claim(auth: Authenticator, claim: str) -> None:
    _rejected(auth, _bearer(_hs256(**{claim: None})), f"no {claim} claim")


def test_wrong_audience(auth: Authenticator) -> None:
    _rejected(auth, _bearer(_hs256(aud="service_role")), "audience", "'authenticated'")


def test_audience_list_including_the_configured_one(auth: Authenticator) -> None:
    token = _hs256(aud=["other", "authenticated"])
    assert auth.authenticate(_bearer(token)).user_id == USER


def test_audience_check_disabled() -> None:
    relaxed = Authenticator(_settings(jwt_audience=None))
    assert relaxed.authenticate(_bearer(_hs256(aud=None))).user_id == USER
    assert relaxed.authenticate(_bearer(_hs256(aud="anything"))).user_id == USER


def test_issuer_checked_when_configured() -> None:
    issuer = "https://project.supabase.co/auth/v1"
    strict = Authenticator(_settings(jwt_issuer=issuer))
    assert strict.authenticate(_bearer(_hs256(iss=issuer))).user_id == USER
    _rejected(strict, _bearer(_hs256(iss="https://evil.example/auth/v1")), "issuer", issuer)
    _rejected(strict, _bearer(_hs256()), "no iss claim")


@pytest.mark.parametrize(
    ("sub", "fragment"),
    [
        (42, "sub claim must be a string"),
        ("", "sub claim must be a user id"),
        ("a{b}", "sub claim must be a user id"),
    ],
)
def test_bad_subject(auth: Authenticator, sub: object, fragment: str) -> None:
    _rejected(auth, _bearer(_hs256(sub=sub)), fragment)


def test_alg_none_is_refused(auth: Authenticator) -> None:
    unsigned = jwt.encode(_claims(), "", algorithm="none")
    _rejected(auth, _bearer(unsigned), "algorithm 'none' is not accepted", "HS256")


# --- tiers from JWT claims -------------------------------------------------------------------


def test_tier_claim_absent_uses_default_tier() -> None:
    token = _hs256(app_metadata=None)
    assert Authenticator(_settings()).authenticate(_bearer(token)).tier is Tier.FREE
    starter = Authenticator(_settings(default_tier=Tier.STARTER))
    assert starter.authenticate(_bearer(token)).tier is Tier.STARTER


@pytest.mark.parametrize("value", ["gold", "PRO", 3, ["pro"], {"name": "pro"}])
def test_unknown_tier_claim_names_the_claim(auth: Authenticator, value: object) -> None:
    token = _hs256(app_metadata={"tier": value})
    _rejected(auth, _bearer(token), "app_metadata.tier", "free, starter, advanced, pro")


def test_custom_tier_claim_path() -> None:
    custom = Authenticator(_settings(tier_claim="viewbait.plan.tier"))
    token = _hs256(viewbait={"plan": {"tier": "advanced"}})
    assert custom.authenticate(_bearer(token)).tier is Tier.ADVANCED


def test_jwt_callers_cannot_assert_their_tier_in_metadata(auth: Authenticator) -> None:
    token = _hs256(app_metadata={"tier": "free"}, sub=USER)
    headers = _bearer(token, **{"x-viewbait-tier": "pro", "x-viewbait-user-id": "victim"})
    assert auth.authenticate(headers) == Principal(USER, Tier.FREE, "jwt")


# --- RS256 / ES256 through the JWKS file -----------------------------------------------------


def test_rs256_and_es256_via_jwks(
    auth: Authenticator, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    rs = jwt.encode(_claims(), rsa_key, algorithm="RS256", headers={"kid": "rsa-1"})
    es = jwt.encode(
        _claims(app_metadata={"tier": "advanced"}),
        ec_key,
        algorithm="ES256",
        headers={"kid": "ec-1"},
    )
    assert auth.authenticate(_bearer(rs)) == Principal(USER, Tier.PRO, "jwt")
    assert auth.authenticate(_bearer(es)) == Principal(USER, Tier.ADVANCED, "jwt")


def test_jwks_only_gateway(jwks_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    only_jwks = Authenticator(AuthSettings(jwks_file=str(jwks_path)))
    rs = jwt.encode(_claims(), rsa_key, algorithm="RS256", headers={"kid": "rsa-1"})
    assert only_jwks.authenticate(_bearer(rs)).via == "jwt"
    _rejected(only_jwks, _bearer(_hs256()), "HS256 user JWTs are not accepted", "ES256, RS256")


def test_unknown_kid(auth: Authenticator, rsa_key: rsa.RSAPrivateKey) -> None:
    token = jwt.encode(_claims(), rsa_key, algorithm="RS256", headers={"kid": "rotated-away"})
    _rejected(auth, _bearer(token), "unknown JWT kid 'rotated-away'", "ec-1, rsa-1")


def test_missing_kid(auth: Authenticator, rsa_key: rsa.RSAPrivateKey) -> None:
    token = jwt.encode(_claims(), rsa_key, algorithm="RS256")
    _rejected(auth, _bearer(token), "no kid")


def test_skipped_key_type_is_unknown(auth: Authenticator) -> None:
    header = _b64url_json({"alg": "EdDSA", "kid": "ed-1", "typ": "JWT"})
    token = f"{header}.{_b64url_json(_claims())}.c2ln"
    _rejected(auth, _bearer(token), "algorithm 'EdDSA' is not accepted")


def test_signature_by_another_rsa_key(auth: Authenticator) -> None:
    impostor = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(_claims(), impostor, algorithm="RS256", headers={"kid": "rsa-1"})
    _rejected(auth, _bearer(token), "bad JWT signature")


def test_alg_must_match_the_kid_key(
    auth: Authenticator, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    token = jwt.encode(_claims(), ec_key, algorithm="ES256", headers={"kid": "rsa-1"})
    _rejected(auth, _bearer(token), "alg ES256", "RS256 key")


@pytest.mark.parametrize("with_secret", [True, False])
def test_alg_confusion_hs256_signed_with_public_key(
    jwks_path: Path, rsa_key: rsa.RSAPrivateKey, with_secret: bool
) -> None:
    # The classic attack: HMAC-sign with the (public) RSA key PEM and hope the verifier uses that
    # PEM as the HMAC secret. PyJWT refuses to build such a token, so forge it by hand.
    public_pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signing_input = (
        f"{_b64url_json({'alg': 'HS256', 'typ': 'JWT', 'kid': 'rsa-1'})}.{_b64url_json(_claims())}"
    )
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    forged = f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
    if with_secret:
        gateway = Authenticator(_settings(jwks_path))
        _rejected(gateway, _bearer(forged), "bad JWT signature")
    else:
        gateway = Authenticator(AuthSettings(jwks_file=str(jwks_path)))
        _rejected(gateway, _bearer(forged), "HS256 user JWTs are not accepted")


# --- the service token -----------------------------------------------------------------------


def test_service_token_with_user_and_tier(auth: Authenticator) -> None:
    headers = _bearer(SERVICE_TOKEN, **{"x-viewbait-user-id": USER, "x-viewbait-tier": "advanced"})
    assert auth.authenticate(headers) == Principal(USER, Tier.ADVANCED, "service", "default")


@pytest.mark.parametrize("user", [None, "", "   "])
def test_service_token_without_user_id(auth: Authenticator, user: str | None) -> None:
    headers = _bearer(SERVICE_TOKEN, **{"x-viewbait-tier": "pro"})
    if user is not None:
        headers["x-viewbait-user-id"] = user
    _rejected(auth, headers, "send the end user's id in x-viewbait-user-id")


def test_service_token_without_tier(auth: Authenticator) -> None:
    headers = _bearer(SERVICE_TOKEN, **{"x-viewbait-user-id": USER})
    _rejected(auth, headers, "x-viewbait-tier", "free, starter, advanced, pro")


@pytest.mark.parametrize("tier", ["gold", "", "Pro", " pro"])
def test_service_token_with_bad_tier(auth: Authenticator, tier: str) -> None:
    headers = _bearer(SERVICE_TOKEN, **{"x-viewbait-user-id": USER, "x-viewbait-tier": tier})
    _rejected(auth, headers, "x-viewbait-tier header must be one of")


@pytest.mark.parametrize("user", ["u" * 129, "{slot}user", "a/b", "-leading", "with space"])
def test_service_token_with_bad_user_id(auth: Authenticator, user: str) -> None:
    headers = _bearer(SERVICE_TOKEN, **{"x-viewbait-user-id": user, "x-viewbait-tier": "pro"})
    _rejected(auth, headers, "x-viewbait-user-id header must be a user id")


def test_service_user_id_at_the_length_bound(auth: Authenticator) -> None:
    user = "u" * 128
    headers = _bearer(SERVICE_TOKEN, **{"x-viewbait-user-id": user, "x-viewbait-tier": "free"})
    assert auth.authenticate(headers).user_id == user


def test_near_miss_service_token_is_not_the_service_token(auth: Authenticator) -> None:
    headers = _bearer(
        SERVICE_TOKEN[:-1] + "X", **{"x-viewbait-user-id": USER, "x-viewbait-tier": "pro"}
    )
    _rejected(auth, headers, "neither the service token nor a well-formed JWT")
    prefix = _bearer(SERVICE_TOKEN + "0", **{"x-viewbait-user-id": USER, "x-viewbait-tier": "pro"})
    _rejected(auth, prefix, "neither the service token")


def test_service_only_gateway_explains_that_jwts_are_off() -> None:
    service_only = Authenticator(AuthSettings(service_token=SecretStr(SERVICE_TOKEN)))
    _rejected(service_only, _bearer(_hs256()), "accepts no user JWTs")


def _service_call(
    token: str = SERVICE_TOKEN, user: str = USER, tier: str = "pro", *extra: tuple[str, str]
) -> tuple[tuple[str, str | bytes], ...]:
    """Metadata as grpc hands it to the edge: a tuple of pairs."""
    return (
        ("user-agent", "grpc-node-js/1.12"),
        ("authorization", f"Bearer {token}"),
        ("x-viewbait-user-id", user),
        ("x-viewbait-tier", tier),
        *extra,
    )


def test_a_remembered_service_caller_is_decided_as_the_first_time(auth: Authenticator) -> None:
    first = auth.authenticate(_service_call())
    again = auth.authenticate(_service_call(SERVICE_TOKEN, USER, "pro", ("x-request-id", "r-2")))
    assert first == again == Principal(USER, Tier.PRO, "service", "default")
    # Another tier or user of the same backend is its own caller, never the remembered one.
    assert auth.authenticate(_service_call(tier="free")) == Principal(
        USER, Tier.FREE, "service", "default"
    )
    assert auth.authenticate(_service_call(user="other-user")).user_id == "other-user"


def test_remembering_accepted_callers_lets_no_wrong_credential_through(
    auth: Authenticator,
) -> None:
    auth.authenticate(_service_call())
    for token in (SERVICE_TOKEN[:-1] + "X", SERVICE_TOKEN + "0"):
        with pytest.raises(Unauthenticated, match="neither the service token"):
            auth.authenticate(_service_call(token))
    with pytest.raises(Unauthenticated, match="x-viewbait-tier header must be one of"):
        auth.authenticate(_service_call(tier="gold"))
    # A repeated header stays ambiguous, though its first value is a remembered caller's.
    with pytest.raises(Unauthenticated, match="exactly one x-viewbait-tier"):
        auth.authenticate(_service_call(SERVICE_TOKEN, USER, "pro", ("x-viewbait-tier", "free")))
    with pytest.raises(Unauthenticated, match="exactly one authorization"):
        auth.authenticate(
            _service_call(SERVICE_TOKEN, USER, "pro", ("authorization", f"Bearer {_hs256()}"))
        )


def test_remembered_callers_are_bounded(
    auth: Authenticator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("gateway.auth.KNOWN_SERVICE_CALLERS", 3)
    users = [f"user-{n}" for n in range(10)]
    for _ in range(2):
        for user in users:
            assert auth.authenticate(_service_call(user=user)).user_id == user
    assert len(auth._known_services) <= 3


def test_user_jwts_are_verified_on_every_call(auth: Authenticator) -> None:
    token = _hs256(exp=int(time.time()) + HOUR)
    call = (("authorization", f"Bearer {token}"),)
    remembered = dict(auth._known_services)
    assert auth.authenticate(call) == Principal(USER, Tier.PRO, "jwt")
    assert auth._known_services == remembered


# --- named service tokens (rotation) ---------------------------------------------------------

OLD_TOKEN = "svc-old-token-0123456789abcdef"
NEW_TOKEN = "svc-new-token-fedcba9876543210"
AS_USER = {"x-viewbait-user-id": USER, "x-viewbait-tier": "pro"}


def test_named_service_tokens_are_all_accepted_under_their_names() -> None:
    both = Authenticator(
        AuthSettings(
            service_token=SecretStr(SERVICE_TOKEN),
            service_tokens={"backend-2026-11": OLD_TOKEN, "backend-2026-12": NEW_TOKEN},
        )
    )
    names = {
        token: both.authenticate(_bearer(token, **AS_USER)).service_token
        for token in (SERVICE_TOKEN, OLD_TOKEN, NEW_TOKEN)
    }
    assert names == {
        SERVICE_TOKEN: "default",
        OLD_TOKEN: "backend-2026-11",
        NEW_TOKEN: "backend-2026-12",
    }
    assert both.authenticate(_bearer(NEW_TOKEN, **AS_USER)).via == "service"


def test_a_removed_service_token_is_refused() -> None:
    rotated = Authenticator(AuthSettings(service_tokens={"backend-2026-12": NEW_TOKEN}))
    assert rotated.authenticate(_bearer(NEW_TOKEN, **AS_USER)).user_id == USER
    _rejected(rotated, _bearer(OLD_TOKEN, **AS_USER), "not the service token")
    _rejected(rotated, _bearer(NEW_TOKEN[:-1], **AS_USER), "not the service token")


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"service_tokens": {"a": "short"}}, "auth.service_tokens.a must be at least 16"),
        ({"service_tokens": {"has space": NEW_TOKEN}}, "must be 1 to 64 letters"),
        ({"service_tokens": {"": NEW_TOKEN}}, "must be 1 to 64 letters"),
        ({"service_tokens": {"a": NEW_TOKEN, "b": NEW_TOKEN}}, "'a' and 'b' are the same token"),
        (
            {"service_token": OLD_TOKEN, "service_tokens": {"default": NEW_TOKEN}},
            "names one 'default' too",
        ),
        (
            {"service_token": NEW_TOKEN, "service_tokens": {"b": NEW_TOKEN}},
            "'b' and 'default' are the same token",
        ),
    ],
)
def test_bad_service_token_tables_fail_without_echoing_tokens(
    values: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        AuthSettings.model_validate(values)
    assert fragment in str(caught.value)
    for token in (OLD_TOKEN, NEW_TOKEN, "short"):
        assert token not in str(caught.value)


def test_service_tokens_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "VIEWBAIT_AUTH__SERVICE_TOKENS", json.dumps({"web": OLD_TOKEN, "worker": NEW_TOKEN})
    )
    auth = Settings().auth
    assert set(auth.named_service_tokens()) == {"web", "worker"}
    assert OLD_TOKEN not in repr(auth)
    principal = Authenticator(auth).authenticate(_bearer(NEW_TOKEN, **AS_USER))
    assert principal.service_token == "worker"


# --- the JWKS URL settings -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"jwks_url": "http://example.com/jwks.json"}, "must use https"),
        ({"jwks_url": "ftp://example.com/jwks.json"}, "must be an https:// URL"),
        ({"jwks_url": "https:///jwks.json"}, "must be an https:// URL"),
        ({"jwks_url": "https://a.example/j", "jwks_file": "/j.json"}, "not both"),
    ],
)
def test_bad_jwks_url_settings(values: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        AuthSettings.model_validate(values)


def test_jwks_url_over_http_to_loopback_is_accepted() -> None:
    for url in ("http://127.0.0.1:8080/jwks.json", "http://localhost/jwks.json"):
        assert AuthSettings(jwks_url=url).jwks_url == url


def test_a_jwks_url_alone_configures_authentication_without_fetching() -> None:
    url = "https://project.supabase.co/auth/v1/.well-known/jwks.json"
    auth = Authenticator(AuthSettings(jwks_url=url))
    remote = auth.remote_jwks
    assert remote is not None and remote.url == url and not remote.loaded
    _rejected(auth, _bearer(_hs256()), "HS256 user JWTs are not accepted", "ES256, RS256")


# --- anonymous local mode and configuration --------------------------------------------------


def test_anonymous_mode_admits_credential_less_calls_only() -> None:
    anonymous = Authenticator(AuthSettings(allow_anonymous=True, default_tier=Tier.ADVANCED))
    assert anonymous.authenticate({}) == Principal(ANONYMOUS_USER_ID, Tier.ADVANCED, "anonymous")
    _rejected(anonymous, _bearer(_hs256()), "accepts no user JWTs")
    _rejected(anonymous, {"authorization": "Basic eA=="}, "authorization header")


def test_nothing_configured_fails_at_construction() -> None:
    with pytest.raises(ValueError, match="authentication is not configured"):
        Authenticator(AuthSettings())


def test_weak_secrets_are_refused_without_echoing_them() -> None:
    for field, weak in (("jwt_secret", "short-secret"), ("service_token", "short")):
        for build in (AuthSettings.model_validate, lambda v: Settings(auth=v)):
            with pytest.raises(ValidationError) as caught:
                build({field: weak})
            assert f"auth.{field} must be at least" in str(caught.value)
            assert weak not in str(caught.value)


def test_auth_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIEWBAIT_AUTH__JWT_SECRET", SECRET)
    monkeypatch.setenv("VIEWBAIT_AUTH__TIER_CLAIM", "plan")
    monkeypatch.setenv("VIEWBAIT_AUTH__JWT_AUDIENCE", "viewbait")
    settings = Settings()
    assert settings.auth.jwt_secret == SecretStr(SECRET)
    assert SECRET not in repr(settings)
    token = mint_dev_jwt(SECRET, USER, Tier.STARTER, audience="viewbait", tier_claim="plan")
    assert Authenticator(settings.auth).authenticate(_bearer(token)).tier is Tier.STARTER


def _write_jwks(tmp_path: Path, keys: Iterable[dict[str, Any]] | str) -> Path:
    path = tmp_path / "jwks.json"
    path.write_text(keys if isinstance(keys, str) else json.dumps({"keys": list(keys)}))
    return path


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("not json", "not valid JSON"),
        ('{"kid": "x"}', "'keys' list"),
        ([{"kty": "oct", "kid": "h", "k": "c2VjcmV0"}], "secret key material"),
        (
            [{"kty": "RSA", "kid": "p", "n": "AQAB", "e": "AQAB", "d": "AQAB"}],
            "secret key material",
        ),
        ([{"kty": "RSA", "n": "AQAB", "e": "AQAB"}], "has no kid"),
        ([{"kty": "RSA", "kid": "r", "alg": "RS512", "n": "AQAB", "e": "AQAB"}], "use RS256"),
        ([{"kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": "AA"}], "no RS256 or ES256"),
        ([{"kty": "EC", "kid": "p384", "crv": "P-384", "x": "AA", "y": "AA"}], "no RS256 or ES256"),
    ],
)
def test_bad_jwks_files_fail_loudly(tmp_path: Path, content: Any, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        load_jwks(_write_jwks(tmp_path, content))


def test_jwks_duplicate_kid_and_missing_file(tmp_path: Path, jwks_path: Path) -> None:
    keys = json.loads(jwks_path.read_text())["keys"]
    with pytest.raises(ValueError, match="repeats kid 'rsa-1'"):
        load_jwks(_write_jwks(tmp_path, [keys[0], keys[0]]))
    with pytest.raises(ValueError, match=r"cannot read auth\.jwks_file"):
        load_jwks(tmp_path / "absent.json")
    assert sorted(load_jwks(jwks_path)) == ["ec-1", "rsa-1"]


# --- tier gating -----------------------------------------------------------------------------


def test_require_tier_message() -> None:
    with pytest.raises(PermissionDenied) as caught:
        require_tier(Principal(USER, Tier.FREE, "jwt"), [Tier.PRO], "analyze_video")
    assert caught.value.message == "analyze_video needs the pro tier; your tier is free"
    assert caught.value.metadata == {
        "operation": "analyze_video",
        "tier": "free",
        "required_tiers": "pro",
    }


def test_operation_enabled_for_no_tier() -> None:
    with pytest.raises(PermissionDenied, match="not enabled for any tier"):
        require_tier(Principal(USER, Tier.PRO, "jwt"), [], "retired_feature")


SETTINGS = Settings()


@pytest.mark.parametrize("tier", list(Tier))
@pytest.mark.parametrize("operation", sorted(SETTINGS.policies))
def test_each_tier_against_each_operation(auth: Authenticator, tier: Tier, operation: str) -> None:
    principal = auth.authenticate(_bearer(mint_dev_jwt(SECRET, USER, tier, 60)))
    assert principal == Principal(USER, tier, "jwt")
    allowed = SETTINGS.policy(operation).tiers
    if tier in allowed:
        require_tier(principal, allowed, operation)
        return
    with pytest.raises(PermissionDenied) as caught:
        require_tier(principal, allowed, operation)
    needed = " or ".join(t.value for t in Tier if t in allowed)
    assert caught.value.message == f"{operation} needs the {needed} tier; your tier is {tier.value}"


def test_default_tier_table_holds() -> None:
    # Who may call what, in the default policy table (the README lists it too).
    every = list(Tier)
    expected = {
        "generate_thumbnail": every,
        "analyze_video": [Tier.PRO],
        "suggest_thumbnail_concepts": [Tier.PRO],
        "compute_attention_heatmap": [Tier.ADVANCED, Tier.PRO],
        "check_channel_consistency": every,
    }
    assert {op: SETTINGS.policy(op).tiers for op in expected} == expected


# --- the dev minting helper ------------------------------------------------------------------


def test_mint_dev_jwt_is_supabase_shaped(auth: Authenticator) -> None:
    token = mint_dev_jwt(SecretStr(SECRET), USER, Tier.ADVANCED, ttl_s=120, issuer="dev")
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], audience="authenticated")
    assert claims["sub"] == USER
    assert claims["role"] == "authenticated"
    assert claims["app_metadata"] == {"tier": "advanced"}
    assert claims["iss"] == "dev"
    assert claims["exp"] - claims["iat"] == 120
    assert auth.authenticate(_bearer(token)) == Principal(USER, Tier.ADVANCED, "jwt")


def test_mint_dev_jwt_backdated_is_expired(auth: Authenticator) -> None:
    token = mint_dev_jwt(SECRET, USER, Tier.PRO, ttl_s=60, now=time.time() - HOUR)
    _rejected(auth, _bearer(token), "expired")
    with pytest.raises(ValueError, match="ttl_s must be positive"):
        mint_dev_jwt(SECRET, USER, Tier.PRO, ttl_s=0)


def _b64url_json(value: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()
