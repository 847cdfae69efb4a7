"""Who is calling: caller authentication and tier gating.

Pure functions over request metadata; the gRPC interceptor calls `Authenticator.authenticate` and
maps the domain errors it raises. Two mechanisms, usable together:

- **user JWTs** as Supabase issues them (`authorization: Bearer <jwt>`), verified with an HS256
  secret or with the RS256/ES256 public key of a JWKS (a file, or a URL fetched in the
  background: `gateway.jwks`) picked by `kid`. The user id is `sub`, the tier comes from a
  configured claim path. Tier headers sent alongside a JWT are ignored.
- **service tokens** for trusted backends (`authorization: Bearer <service token>`), which
  then name the end user in `x-viewbait-user-id` and their tier in `x-viewbait-tier`. Several
  named tokens are accepted at once (rotation); the principal carries the name of the one used,
  for logs and traces, never the token.

Every failure is `Unauthenticated` with a message that says what to fix; no message ever contains
the credential or a configured secret.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from pydantic import SecretStr

from gateway.config import AuthSettings, Tier
from gateway.errors import GatewayError, PermissionDenied, Unauthenticated, Unavailable
from gateway.jwks import JWKS_ALGORITHMS, Keys, RemoteJwks, parse_jwks

if TYPE_CHECKING:
    # PyJWT (with cryptography) is imported where a JWT is read or made: a gateway that
    # sees none, such as one behind a web tier holding the service token, never loads it.
    import jwt

log = logging.getLogger("gateway.auth")

AUTHORIZATION_HEADER: Final = "authorization"
#: Distinct (service token, user, tier) callers `Authenticator.authenticate` remembers; when
#: full, it forgets them all and starts again.
KNOWN_SERVICE_CALLERS: Final = 4096
USER_ID_HEADER: Final = "x-viewbait-user-id"
TIER_HEADER: Final = "x-viewbait-tier"
#: User id of every credential-less call when `auth.allow_anonymous` is on (local development).
ANONYMOUS_USER_ID: Final = "anonymous"

#: User ids end up in cache, limiter and job keys: keep them short and free of separators such as
#: braces (Redis hash tags), slashes and whitespace. Supabase ids (UUIDs) fit.
_USER_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")
_USER_ID_RULE: Final = (
    "1 to 128 characters of letters, digits and . _ : @ -, starting with a letter or digit"
)
_TIERS: Final = frozenset(tier.value for tier in Tier)
_TIER_VALUES: Final = ", ".join(tier.value for tier in Tier)

Via = Literal["service", "jwt", "anonymous"]
#: Request metadata: a mapping, or (key, value) pairs as gRPC hands them over (binary `-bin`
#: values arrive as bytes and are never credentials).
Metadata = Mapping[str, str] | Iterable[tuple[str, str | bytes]]


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller: the end user an RPC runs for, and how we know."""

    user_id: str
    tier: Tier
    via: Via
    #: The name of the service token the call came with (`via` service), for logs and traces.
    service_token: str | None = None


class KeysMayBeStale(Exception):
    """The JWT's key is not in the cached JWKS (or none is cached yet): fetching the set again
    might help (`Authenticator.authenticate_refreshing`). `error` is what to report if not."""

    def __init__(self, error: GatewayError) -> None:
        super().__init__(error.message)
        self.error = error


class Authenticator:
    """Turns request metadata into a `Principal`, or raises `Unauthenticated`.

    Built once from settings (a JWKS file is read here, so a broken file fails at startup; a
    JWKS URL is fetched once the server starts `remote_jwks`). `authenticate` is pure CPU and
    safe to call from any task; `authenticate_refreshing` also fetches the JWKS again when a
    token names a key the cached set lacks.
    """

    def __init__(self, settings: AuthSettings) -> None:
        self._settings = settings
        self._service_digests = [
            (name, _digest(token.get_secret_value()))
            for name, token in sorted(settings.named_service_tokens().items())
        ]
        self._hs256_key = (
            settings.jwt_secret.get_secret_value().encode()
            if settings.jwt_secret is not None
            else None
        )
        self._remote: RemoteJwks | None = None
        self._static_jwks: Keys = {}
        if settings.jwks_file:
            self._static_jwks = load_jwks(Path(settings.jwks_file))
        elif settings.jwks_url:
            self._remote = RemoteJwks(
                settings.jwks_url,
                timeout_s=settings.jwks_timeout_s,
                max_bytes=settings.jwks_max_bytes,
                refresh_interval_s=settings.jwks_refresh_interval_s,
                min_refresh_interval_s=settings.jwks_min_refresh_interval_s,
            )
        if (
            not self._service_digests
            and self._hs256_key is None
            and not self._jwks_configured
            and not settings.allow_anonymous
        ):
            raise ValueError(
                "authentication is not configured: set auth.service_token (or "
                "auth.service_tokens), auth.jwt_secret, auth.jwks_file or auth.jwks_url (or "
                "auth.allow_anonymous for local development)"
            )
        #: (authorization, user id, tier) headers -> the service principal they were.
        self._known_services: dict[tuple[str | None, str | None, str | None], Principal] = {}
        self._tier_path = _claim_path(settings.tier_claim)
        self._required_claims = ["exp", "sub"]
        if settings.jwt_audience is not None:
            self._required_claims.append("aud")
        if settings.jwt_issuer is not None:
            self._required_claims.append("iss")

    @property
    def remote_jwks(self) -> RemoteJwks | None:
        """The JWKS fetched from `auth.jwks_url` (None: no URL configured)."""
        return self._remote

    @property
    def _jwks_configured(self) -> bool:
        return bool(self._static_jwks) or self._remote is not None

    @property
    def _jwks(self) -> Keys:
        return self._remote.keys if self._remote is not None else self._static_jwks

    async def wait_for_keys(self) -> None:
        """With `auth.jwks_url`, waits for the first fetch of the JWKS to end (within
        `auth.jwks_timeout_s`; the fetcher is started by `remote_jwks.start`). A failed first
        fetch does not stop start-up: RS256/ES256 JWTs are then refused (UNAVAILABLE,
        retryable) until a key set arrives, while service tokens and HS256 JWTs work."""
        if self._remote is None:
            return
        if not await self._remote.wait_first():
            log.error(
                "serving without the JWKS: RS256/ES256 user JWTs are refused until it is "
                "fetched (retried in the background and on the first such token)",
                extra={"jwks_url": self._remote.url, "error": self._remote.last_error},
            )

    async def aclose(self) -> None:
        """Stops the background JWKS refresh."""
        if self._remote is not None:
            await self._remote.aclose()

    async def authenticate_refreshing(self, metadata: Metadata) -> Principal:
        """`authenticate`, fetching the JWKS again (rate-limited, `gateway.jwks.RefreshGate`)
        when the token's `kid` is not in the cached set, then deciding with the new set."""
        try:
            return self.authenticate(metadata)
        except KeysMayBeStale as stale:
            if self._remote is None or not await self._remote.refresh_for_unknown_kid():
                raise stale.error from None
        try:
            return self.authenticate(metadata)
        except KeysMayBeStale as stale:
            raise stale.error from None

    def authenticate(self, metadata: Metadata) -> Principal:
        """The caller behind `metadata`; raises `Unauthenticated` saying what to fix (or,
        with a JWKS URL, `KeysMayBeStale` when fetching the set again might help).

        A trusted backend's calls (service token, user id, tier) are decided once per distinct
        triple and remembered (`KNOWN_SERVICE_CALLERS` of them): nothing of that decision
        changes while the process runs. Only credentials that were accepted are remembered,
        so a lookup tells nothing a caller does not know already; JWTs, which expire, are
        verified on every call."""
        seen = _credentials(metadata) if type(metadata) is tuple else None
        if seen is not None:
            known = self._known_services.get(seen)
            if known is not None:
                return known
        principal = self._decide(metadata)
        if seen is not None and principal.service_token is not None:
            if len(self._known_services) >= KNOWN_SERVICE_CALLERS:
                self._known_services.clear()
            self._known_services[seen] = principal
        return principal

    def _decide(self, metadata: Metadata) -> Principal:
        """`authenticate`, deciding from scratch."""
        headers = _collect_headers(metadata)
        authorization = _single(headers, AUTHORIZATION_HEADER)
        if authorization is None:
            if self._settings.allow_anonymous:
                return Principal(ANONYMOUS_USER_ID, self._settings.default_tier, "anonymous")
            raise Unauthenticated(
                "no credentials: send the metadata 'authorization: Bearer <token>' with a user "
                "JWT or the service token"
            )
        credential = _bearer_credential(authorization)
        name = self._service_token_name(credential)
        if name is not None:
            return _service_principal(headers, name)
        return self._jwt_principal(credential)

    def _service_token_name(self, credential: str) -> str | None:
        """The name of the service token `credential` is, or None.

        Fixed-size digests are compared, against every token and without stopping at a match,
        so neither the content nor the length of any token, nor which one matched, shows in
        the time taken.
        """
        digest = _digest(credential)
        matched = None
        for name, expected in self._service_digests:
            if hmac.compare_digest(digest, expected) and matched is None:
                matched = name
        return matched

    def _jwt_principal(self, token: str) -> Principal:
        if self._hs256_key is None and not self._jwks_configured:
            raise Unauthenticated(
                "the bearer token is not the service token, and this gateway accepts no user "
                "JWTs (none of auth.jwt_secret, auth.jwks_file, auth.jwks_url is configured)"
            )
        import jwt

        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthenticated(
                "the bearer token is neither the service token nor a well-formed JWT"
            ) from None
        key, algorithm = self._verification_key(header)
        settings = self._settings
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=settings.jwt_audience,
                issuer=settings.jwt_issuer,
                leeway=settings.leeway_s,
                options={
                    "require": self._required_claims,
                    "verify_signature": True,
                    "verify_exp": True,
                    "verify_nbf": True,
                    "verify_iat": True,
                    "verify_aud": settings.jwt_audience is not None,
                    "verify_iss": settings.jwt_issuer is not None,
                    "verify_sub": True,
                },
            )
        except jwt.PyJWTError as exc:
            # `from None`: PyJWT's own messages and causes may quote token bytes.
            raise Unauthenticated(self._explain(exc)) from None
        user_id = _checked_user_id(claims["sub"], "the JWT sub claim")
        tier_value = _claim_at(claims, self._tier_path)
        tier = (
            settings.default_tier
            if tier_value is None
            else _parse_tier(tier_value, f"the JWT claim {settings.tier_claim}")
        )
        return Principal(user_id, tier, "jwt")

    def _verification_key(self, header: Mapping[str, Any]) -> tuple[Any, str]:
        """The key and the single algorithm a token may be verified with, from its header.

        The algorithm must match how the key is configured: an HS256 token is only ever checked
        against the HS256 secret, an RS256/ES256 token only against the JWKS key of its `kid`, so
        a public key can never serve as an HMAC secret.
        """
        algorithm = header.get("alg")
        if algorithm == "HS256":
            if self._hs256_key is None:
                raise Unauthenticated(
                    "HS256 user JWTs are not accepted here (no auth.jwt_secret is configured); "
                    f"accepted algorithms: {self._accepted_algorithms()}"
                )
            return self._hs256_key, "HS256"
        if algorithm in JWKS_ALGORITHMS.values():
            if not self._jwks_configured:
                raise Unauthenticated(
                    f"{algorithm} user JWTs are not accepted here (neither auth.jwks_file nor "
                    f"auth.jwks_url is configured); accepted algorithms: "
                    f"{self._accepted_algorithms()}"
                )
            kid = header.get("kid")
            if not isinstance(kid, str) or not kid:
                raise Unauthenticated(
                    f"the {algorithm} JWT has no kid header; the gateway picks the verification "
                    "key by kid"
                )
            jwk = self._jwks.get(kid)
            if jwk is None:
                raise self._unknown_kid(kid)
            if jwk.algorithm_name != algorithm:
                raise Unauthenticated(
                    f"the JWT says alg {algorithm} but JWKS key {_shown(kid)} is an "
                    f"{jwk.algorithm_name} key"
                )
            return jwk.key, algorithm
        raise Unauthenticated(
            f"JWT algorithm {_shown(algorithm)} is not accepted; accepted algorithms: "
            f"{self._accepted_algorithms()}"
        )

    def _unknown_kid(self, kid: str) -> Exception:
        remote = self._remote
        if remote is None:
            return Unauthenticated(
                f"unknown JWT kid {_shown(kid)}: no such key in the configured JWKS (known: "
                f"{', '.join(sorted(self._jwks))}); the token was signed by an untrusted key "
                "or the JWKS file is out of date"
            )
        if not remote.loaded:
            # Not the caller's fault: the keys could not be fetched yet.
            return KeysMayBeStale(
                Unavailable(
                    "the gateway has not fetched the JWT signing keys (auth.jwks_url) yet; "
                    "retry shortly",
                    retry_after_s=max(remote.retry_after(), 1.0),
                )
            )
        return KeysMayBeStale(
            Unauthenticated(
                f"unknown JWT kid {_shown(kid)}: no such key in the JWKS at auth.jwks_url "
                f"(known: {', '.join(sorted(self._jwks))}), fetched again at most every "
                f"{remote.min_refresh_interval_s:g} s for unknown kids; the token was signed "
                "by an untrusted key"
            )
        )

    def _accepted_algorithms(self) -> str:
        names = ["HS256"] if self._hs256_key is not None else []
        if self._remote is not None:
            names += ["ES256", "RS256"]  # whichever the fetched set holds
        else:
            names += sorted({jwk.algorithm_name for jwk in self._jwks.values()})
        return ", ".join(names) or "none"

    def _explain(self, exc: jwt.PyJWTError) -> str:
        """What the caller must fix, for each way PyJWT rejects a token (never quoting it)."""
        import jwt
        from jwt.exceptions import InvalidSubjectError

        settings = self._settings
        if isinstance(exc, jwt.ExpiredSignatureError):
            return (
                f"the JWT has expired (exp is more than {settings.leeway_s}s in the past); "
                "refresh the session and send a fresh token"
            )
        if isinstance(exc, jwt.ImmatureSignatureError):
            return (
                "the JWT is not valid yet (its nbf or iat is in the future); check the clocks of "
                "the token issuer and the gateway"
            )
        if isinstance(exc, jwt.MissingRequiredClaimError):
            return (
                f"the JWT has no {exc.claim} claim; the gateway requires "
                f"{', '.join(self._required_claims)}"
            )
        if isinstance(exc, jwt.InvalidAudienceError):
            return (
                f"wrong JWT audience: aud must include {settings.jwt_audience!r}; request a "
                "token for this audience"
            )
        if isinstance(exc, jwt.InvalidIssuerError):
            return f"wrong JWT issuer: iss must be {settings.jwt_issuer!r}"
        if isinstance(exc, jwt.InvalidSignatureError):
            return (
                "bad JWT signature: the token was not signed with the configured secret or key "
                "(or was altered)"
            )
        if isinstance(exc, jwt.InvalidIssuedAtError):
            return "the JWT iat claim must be a number of seconds since the epoch"
        if isinstance(exc, InvalidSubjectError):
            return "the JWT sub claim must be a string"
        if isinstance(exc, jwt.DecodeError):
            return (
                "the JWT is malformed (bad encoding, a non-object payload, or a non-numeric "
                "exp/nbf claim)"
            )
        return f"the JWT was rejected ({type(exc).__name__})"


def require_tier(principal: Principal, allowed: Sequence[Tier], operation: str) -> None:
    """Raise `PermissionDenied` unless the caller's tier includes `operation`.

    `allowed` is the operation's policy (`Settings.policy(operation).tiers`); the message names the
    tiers that include it, e.g. "analyze_video needs the pro tier; your tier is free".
    """
    if principal.tier in allowed:
        return
    needed = [tier.value for tier in Tier if tier in allowed]
    metadata = {
        "operation": operation,
        "tier": principal.tier.value,
        "required_tiers": ",".join(needed),
    }
    if not needed:
        raise PermissionDenied(f"{operation} is not enabled for any tier", metadata=metadata)
    raise PermissionDenied(
        f"{operation} needs the {' or '.join(needed)} tier; your tier is {principal.tier.value}",
        metadata=metadata,
    )


def load_jwks(path: Path) -> dict[str, jwt.PyJWK]:
    """The RS256/ES256 public keys of a JWKS file, by `kid` (`gateway.jwks.parse_jwks`).

    Raises `ValueError` for a file the gateway must not run with: unreadable, not JSON, or a
    document `parse_jwks` refuses.
    """
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"cannot read auth.jwks_file {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ValueError(f"auth.jwks_file {path} is not valid JSON: {exc}") from None
    return parse_jwks(document, f"auth.jwks_file {path}")


def mint_dev_jwt(
    secret: str | SecretStr,
    user_id: str,
    tier: Tier,
    ttl_s: int = 3600,
    *,
    audience: str | None = "authenticated",
    issuer: str | None = None,
    tier_claim: str = "app_metadata.tier",
    now: float | None = None,
) -> str:
    """A Supabase-shaped HS256 user JWT, for local development and tests only.

    The defaults match the default `AuthSettings`; pass `audience`, `issuer` and `tier_claim` when
    the gateway is configured otherwise. `now` (epoch seconds) backdates or postdates the token.
    """
    if ttl_s <= 0:
        raise ValueError("ttl_s must be positive")
    key = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
    issued_at = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "sub": user_id,
        "role": "authenticated",
        "iat": issued_at,
        "exp": issued_at + ttl_s,
    }
    if audience is not None:
        claims["aud"] = audience
    if issuer is not None:
        claims["iss"] = issuer
    _put_claim(claims, _claim_path(tier_claim), tier.value)
    import jwt

    return jwt.encode(claims, key, algorithm="HS256")


def _service_principal(headers: Mapping[str, list[str]], token_name: str) -> Principal:
    """The end user the trusted backend (with the service token `token_name`) names in
    metadata."""
    user_id = _single(headers, USER_ID_HEADER)
    if user_id is None or not user_id.strip():
        raise Unauthenticated(
            "the service token authenticates the backend, not a user: send the end user's id "
            f"in {USER_ID_HEADER}"
        )
    tier = _single(headers, TIER_HEADER)
    if tier is None:
        raise Unauthenticated(
            f"with the service token, send the end user's tier in {TIER_HEADER} "
            f"(one of: {_TIER_VALUES})"
        )
    return Principal(
        _checked_user_id(user_id, f"the {USER_ID_HEADER} header"),
        _parse_tier(tier, f"the {TIER_HEADER} header"),
        "service",
        token_name,
    )


def _credentials(
    metadata: tuple[tuple[str, str | bytes], ...],
) -> tuple[str | None, str | None, str | None] | None:
    """The authorization, user id and tier headers' text values (None where absent), or None
    when one of them comes more than once (`_decide` refuses that)."""
    authorization = user_id = tier = None
    for key, value in metadata:
        if not isinstance(value, str):
            continue
        name = key.lower()
        if name == AUTHORIZATION_HEADER:
            if authorization is not None:
                return None
            authorization = value
        elif name == USER_ID_HEADER:
            if user_id is not None:
                return None
            user_id = value
        elif name == TIER_HEADER:
            if tier is not None:
                return None
            tier = value
    return authorization, user_id, tier


def _collect_headers(metadata: Metadata) -> dict[str, list[str]]:
    """The text values of the headers authentication reads, by lower-cased key."""
    wanted = (AUTHORIZATION_HEADER, USER_ID_HEADER, TIER_HEADER)
    pairs: Iterable[tuple[str, str | bytes]] = (
        metadata.items() if isinstance(metadata, Mapping) else metadata
    )
    headers: dict[str, list[str]] = {}
    for key, value in pairs:
        name = key.lower()
        if name in wanted and isinstance(value, str):
            headers.setdefault(name, []).append(value)
    return headers


def _single(headers: Mapping[str, list[str]], name: str) -> str | None:
    """The one value of a header; two values are ambiguous, so refused rather than picked."""
    values = headers.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise Unauthenticated(f"send exactly one {name} header, not {len(values)}")
    return values[0]


def _bearer_credential(authorization: str) -> str:
    scheme, _, credential = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise Unauthenticated("the authorization header must be 'Bearer <token>'")
    credential = credential.strip()
    if not credential:
        raise Unauthenticated("the authorization header says Bearer but carries no token")
    if len(credential.split()) != 1:  # any whitespace inside (str.split's definition)
        raise Unauthenticated(
            "the authorization header must carry a single token after Bearer, without spaces"
        )
    return credential


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def valid_user_id(value: str) -> bool:
    """Whether `value` is shaped like a user id the gateway accepts."""
    return _USER_ID_PATTERN.fullmatch(value) is not None


def _checked_user_id(value: object, where: str) -> str:
    if not isinstance(value, str) or not _USER_ID_PATTERN.fullmatch(value):
        raise Unauthenticated(f"{where} must be a user id of {_USER_ID_RULE}")
    return value


def _parse_tier(value: object, where: str) -> Tier:
    if isinstance(value, str) and value in _TIERS:
        return Tier(value)
    raise Unauthenticated(f"{where} must be one of: {_TIER_VALUES}")


def _claim_path(dotted: str) -> tuple[str, ...]:
    parts = tuple(dotted.split("."))
    if not all(parts):
        raise ValueError(f"claim path {dotted!r} has an empty segment")
    return parts


def _claim_at(claims: Mapping[str, Any], path: Sequence[str]) -> object:
    """The claim at a dotted path, or None when any step is absent (or JSON null)."""
    node: object = claims
    for part in path:
        if not isinstance(node, Mapping):
            return None
        node = node.get(part)
    return node


def _put_claim(claims: dict[str, Any], path: Sequence[str], value: object) -> None:
    node = claims
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value


def _shown(value: object) -> str:
    """A header field quoted for a message: bounded, so a hostile header cannot flood logs."""
    if not isinstance(value, str):
        return f"<{type(value).__name__}>"
    return repr(value if len(value) <= 64 else value[:64] + "...")
