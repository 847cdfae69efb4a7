"""All configuration in one typed settings object.

Values come from, highest priority first: keyword arguments (tests), environment variables
`VIEWBAIT_*` (nested fields joined by `__`, e.g. `VIEWBAIT_GEMINI__TEXT_MODEL`), an optional TOML
file named by `VIEWBAIT_CONFIG_FILE`, then the defaults below. Every knob is documented in the
README with its default. The environment and the file are read strictly (unknown names refused,
partial tables merged over the defaults: `gateway.settings_sources`), and `deployment_problems`
refuses combinations that are unsafe to serve with (the emulator outside local mode, anonymous
callers on a public listener, no authentication, budgets that cannot work as meant).
"""

from __future__ import annotations

import ipaddress
import re
from enum import StrEnum
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from gateway.native import DEFAULT_MAX_IMAGE_SIDE
from gateway.settings_sources import GEMINI_API_KEY_ALIAS as GEMINI_API_KEY_ALIAS
from gateway.settings_sources import ConfigError as ConfigError
from gateway.settings_sources import env_name, operator_source


class Tier(StrEnum):
    """ViewBait subscription tiers, lowest first."""

    FREE = "free"
    STARTER = "starter"
    ADVANCED = "advanced"
    PRO = "pro"


class Scope(StrEnum):
    """Whose results a cache entry may serve."""

    USER = "user"
    GLOBAL = "global"


class ModelPrice(BaseModel):
    """USD per million tokens of each kind for one model."""

    input: float
    cached_input: float = 0.0
    output: float
    thinking: float | None = None  # None: billed as output
    image_output: float = 0.0


class Backend(StrEnum):
    """What answers the gateway's model calls."""

    #: Gemini (or any server reached through `gemini.base_url` with `gemini.api_key`).
    GEMINI = "gemini"
    #: The built-in offline emulator, started in-process: synthetic answers, kept apart from
    #: real ones in every cache key and stored result.
    EMULATOR = "emulator"


#: Prefix of the model identity of emulated answers (`emulator:gemini-3.6-flash`): in cache keys,
#: stored results and response metadata, so synthetic answers never pass for Gemini's.
EMULATOR_MODEL_PREFIX = "emulator:"


class GeminiSettings(BaseModel):
    """How the gateway reaches Gemini (or the offline emulator)."""

    #: None: Gemini when an API key is set, the emulator in local mode (loopback listener, no
    #: database, no Redis); anything else refuses to start (`deployment_problems`).
    backend: Backend | None = None
    api_key: SecretStr | None = None
    #: Base URL of the Gemini API; empty means Google's default endpoint. Tests and the demo point
    #: it at the emulator.
    base_url: str = ""
    api_version: str = "v1beta"
    text_model: str = "gemini-3.6-flash"
    image_model: str = "gemini-3.1-flash-image-preview"
    #: Attempts per call, the first included, for retryable failures (429, 5xx, timeouts).
    max_attempts: int = Field(default=4, ge=1, le=10)
    backoff_initial_s: float = Field(default=0.5, gt=0)
    backoff_max_s: float = Field(default=20.0, gt=0)
    #: Longest wait before a retry that Gemini's RetryInfo may ask for within one call; a call
    #: asked to wait longer (or past its deadline) ends at once with the upstream error and
    #: Gemini's delay as its retry-after.
    retry_delay_max_s: float = Field(default=60.0, gt=0, le=3600)
    #: Per-attempt timeout when the caller gave no deadline.
    attempt_timeout_s: float = Field(default=120.0, gt=0)
    #: How often the health probe asks Gemini whether it accepts the API key (`models.get`),
    #: and at most how often a refused key is logged at ERROR.
    credentials_check_interval_s: float = Field(default=30.0, gt=0)
    #: USD per million tokens, by model name.
    prices: dict[str, ModelPrice] = Field(
        default_factory=lambda: {
            "gemini-3.6-flash": ModelPrice(
                input=0.50, cached_input=0.05, output=3.00, image_output=0.0
            ),
            "gemini-3.1-flash-image-preview": ModelPrice(
                input=0.50, cached_input=0.05, output=3.00, image_output=60.0
            ),
        }
    )


class EmulatorSettings(BaseModel):
    """The built-in offline Gemini emulator (`gemini.backend` emulator, or local mode)."""

    host: str = "127.0.0.1"
    port: int = 0  # 0: any free port
    latency_s: float = Field(default=0.0, ge=0)
    latency_jitter_s: float = Field(default=0.0, ge=0)
    api_key: str = "emulator-key"


#: Largest `emission * burst` (and `emission * cost`) in microseconds: the Redis script computes
#: in Lua doubles, exact for integers up to 2**53, and TATs sit about 2**51 us after the epoch.
MAX_LIMIT_SPAN_US = 2**50
#: Largest emission interval (about 25 days): up to here the native limiter's nanosecond
#: interval, computed from floats, is exactly 1000 times the microsecond one.
MAX_EMISSION_US = 2**41


class RateLimit(BaseModel):
    """`rate` requests per `period_s` seconds, `burst` of them at once (GCRA, redis_rate semantics).

    The emission interval `period_s / rate` is kept in whole microseconds, in Redis and in the
    native limiter alike, so both decide identically.
    """

    model_config = ConfigDict(frozen=True)

    rate: float = Field(gt=0)
    period_s: float = Field(gt=0)
    burst: int = Field(ge=1)

    @property
    def emission_us(self) -> int:
        """Microseconds between two requests at the sustained rate."""
        return round(self.period_s * 1_000_000 / self.rate)

    @model_validator(mode="after")
    def _representable(self) -> RateLimit:
        if not 1 <= self.emission_us <= MAX_EMISSION_US:
            raise ValueError("period_s / rate must be between one microsecond and 25 days")
        if self.emission_us * self.burst > MAX_LIMIT_SPAN_US:
            raise ValueError("period_s / rate * burst must stay below about 35 years")
        return self

    def describe(self) -> str:
        """E.g. "10 per 60 s (burst 5)"."""
        return f"{self.rate:g} per {self.period_s:g} s (burst {self.burst})"


class RouteLimits(BaseModel):
    """The rate limits of one tier on one route, per user. None: not limited."""

    model_config = ConfigDict(frozen=True)

    #: Every request (cache hits included), checked after tier and validation.
    admission: RateLimit | None = None
    #: Every Gemini call the route makes (GenerateThumbnail makes one per variation).
    upstream: RateLimit | None = None


def _per_minute(rate_burst: tuple[int, int]) -> RateLimit:
    """`rate` per minute, `burst` at once."""
    return RateLimit(rate=rate_burst[0], period_s=60, burst=rate_burst[1])


def _default_route_limits() -> dict[Tier, RouteLimits]:
    # Admission is flood protection and counts cheap answers too; upstream protects spend, so it
    # is the tighter of the two. Upstream bursts cover two GenerateThumbnail requests at max
    # variations (a generation and a retry).
    def per_minute(admission: tuple[int, int], upstream: tuple[int, int]) -> RouteLimits:
        return RouteLimits(admission=_per_minute(admission), upstream=_per_minute(upstream))

    return {
        Tier.FREE: per_minute((30, 10), (10, 8)),
        Tier.STARTER: per_minute((60, 20), (30, 16)),
        Tier.ADVANCED: per_minute((120, 40), (60, 32)),
        Tier.PRO: per_minute((300, 60), (120, 64)),
    }


class ReadLimits(BaseModel):
    """The rate limits of one tier on the JobService reads, per user. None: not limited."""

    model_config = ConfigDict(frozen=True)

    get_job: RateLimit | None = None
    list_jobs: RateLimit | None = None
    watch_job: RateLimit | None = None
    cancel_job: RateLimit | None = None


def _default_read_limits() -> dict[Tier, ReadLimits]:
    # A read costs a store lookup, not a model call: looser than admission. GetJob is what a
    # client polls (once a second stays well inside every tier); ListJobs pages through the
    # store, WatchJob opens a stream (reopened after a broken connection) and CancelJob writes.
    def per_minute(get: tuple[int, int], other: tuple[int, int]) -> ReadLimits:
        return ReadLimits(
            get_job=_per_minute(get),
            list_jobs=_per_minute(other),
            watch_job=_per_minute(other),
            cancel_job=_per_minute(other),
        )

    return {
        Tier.FREE: per_minute((120, 30), (30, 10)),
        Tier.STARTER: per_minute((240, 60), (60, 20)),
        Tier.ADVANCED: per_minute((480, 120), (120, 40)),
        Tier.PRO: per_minute((1200, 200), (300, 60)),
    }


class ConcurrencySettings(BaseModel):
    """Caps on RPCs in flight on this replica (see `gateway.limiter.concurrency`), decided from
    the metadata before a request is read: a refusal is RESOURCE_EXHAUSTED with a retry-after.
    Health checking and reflection are neither counted nor refused."""

    #: RPCs of the gateway's services in flight on this replica, open streams included; a new
    #: one beyond it is shed (`OVERLOADED`) before the process degrades.
    max_rpcs_in_flight: int = Field(default=2000, ge=1)
    #: Most RPCs one user has in flight on this replica, by tier (a tier left out is uncapped).
    user_rpcs: dict[Tier, PositiveInt] = Field(
        default_factory=lambda: {Tier.FREE: 8, Tier.STARTER: 16, Tier.ADVANCED: 32, Tier.PRO: 64}
    )
    #: Most WatchJob and GenerateThumbnail streams one user has open on this replica, by tier
    #: (a tier left out is uncapped); they count in `user_rpcs` too.
    user_streams: dict[Tier, PositiveInt] = Field(
        default_factory=lambda: {Tier.FREE: 4, Tier.STARTER: 8, Tier.ADVANCED: 16, Tier.PRO: 32}
    )
    #: The retry-after a refusal by any of these caps carries: a hint, as a slot frees when
    #: another RPC ends.
    retry_after_s: float = Field(default=1.0, gt=0, le=60)


class RoutePolicy(BaseModel):
    """Per-operation policy: who may call it, how long results live, which model runs it."""

    route_id: str
    tiers: list[Tier]
    #: Cache lifetime of a successful result; 0 disables caching for the route.
    ttl_s: int = Field(ge=0)
    #: "text" or "image": which configured Gemini model runs it.
    model: str = "text"
    #: Cache scope; global lets identical inputs from different users share one result.
    scope: Scope = Scope.USER
    #: Per-user rate limits by tier; a tier without an entry is not limited on this route.
    limits: dict[Tier, RouteLimits] = Field(default_factory=_default_route_limits)


def _default_policies() -> dict[str, RoutePolicy]:
    # Model kind and scope are what each spec already declares (`model_kind`, `default_scope`);
    # only who may call an operation and how long its results live are decided here. Imported
    # on use, not at import time: the specs import this module.
    from gateway.operations import OPERATIONS

    every = [Tier.FREE, Tier.STARTER, Tier.ADVANCED, Tier.PRO]
    # Operation name -> (route id, tiers, cache TTL in seconds; 0: never cached).
    table: dict[str, tuple[str, list[Tier], int]] = {
        "generate_thumbnail": ("generate", every, 0),
        "analyze_video": ("youtube-analyze", [Tier.PRO], 7 * 86400),
        "suggest_thumbnail_concepts": ("youtube-suggest-concepts", [Tier.PRO], 86400),
        "compute_attention_heatmap": ("thumbnail-heatmap", [Tier.ADVANCED, Tier.PRO], 30 * 86400),
        "check_channel_consistency": ("channel-consistency", every, 86400),
    }
    return {
        name: RoutePolicy(
            route_id=route_id,
            tiers=tiers,
            ttl_s=ttl_s,
            model=OPERATIONS[name].model_kind,
            scope=OPERATIONS[name].default_scope,
        )
        for name, (route_id, tiers, ttl_s) in table.items()
    }


class FailureMode(StrEnum):
    """What the shared limiter does while Redis is unreachable."""

    #: Decide in process with the native limiter, each limit divided by `limiter.replicas`.
    LOCAL = "local"
    #: Allow everything (availability over protection).
    OPEN = "open"
    #: Refuse everything with UNAVAILABLE (protection over availability).
    CLOSED = "closed"


class LimiterSettings(BaseModel):
    """Where rate-limit state lives and how Redis trouble is handled (see `gateway.limiter`)."""

    model_config = ConfigDict(hide_input_in_errors=True)

    #: `redis://[:password@]host:port/db` (or `rediss://`); None: the embedded native limiter,
    #: exact for a single replica only.
    redis_url: SecretStr | None = None
    #: Whether `redis_url` names a node of a Redis Cluster.
    cluster: bool = False
    #: Prefix of every key; it goes inside the hash tags, so it may not contain braces.
    key_prefix: str = Field(default="viewbait:rl", pattern=r"^[^{}]+$")
    #: Longest wait to open a connection to Redis.
    connect_timeout_s: float = Field(default=0.05, gt=0, le=10)
    #: Longest a request waits on Redis for a decision; then the failure mode decides.
    command_timeout_s: float = Field(default=0.1, gt=0, le=10)
    failure_mode: FailureMode = FailureMode.LOCAL
    #: The fewest replicas the `local` failure mode assumes share the limits: each replica then
    #: enforces 1/max(live count, this) of every limit. The live count comes from the replicas'
    #: heartbeats in Redis (the last one read before the outage); this is the only count of a
    #: replica that never reached Redis, so set it to the fleet's size to be safe from the start.
    replicas: int = Field(default=1, ge=1)
    #: How often each replica renews its heartbeat in Redis; one silent for three intervals no
    #: longer counts.
    heartbeat_interval_s: float = Field(default=1.0, gt=0, le=60)
    #: Consecutive failed Redis calls that open the circuit (Redis is then skipped).
    breaker_failures: int = Field(default=3, ge=1)
    #: While the circuit is open, Redis is probed this often; the first answer closes it.
    probe_interval_s: float = Field(default=1.0, gt=0)
    #: Fleet-wide limits on Gemini calls per model name, to stay under the project quota.
    models: dict[str, RateLimit] = Field(
        default_factory=lambda: {
            "gemini-3.6-flash": RateLimit(rate=2000, period_s=60, burst=200),
            "gemini-3.1-flash-image-preview": RateLimit(rate=600, period_s=60, burst=60),
        }
    )
    #: The fleet-wide limit of a model not listed in `models`; None: unlisted models are free.
    model_default: RateLimit | None = Field(
        default_factory=lambda: RateLimit(rate=1000, period_s=60, burst=100)
    )

    def model_limit(self, model: str) -> RateLimit | None:
        """The fleet-wide limit on calls to `model`."""
        return self.models.get(model, self.model_default)


#: The name `auth.service_token` is accepted (and logged) under.
DEFAULT_SERVICE_TOKEN = "default"
#: Service token names appear in logs and traces: short, plain, no separators.
SERVICE_TOKEN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
SERVICE_TOKEN_NAME_RULE = "1 to 64 letters, digits and . _ -, starting with a letter or digit"


class AuthSettings(BaseModel):
    """How callers authenticate (see `gateway.auth`).

    Two mechanisms, usable together: a service token for the trusted backend (which then asserts
    the user id and tier in metadata), and Supabase-style user JWTs verified with an HS256 secret
    and/or a JWKS file of RS256/ES256 public keys.
    """

    model_config = ConfigDict(hide_input_in_errors=True)

    #: Shared secret of the trusted backend; with it, `x-viewbait-user-id` / `x-viewbait-tier` say
    #: who the call is for. Accepted as the service token named `default`.
    service_token: SecretStr | None = None
    #: Named service tokens, name -> token, all accepted at once (rotation without a flag day:
    #: add the new token, move the backends to it, remove the old one). Each works like
    #: `service_token`; the name of the one a call used is logged with it, never the token.
    service_tokens: dict[str, SecretStr] = Field(default_factory=dict)
    #: HS256 secret that signs user JWTs (Supabase's "JWT secret").
    jwt_secret: SecretStr | None = None
    #: Path of a JWKS JSON file with the RS256/ES256 public keys of user JWTs, chosen by `kid`.
    jwks_file: str | None = None
    #: URL of the JWKS instead (Supabase:
    #: `https://<project>.supabase.co/auth/v1/.well-known/jwks.json`), fetched in the background
    #: (see `gateway.jwks`). https, or http to a loopback address only.
    jwks_url: str | None = None
    #: How often the JWKS at `jwks_url` is fetched again in the background.
    jwks_refresh_interval_s: float = Field(default=600.0, gt=0, le=86400)
    #: A token whose `kid` the cached set lacks triggers a fetch at most this often.
    jwks_min_refresh_interval_s: float = Field(default=30.0, gt=0, le=86400)
    #: Longest a JWKS fetch may take, the whole body included.
    jwks_timeout_s: float = Field(default=5.0, gt=0, le=60)
    #: Largest JWKS document accepted (after decompression).
    jwks_max_bytes: int = Field(default=256 * 1024, ge=1024, le=16 * 1024 * 1024)
    #: Required `aud` of user JWTs; None skips the audience check.
    jwt_audience: str | None = "authenticated"
    #: Required `iss` of user JWTs; None skips the issuer check.
    jwt_issuer: str | None = None
    #: Dotted path of the tier claim inside the JWT payload.
    tier_claim: str = Field(default="app_metadata.tier", pattern=r"^[^.]+(\.[^.]+)*$")
    #: Tier of a JWT that does not carry the tier claim.
    default_tier: Tier = Tier.FREE
    #: Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds.
    leeway_s: int = Field(default=30, ge=0, le=300)
    #: Local development only: calls without credentials run as the user `anonymous` at
    #: `default_tier`. Bad credentials are still refused.
    allow_anonymous: bool = False

    @field_validator("service_token")
    @classmethod
    def _service_token_strong(cls, value: SecretStr | None) -> SecretStr | None:
        # A guessable service token lets anyone claim any user and tier.
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("auth.service_token must be at least 16 characters")
        return value

    @field_validator("service_tokens")
    @classmethod
    def _service_tokens_named_and_strong(cls, tokens: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for name, token in tokens.items():
            if not SERVICE_TOKEN_NAME.fullmatch(name):
                raise ValueError(
                    f"service token name {name[:64]!r} must be {SERVICE_TOKEN_NAME_RULE}"
                )
            if len(token.get_secret_value()) < 16:
                raise ValueError(f"auth.service_tokens.{name} must be at least 16 characters")
        return tokens

    @model_validator(mode="after")
    def _service_tokens_distinct(self) -> AuthSettings:
        named = self.named_service_tokens()
        if self.service_token is not None and DEFAULT_SERVICE_TOKEN in self.service_tokens:
            raise ValueError(
                f"auth.service_token is the service token named {DEFAULT_SERVICE_TOKEN!r}, and "
                f"auth.service_tokens names one {DEFAULT_SERVICE_TOKEN!r} too: rename that "
                "entry or unset auth.service_token"
            )
        owners: dict[str, str] = {}
        for name, token in named.items():
            other = owners.setdefault(token.get_secret_value(), name)
            if other != name:
                # The name a call is logged under must say which backend made it.
                raise ValueError(
                    f"the service tokens named {other!r} and {name!r} are the same token: give "
                    "each backend a token of its own"
                )
        return self

    def named_service_tokens(self) -> dict[str, SecretStr]:
        """Every accepted service token by name (`service_token` as `default`)."""
        named = dict(self.service_tokens)
        if self.service_token is not None:
            named.setdefault(DEFAULT_SERVICE_TOKEN, self.service_token)
        return named

    @field_validator("jwks_url")
    @classmethod
    def _jwks_url_secure(cls, value: str | None) -> str | None:
        if value is None:
            return value
        url = urlsplit(value)
        if url.scheme not in ("https", "http") or not url.hostname:
            raise ValueError("auth.jwks_url must be an https:// URL of a JWKS document")
        if url.scheme == "http" and not is_loopback(url.hostname):
            # Keys fetched in the clear could be swapped by anyone on the path.
            raise ValueError(
                "auth.jwks_url must use https (plain http is accepted for loopback hosts only)"
            )
        return value

    @model_validator(mode="after")
    def _one_jwks_source(self) -> AuthSettings:
        if self.jwks_file is not None and self.jwks_url is not None:
            raise ValueError(
                "set auth.jwks_file or auth.jwks_url, not both: the keys come from one place"
            )
        return self

    @field_validator("jwt_secret")
    @classmethod
    def _jwt_secret_strong(cls, value: SecretStr | None) -> SecretStr | None:
        # RFC 7518 3.2: an HS256 key must be at least as long as the hash (32 bytes).
        if value is not None and len(value.get_secret_value().encode()) < 32:
            raise ValueError("auth.jwt_secret must be at least 32 bytes (RFC 7518 section 3.2)")
        return value


class ReflectionMode(StrEnum):
    """Who may use gRPC server reflection."""

    #: Not served.
    OFF = "off"
    #: Served to callers that authenticate like any RPC of the gateway (and refused,
    #: UNAUTHENTICATED, to the others).
    AUTHENTICATED = "authenticated"
    #: Served to anyone, without credentials.
    PUBLIC = "public"


class ServerSettings(BaseModel):
    """The gRPC listener and its lifecycle."""

    host: str = "127.0.0.1"
    #: 0 picks a free port (tests); the chosen one is logged and written to `ready_file`.
    port: int = Field(default=50051, ge=0, le=65535)
    #: When set, a JSON file `{"port": N, "pid": P, ...}` is written here once the server serves.
    ready_file: str | None = None
    #: Seconds in-flight RPCs get to finish after SIGTERM/SIGINT before they are cancelled.
    shutdown_grace_s: float = Field(default=20.0, ge=0)
    #: Largest request accepted: 13 images of a channel check at their byte cap, plus slack.
    max_receive_message_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    #: Largest response sent (generated images travel in stream messages of their own).
    max_send_message_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    #: HTTP/2 keepalive pings every this many seconds on idle connections, so dead peers (and
    #: their in-flight streams) are noticed behind NATs and load balancers.
    keepalive_time_s: float = Field(default=30.0, gt=0)
    keepalive_timeout_s: float = Field(default=10.0, gt=0)
    #: Shortest ping interval a client may use before the server calls it abuse.
    min_client_ping_interval_s: float = Field(default=10.0, gt=0)
    max_concurrent_streams: int = Field(default=1000, ge=1)
    #: Who may use gRPC server reflection (grpcurl list/describe): `off`, `authenticated`
    #: (callers with the credentials an RPC needs) or `public` (anyone).
    reflection: ReflectionMode = ReflectionMode.AUTHENTICATED
    #: Log format: "json" (one object per line) or "text".
    log_format: str = Field(default="json", pattern="^(json|text)$")
    log_level: str = "INFO"

    @field_validator("reflection", mode="before")
    @classmethod
    def _reflection_mode(cls, value: object) -> object:
        # The setting was a boolean: keep `false` (off, unambiguous) and refuse `true`, which
        # meant public and must now be chosen knowingly.
        if value is False or (isinstance(value, str) and value.lower() == "false"):
            return ReflectionMode.OFF
        if value is True or (isinstance(value, str) and value.lower() == "true"):
            raise ValueError(
                "server.reflection is no longer a boolean: set it to authenticated (callers "
                "with credentials), public (anyone, what true meant) or off"
            )
        return value


class TlsSettings(BaseModel):
    """TLS on the gRPC listener (see `gateway.tls`): off unless `cert_file` and `key_file` are
    set. The files are re-read when they change, on the next handshake, without a restart.
    Only the gRPC listener is covered: the metrics endpoint stays plain HTTP."""

    model_config = ConfigDict(frozen=True)

    #: PEM certificate chain the listener presents, leaf first (intermediates after it).
    cert_file: str | None = Field(default=None, min_length=1)
    #: PEM private key of the leaf certificate, unencrypted (PKCS#8 or traditional).
    key_file: str | None = Field(default=None, min_length=1)
    #: PEM CA certificates that sign client certificates. Set: mutual TLS, every client must
    #: present a certificate one of them signed, or the handshake fails.
    client_ca_file: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _complete(self) -> TlsSettings:
        cert, key = env_name("tls.cert_file"), env_name("tls.key_file")
        if (self.cert_file is None) != (self.key_file is None):
            missing = key if self.key_file is None else cert
            raise ValueError(f"{cert} and {key} go together: set {missing} too, or unset both")
        if self.client_ca_file is not None and self.cert_file is None:
            raise ValueError(
                f"{env_name('tls.client_ca_file')} asks for client certificates, which needs "
                f"TLS on the listener: set {cert} and {key} too, or unset it"
            )
        return self

    @property
    def enabled(self) -> bool:
        """Whether the listener serves TLS."""
        return self.cert_file is not None

    @property
    def mutual(self) -> bool:
        """Whether clients must present a certificate (mutual TLS)."""
        return self.client_ca_file is not None


class InputBounds(BaseModel):
    """Limits on what a request may carry, checked by each operation's `validate` before any work.

    A request outside a bound is refused with INVALID_ARGUMENT naming the field and the bound.
    Text lengths count Unicode characters; byte sizes count raw (decoded) bytes.
    """

    model_config = ConfigDict(frozen=True)

    #: Largest single image (an upload, a reference, a thumbnail to score). YouTube itself caps
    #: custom thumbnails well below this.
    max_image_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    #: Largest sum of all images in one request (a channel check carries up to 13), kept below
    #: `server.max_receive_message_bytes`.
    max_total_image_bytes: int = Field(default=48 * 1024 * 1024, ge=1024)
    #: Longest side of any input image, in pixels (read from headers, never decoded).
    max_image_side: int = Field(default=4096, ge=16, le=DEFAULT_MAX_IMAGE_SIDE)
    #: Reference images of a GenerateThumbnail request (face or style).
    max_generate_references: int = Field(default=4, ge=0, le=14)
    #: Variations one GenerateThumbnail request may ask for (one image-model call each).
    max_variations: int = Field(default=4, ge=1, le=8)
    #: Reference thumbnails of a CheckChannelConsistency request (at least one is required).
    max_consistency_references: int = Field(default=12, ge=1, le=32)
    #: GenerateThumbnail's title/prompt text.
    max_prompt_chars: int = Field(default=2000, ge=1)
    #: A video title passed as context (YouTube allows 100 characters).
    max_title_chars: int = Field(default=100, ge=1)
    #: A video description passed as context (YouTube allows 5000 characters).
    max_description_chars: int = Field(default=5000, ge=1)
    #: The channel analytics JSON object of SuggestThumbnailConcepts, in UTF-8 bytes.
    max_analytics_json_bytes: int = Field(default=64 * 1024, ge=2)


class StoreSettings(BaseModel):
    """Where results, jobs, usage and blobs are kept (see `gateway.store`, docs/storage.md)."""

    model_config = ConfigDict(hide_input_in_errors=True, populate_by_name=True)

    #: PostgreSQL URL (`postgresql://user:password@host:5432/db`), shared by every replica. None
    #: keeps everything in this process (embedded mode: one replica, nothing survives a restart).
    database_url: SecretStr | None = None
    #: PostgreSQL schema holding the gateway's tables (created by the migrations). Env:
    #: `VIEWBAIT_STORE__SCHEMA`.
    schema_name: str = Field(default="viewbait_ai", alias="schema", min_length=1, max_length=63)
    #: Connections the pool keeps open, and the most it opens.
    pool_min_size: int = Field(default=1, ge=0, le=100)
    pool_max_size: int = Field(default=10, ge=1, le=100)
    #: Bound on opening a connection; a database that does not answer fails calls after this.
    connect_timeout_s: float = Field(default=2.0, gt=0, le=30)
    #: Bound on one store call (statements and waiting for a pooled connection); on expiry the
    #: call fails with UNAVAILABLE instead of hanging the request.
    command_timeout_s: float = Field(default=2.0, gt=0, le=60)
    #: After a failed connection attempt, calls fail at once for this long before trying again.
    reconnect_interval_s: float = Field(default=1.0, gt=0, le=60)
    #: Waiters on a job re-read it this often while the LISTEN connection is down (the fallback
    #: for lost notifications); also how often the idle LISTEN connection is checked.
    poll_interval_s: float = Field(default=2.0, gt=0, le=60)
    #: Apply pending migrations when the gateway starts (otherwise run `viewbait-gateway
    #: migrate`; a schema behind the gateway's migrations makes store calls fail UNAVAILABLE).
    migrate_on_start: bool = False
    #: Where blobs (images, heatmaps, large result JSON) live: `postgres` (the database's
    #: `ai_blobs` table), `s3` (an S3-compatible bucket), `local` (`blob_dir`), or `auto`:
    #: `postgres` with a database, else `local`.
    blob_backend: Literal["auto", "local", "postgres", "s3"] = "auto"
    #: Directory of the local blob store; relative paths are relative to the working directory.
    blob_dir: str = "var/blobs"
    #: Declares `blob_dir` a mount every replica shares (NFS and the like): only then may
    #: replicas with a database keep blobs in a local directory.
    blob_dir_shared: bool = False
    #: Blobs no row references are deleted once this long has passed since they were written.
    blob_gc_grace_s: float = Field(default=3600.0, gt=0)
    #: Per-user bound on input bytes written to the blob store, in KiB (`rate` KiB per
    #: `period_s`, `burst` KiB at once); null: none.
    blob_write_limit: RateLimit | None = Field(
        default_factory=lambda: RateLimit(rate=1024 * 1024, period_s=3600, burst=256 * 1024)
    )
    #: The s3 backend: bucket, key prefix, endpoint (unset: AWS), region and credentials
    #: (unset: the usual AWS environment variables).
    s3_bucket: str | None = None
    s3_prefix: str = ""
    s3_endpoint: str | None = None
    s3_region: str = "us-east-1"
    s3_access_key_id: SecretStr | None = None
    s3_secret_access_key: SecretStr | None = None
    #: Bound on one object store request, and on opening its connection.
    s3_timeout_s: float = Field(default=10.0, gt=0, le=300)
    s3_connect_timeout_s: float = Field(default=2.0, gt=0, le=60)
    #: Result JSON up to this many bytes is kept in the row; larger JSON goes to the blob store.
    inline_result_max_bytes: int = Field(default=64 * 1024, ge=0, le=1024 * 1024)
    #: How often expired cache entries and finished jobs past retention are deleted.
    cleanup_interval_s: float = Field(default=300.0, gt=0)
    #: Rows deleted per statement by the cleanup (small batches: short locks, no bloat bursts).
    cleanup_batch_size: int = Field(default=500, ge=1, le=10_000)
    #: How long a succeeded job (and its result) is kept after it finished.
    job_retention_s: float = Field(default=7 * 86400.0, gt=0)
    #: How long a failed job, a dead letter, is kept after it failed (with its error history,
    #: for operators to inspect and re-drive): longer than a succeeded one by default.
    failed_job_retention_s: float = Field(default=30 * 86400.0, gt=0)
    #: How long a cancelled job is kept after it was cancelled.
    cancelled_job_retention_s: float = Field(default=7 * 86400.0, gt=0)
    #: The embedded store (no database): bytes of result-cache rows it keeps in memory, least
    #: recently used evicted first; a row larger than this is served but not kept. 0 keeps none.
    embedded_cache_max_bytes: int = Field(default=64 * 1024 * 1024, ge=0)
    #: The embedded store: raw usage-ledger rows it keeps in memory; older rows are folded into
    #: their daily totals at once (which GetUsage still counts). The daily totals are bounded
    #: by the same count.
    embedded_usage_max_rows: int = Field(default=10_000, ge=1)

    @model_validator(mode="after")
    def _pool_sizes(self) -> StoreSettings:
        if self.pool_min_size > self.pool_max_size:
            raise ValueError("store.pool_min_size must not exceed store.pool_max_size")
        return self

    @model_validator(mode="after")
    def _blob_backend_fits(self) -> StoreSettings:
        backend = self.resolved_blob_backend
        if backend == "postgres" and self.database_url is None:
            raise ValueError(
                "VIEWBAIT_STORE__BLOB_BACKEND=postgres needs VIEWBAIT_STORE__DATABASE_URL"
            )
        if backend == "s3" and not self.s3_bucket:
            raise ValueError("VIEWBAIT_STORE__BLOB_BACKEND=s3 needs VIEWBAIT_STORE__S3_BUCKET")
        if backend == "local" and self.database_url is not None and not self.blob_dir_shared:
            raise ValueError(
                f"blobs in the local directory {self.blob_dir!r} are invisible to the other "
                "replicas sharing VIEWBAIT_STORE__DATABASE_URL: unset VIEWBAIT_STORE__BLOB_DIR "
                "(blobs then go to PostgreSQL), set VIEWBAIT_STORE__BLOB_BACKEND=s3, or set "
                "VIEWBAIT_STORE__BLOB_DIR_SHARED=true if every replica mounts that directory"
            )
        return self

    @property
    def resolved_blob_backend(self) -> str:
        """The blob backend in use: `auto` resolved (a database means `postgres`, unless a blob
        directory was set explicitly, which then has to be declared shared)."""
        if self.blob_backend != "auto":
            return self.blob_backend
        if self.database_url is None or "blob_dir" in self.model_fields_set:
            return "local"
        return "postgres"


class ExecutionSettings(BaseModel):
    """How an operation request is answered: result cache, coalescing, long-poll and leases
    (see `gateway.execution`)."""

    #: Longest a unary RPC waits for its result (bounded by the caller's deadline) before it
    #: answers a pending job handle; the work goes on, and the same request asked again joins it.
    long_poll_s: float = Field(default=25.0, gt=0, le=600)
    #: Lease on a running execution. Its runner extends it every third of this; when a replica
    #: dies, another one takes the execution over once the lease has lapsed.
    lease_s: float = Field(default=30.0, gt=0, le=3600)
    #: Attempts an execution gets (a takeover after a lapsed lease is an attempt).
    max_attempts: int = Field(default=3, ge=1, le=10)
    #: Longest one run of an operation may take, its Gemini attempts and their retries
    #: included: the deadline of work no caller's deadline bounds (job attempts, shared work a
    #: caller may leave, runs for callers that set no deadline). A run cut short fails
    #: DEADLINE_EXCEEDED, which a job retries like any retryable failure.
    run_timeout_s: float = Field(default=600.0, gt=0, le=86400)
    #: With the store unavailable, run cacheable operations anyway, uncached and coalesced only
    #: within this replica (true), or answer UNAVAILABLE (false). Requests with an idempotency
    #: key always answer UNAVAILABLE then: without the store a retry could run twice.
    run_uncached_on_store_failure: bool = True
    #: In-process copy of recently used cache entries in front of the store (same keys, same
    #: expiry), so a hit costs no database round trip; 0 turns it off.
    hot_cache_entries: int = Field(default=10_000, ge=0)
    #: Bound on the hot copy's size (result JSON and images), in bytes.
    hot_cache_max_bytes: int = Field(default=64 * 1024 * 1024, ge=0)
    #: How often each replica re-queues (or fails) executions whose lease lapsed, and reports
    #: the store's health.
    rescue_interval_s: float = Field(default=10.0, gt=0)


class JobSettings(BaseModel):
    """Background jobs (JobService): the worker pool every replica runs (`gateway.jobs`)."""

    #: Jobs this replica runs at once; 0 runs none here (other replicas take them).
    workers: int = Field(default=8, ge=0, le=1000)
    #: Most jobs claimed in one store round trip.
    claim_batch: int = Field(default=8, ge=1, le=1000)
    #: How often idle workers look for due jobs: the fallback, as a job queued through any
    #: replica sharing the store wakes them at once (delayed retries are found by this poll).
    poll_interval_s: float = Field(default=1.0, gt=0, le=60)
    #: Backoff before a failed attempt is retried: full jitter from this, doubling per attempt,
    #: never earlier than an upstream's own retry delay.
    retry_initial_s: float = Field(default=2.0, gt=0, le=3600)
    #: Ceiling of that backoff.
    retry_max_s: float = Field(default=300.0, gt=0, le=86400)
    #: Most jobs of one user running at once, by the user's tier (counted across all replicas,
    #: enforced when jobs are claimed; a user's further jobs wait queued). A tier left out is
    #: uncapped. A shared execution (a global-scope request) counts against the user who
    #: started it only: see `gateway.jobs.pool`.
    running_caps: dict[Tier, int] = Field(
        default_factory=lambda: {Tier.FREE: 1, Tier.STARTER: 2, Tier.ADVANCED: 4, Tier.PRO: 8}
    )

    @field_validator("running_caps")
    @classmethod
    def _caps_positive(cls, caps: dict[Tier, int]) -> dict[Tier, int]:
        for tier, cap in caps.items():
            if cap < 1:
                raise ValueError(f"the running cap of tier {tier.value} must be at least 1")
        return caps


class BatchSettings(BaseModel):
    """Gemini Batch API delivery of queued jobs (`SubmitJobRequest.delivery` BATCH; see
    `gateway.jobs.batcher`): how jobs are gathered into batches, how often batches are polled,
    and what their answers cost."""

    #: A batch is sent once its oldest job has waited this long to be gathered (or at once
    #: when `max_batch_size` jobs of one model wait).
    gather_window_s: float = Field(default=60.0, ge=0, le=86400)
    #: Most jobs (inline requests) in one batch.
    max_batch_size: int = Field(default=500, ge=1, le=10_000)
    #: Most bytes of inline requests in one batch (Gemini accepts up to 20 MB inline); a job
    #: too large to fit alone runs interactively instead.
    max_batch_bytes: int = Field(default=19 * 1024 * 1024, ge=1024, le=20 * 1024 * 1024)
    #: How often a submitted batch is asked for its state.
    poll_interval_s: float = Field(default=30.0, gt=0, le=3600)
    #: What an answer costs through the Batch API, as a fraction of its interactive price (the
    #: price table's); Gemini bills batches at half.
    price_factor: float = Field(default=0.5, ge=0, le=1)


#: Largest budget, in USD: amounts are kept in integer nano-USD, exact in the Redis script's Lua
#: doubles up to 2**53 (about $9 million), with room for the reservations in flight on top.
MAX_BUDGET_USD = 1_000_000.0


class PeriodBudgets(BaseModel):
    """Spend allowed per UTC calendar period, in USD; None: the period is not limited."""

    model_config = ConfigDict(frozen=True)

    #: Per UTC day (00:00 to 24:00 UTC).
    day_usd: float | None = Field(default=None, ge=0, le=MAX_BUDGET_USD)
    #: Per UTC calendar month.
    month_usd: float | None = Field(default=None, ge=0, le=MAX_BUDGET_USD)

    def over(self, base: PeriodBudgets) -> PeriodBudgets:
        """These budgets where they are set (null included: it lifts the period), `base`'s
        elsewhere: how a user's override applies over the tier's budgets."""
        values = {name: getattr(self, name) for name in self.model_fields_set}
        return base.model_copy(update=values)


class CostEstimate(BaseModel):
    """How an upstream attempt's cost is estimated before it is made, at the price table's rates
    (`gateway.budgets.estimate`): the estimate is what a budget reserves until the attempt's
    `usageMetadata` says what it cost."""

    model_config = ConfigDict(frozen=True)

    #: Characters of text (prompt and system instruction) per input token.
    chars_per_token: int = Field(default=4, ge=1, le=16)
    #: Input tokens per inline image (Gemini counts 258 for an image up to 384 px a side).
    image_input_tokens: int = Field(default=258, ge=0)
    #: Input tokens per file part (a video by URL): ten minutes of video and audio at 290
    #: tokens a second. Longer videos cost more than their estimate.
    file_input_tokens: int = Field(default=174_000, ge=0)
    #: Text output and thinking tokens of a call that sets no `max_output_tokens` (one that sets
    #: it is estimated at it).
    output_tokens: int = Field(default=8192, ge=0)
    #: Output tokens per generated image (Gemini counts 1290 for an image up to 1024 px).
    image_output_tokens: int = Field(default=1290, ge=0)


class JobRefusal(StrEnum):
    """What happens to a job whose upstream attempt a spend budget refuses."""

    #: It fails for good with BUDGET_EXCEEDED (the default): a clear error now, and no backlog
    #: released all at once when the period resets.
    FAIL = "fail"
    #: It is queued again for the moment the refusing budget's period resets, the attempt not
    #: counted.
    WAIT = "wait"


class BudgetSettings(BaseModel):
    """Spend budgets in USD (see `gateway.budgets`): per user per UTC day and month, by tier with
    per-user overrides, and a fleet-wide daily cap per model. Nothing is budgeted unless set."""

    #: Each tier's budgets per user; a tier left out has none.
    tiers: dict[Tier, PeriodBudgets] = Field(default_factory=dict)
    #: Per-user overrides over the tier's budgets, by user id: the periods an entry names
    #: (null lifts one) replace the tier's, the others stay the tier's.
    users: dict[str, PeriodBudgets] = Field(default_factory=dict)
    #: Fleet-wide spend per UTC day by model name, in USD: the kill switch against runaway cost.
    models: dict[str, float] = Field(default_factory=dict)
    #: A job refused by a budget fails (`fail`) or waits for the period to reset (`wait`).
    job_refusal: JobRefusal = JobRefusal.FAIL
    #: How an attempt's cost is estimated before it is made.
    estimate: CostEstimate = Field(default_factory=CostEstimate)

    @field_validator("models")
    @classmethod
    def _caps_in_range(cls, caps: dict[str, float]) -> dict[str, float]:
        for model, cap in caps.items():
            if not 0 <= cap <= MAX_BUDGET_USD:
                raise ValueError(
                    f"the daily cap of {model} must be between 0 and {MAX_BUDGET_USD:g}"
                )
        return caps

    @property
    def enabled(self) -> bool:
        """Whether any budget is configured."""
        return bool(self.tiers or self.users or self.models)

    def for_user(self, user_id: str, tier: Tier) -> PeriodBudgets:
        """A user's budgets: the tier's, with the user's override over them."""
        base = self.tiers.get(tier) or _NO_BUDGETS
        override = self.users.get(user_id)
        return base if override is None else override.over(base)


_NO_BUDGETS = PeriodBudgets()


class UsageSettings(BaseModel):
    """The usage ledger (`gateway.store.ledger`): how records are written, rolled up and kept."""

    #: Records are written in the background, this many rows (at most) in one multi-row insert
    #: (a row of folded savings records counts once); a full batch is written at once, without
    #: waiting for the interval.
    batch_size: int = Field(default=500, ge=1, le=10_000)
    #: Longest a record waits in memory before it is written: what a crash can lose (a clean
    #: shutdown writes everything first).
    flush_interval_s: float = Field(default=1.0, gt=0, le=60)
    #: Rows held while the store cannot take them (retried every interval; a row of folded
    #: savings records counts once); beyond this the oldest are dropped, logged at ERROR and
    #: their records counted.
    max_pending: int = Field(default=100_000, ge=1)
    #: Days the ledger keeps one row per upstream call, and per second's cache hits and joins
    #: (of a user, operation, model and outcome); older rows are
    #: rolled into daily totals (per day, user, operation and model) by the maintenance loop.
    raw_retention_days: int = Field(default=35, ge=1, le=3650)
    #: Days the daily totals are kept.
    daily_retention_days: int = Field(default=800, ge=1, le=36500)

    @model_validator(mode="after")
    def _daily_outlive_raw(self) -> UsageSettings:
        if self.daily_retention_days < self.raw_retention_days:
            raise ValueError(
                "usage.daily_retention_days must be at least usage.raw_retention_days: the "
                "daily totals replace the raw rows they are rolled up from"
            )
        return self


class MetricsSettings(BaseModel):
    """The Prometheus `/metrics` endpoint each process serves (see `gateway.telemetry.metrics`)."""

    #: Address of the metrics HTTP listener.
    host: str = "127.0.0.1"
    #: Its port; None: no metrics (nothing is measured); 0 picks a free port (tests; the chosen
    #: one is written to `server.ready_file` as `metrics_port`).
    port: int | None = Field(default=None, ge=0, le=65535)
    #: How often the gauges read from shared state (the job queue's depth in the store, the
    #: fleet-wide budget caps) are refreshed; the other metrics are live.
    refresh_interval_s: float = Field(default=15.0, gt=0, le=3600)


class Settings(BaseSettings):
    """The gateway's whole configuration."""

    model_config = SettingsConfigDict(
        env_prefix="VIEWBAIT_",
        env_nested_delimiter="__",
        extra="forbid",
        # Validation errors would otherwise quote the raw input, secrets included.
        hide_input_in_errors=True,
    )

    server: ServerSettings = Field(default_factory=ServerSettings)
    gemini: GeminiSettings = Field(default_factory=GeminiSettings)
    emulator: EmulatorSettings = Field(default_factory=EmulatorSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    #: Bounds on request inputs, shared by every operation.
    bounds: InputBounds = Field(default_factory=InputBounds)
    #: Operation name -> policy.
    policies: dict[str, RoutePolicy] = Field(default_factory=_default_policies)
    #: Per-user rate limits on the JobService reads, by tier.
    read_limits: dict[Tier, ReadLimits] = Field(default_factory=_default_read_limits)
    #: Caps on RPCs in flight: per replica, per user, and per user's open streams.
    concurrency: ConcurrencySettings = Field(default_factory=ConcurrencySettings)
    #: Rate-limit backend and fault handling (the limits themselves are in `policies`).
    limiter: LimiterSettings = Field(default_factory=LimiterSettings)
    #: Result cache, jobs and usage ledger (PostgreSQL or embedded), and the blob store.
    store: StoreSettings = Field(default_factory=StoreSettings)
    #: Result cache, coalescing and long-poll behaviour of operation requests.
    execution: ExecutionSettings = Field(default_factory=ExecutionSettings)
    #: Background job workers.
    jobs: JobSettings = Field(default_factory=JobSettings)
    #: Gemini Batch API delivery of jobs submitted with `delivery` BATCH.
    batch: BatchSettings = Field(default_factory=BatchSettings)
    #: Spend budgets per user and period, and fleet-wide daily caps per model.
    budgets: BudgetSettings = Field(default_factory=BudgetSettings)
    #: The usage ledger: batched background writes, roll-up into daily totals, retention.
    usage: UsageSettings = Field(default_factory=UsageSettings)
    #: Prometheus metrics on their own HTTP port (off unless a port is set).
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    #: TLS (and mutual TLS) on the gRPC listener, off unless a certificate is set.
    tls: TlsSettings = Field(default_factory=TlsSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment and the TOML file through one strict source (unknown names refused,
        # partial tables merged over the defaults) instead of pydantic-settings' lenient ones.
        return init_settings, operator_source(settings_cls)

    @model_validator(mode="after")
    def _blob_write_limit_fits(self) -> Settings:
        # A request's images are charged at once: a burst below the largest allowed request
        # would refuse that request forever.
        limit = self.store.blob_write_limit
        largest_kib = -(-self.bounds.max_total_image_bytes // 1024)
        if limit is not None and limit.burst < largest_kib:
            raise ValueError(
                f"store.blob_write_limit.burst ({limit.burst} KiB) is below the largest request "
                f"bounds.max_total_image_bytes allows ({largest_kib} KiB): raise the burst"
            )
        return self

    def policy(self, operation: str) -> RoutePolicy:
        """The policy of one operation; a missing entry is a configuration bug."""
        try:
            return self.policies[operation]
        except KeyError:
            raise KeyError(f"no policy configured for operation {operation!r}") from None

    def model_name(self, policy: RoutePolicy) -> str:
        """The configured Gemini model name a policy's model kind resolves to."""
        return self.gemini.image_model if policy.model == "image" else self.gemini.text_model

    def model_identity(self, policy: RoutePolicy) -> str:
        """The model as results name it (cache keys, stored results, response metadata): the
        configured model name, marked when the emulator answers instead of Gemini."""
        name = self.model_name(policy)
        return EMULATOR_MODEL_PREFIX + name if self.gemini.backend is Backend.EMULATOR else name


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment and optional TOML file, with keyword overrides on top.

    Raises `ConfigError` naming every problem (unknown names, invalid values) by the variable
    that fixes it.
    """
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError([_describe(error) for error in exc.errors()]) from None


def _describe(error: Any) -> str:
    """One validation error as an operator reads it: the variable, then what is wrong."""
    loc = [str(part) for part in error["loc"]]
    message = str(error["msg"]).removeprefix("Value error, ")
    if not loc:
        return message
    return f"{env_name('.'.join(loc))}: {message}"


def is_loopback(host: str) -> bool:
    """Whether a listen address is reachable from this host only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_local_mode(settings: Settings) -> bool:
    """Pure local mode: a loopback listener, no database, no Redis (one developer's machine)."""
    return (
        is_loopback(settings.server.host)
        and settings.store.database_url is None
        and settings.limiter.redis_url is None
    )


def gemini_backend(settings: Settings) -> Backend | None:
    """What answers model calls: the configured backend, else Gemini with a key, the emulator
    in local mode, and None (refused) otherwise."""
    gemini = settings.gemini
    if gemini.backend is not None:
        return gemini.backend
    if gemini.api_key is not None:
        return Backend.GEMINI
    return Backend.EMULATOR if is_local_mode(settings) else None


def auth_configured(settings: Settings) -> bool:
    """Whether any way for callers to authenticate is configured."""
    auth = settings.auth
    return bool(
        auth.service_token
        or auth.service_tokens
        or auth.jwt_secret
        or auth.jwks_file
        or auth.jwks_url
        or auth.allow_anonymous
    )


def deployment_problems(settings: Settings, *, listen: bool = True) -> list[str]:
    """Why these settings must not serve (`listen`) or work (without the listener), one line
    each naming the setting to change; empty when they may."""
    problems: list[str] = []
    gemini = settings.gemini
    backend = gemini_backend(settings)
    key, base_url = env_name("gemini.api_key"), env_name("gemini.base_url")
    choose = env_name("gemini.backend")
    if backend is None:
        problems.append(
            f"no Gemini API key: set {key} (the offline emulator runs only when asked for, "
            f"{choose}=emulator, or in local mode: loopback listener, no database, no Redis)"
        )
    elif backend is Backend.GEMINI and gemini.api_key is None:
        problems.append(f"{choose}=gemini needs a Gemini API key: set {key}")
    elif backend is Backend.EMULATOR:
        if gemini.api_key is not None:
            problems.append(
                f"{key} is set but the emulator answers ({choose}=emulator or local mode): "
                f"unset one of them"
            )
        if gemini.base_url:
            problems.append(
                f"{base_url} is set but the in-process emulator answers: set {key} too to call "
                f"that server, or unset {base_url}"
            )
    host = settings.server.host
    if settings.auth.allow_anonymous and not is_loopback(host):
        problems.append(
            f"{env_name('auth.allow_anonymous')}=true is for local development and needs a "
            f"loopback listener ({env_name('server.host')} is {host}): unset it"
        )
    local_dev = backend is Backend.EMULATOR and is_loopback(host)
    # Without a listener nobody calls in: there is nothing to authenticate.
    if listen and not auth_configured(settings) and not local_dev:
        problems.append(
            f"no authentication configured: set {env_name('auth.service_token')} (or "
            f"{env_name('auth.service_tokens')}) and/or "
            f"{env_name('auth.jwt_secret')} / {env_name('auth.jwks_file')} / "
            f"{env_name('auth.jwks_url')}"
        )
    if listen and settings.tls.enabled:
        from gateway.tls import tls_problems  # it imports this module

        problems.extend(tls_problems(settings.tls))
    problems.extend(_unsatisfiable_limits(settings))
    from gateway.budgets.checks import budget_problems  # it imports this module

    problems.extend(budget_problems(settings))
    return problems


def _unsatisfiable_limits(settings: Settings) -> list[str]:
    """Upstream limits whose burst is below the Gemini calls one request may need: a run's
    calls are charged together, so such a request would be refused for ever."""
    from gateway.operations import OPERATIONS  # the specs import this module

    problems = []
    for name, policy in settings.policies.items():
        calls = OPERATIONS[name].max_upstream_calls(settings.bounds)
        if calls <= 1:
            continue
        limits = [
            (env_name(f"policies.{name}.limits.{tier.value}.upstream.burst"), rule.upstream)
            for tier, rule in policy.limits.items()
        ]
        model = settings.model_name(policy)
        model_limit = settings.limiter.model_limit(model)
        limits.append((f"the burst of {model} in {env_name('limiter.models')}", model_limit))
        for setting, limit in limits:
            if limit is not None and limit.burst < calls:
                problems.append(
                    f"{setting} is {limit.burst}, below the {calls} Gemini calls one {name} "
                    f"request may make within the input bounds ({env_name('bounds')}): such "
                    f"requests would never pass; raise the burst or lower the bound"
                )
    return problems


def check_deployment(settings: Settings, *, listen: bool = True) -> None:
    """Raises `ConfigError` with `deployment_problems`, if there are any."""
    problems = deployment_problems(settings, listen=listen)
    if problems:
        raise ConfigError(problems)
