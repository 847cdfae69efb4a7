"""All configuration in one typed settings object.

Values come from, highest priority first: keyword arguments (tests), environment variables
`VIEWBAIT_*` (nested fields joined by `__`, e.g. `VIEWBAIT_GEMINI__TEXT_MODEL`), an optional TOML
file named by `VIEWBAIT_CONFIG_FILE`, then the defaults below. Every knob is documented in the
README with its default.
"""

from __future__ import annotations

import os
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


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


class GeminiSettings(BaseModel):
    """How the gateway reaches Gemini (or the offline emulator)."""

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
    #: Per-attempt timeout when the caller gave no deadline.
    attempt_timeout_s: float = Field(default=120.0, gt=0)
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
    """The built-in offline Gemini emulator (used when no Gemini API key is configured)."""

    host: str = "127.0.0.1"
    port: int = 0  # 0: any free port
    latency_s: float = Field(default=0.0, ge=0)
    latency_jitter_s: float = Field(default=0.0, ge=0)
    api_key: str = "emulator-key"


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


def _default_policies() -> dict[str, RoutePolicy]:
    every = [Tier.FREE, Tier.STARTER, Tier.ADVANCED, Tier.PRO]
    return {
        "generate_thumbnail": RoutePolicy(
            route_id="generate", tiers=every, ttl_s=0, model="image"
        ),
        "analyze_video": RoutePolicy(route_id="youtube-analyze", tiers=[Tier.PRO], ttl_s=7 * 86400),
        "suggest_thumbnail_concepts": RoutePolicy(
            route_id="youtube-suggest-concepts", tiers=[Tier.PRO], ttl_s=86400
        ),
        "compute_attention_heatmap": RoutePolicy(
            route_id="thumbnail-heatmap",
            tiers=[Tier.ADVANCED, Tier.PRO],
            ttl_s=30 * 86400,
            scope=Scope.GLOBAL,
        ),
        "check_channel_consistency": RoutePolicy(
            route_id="channel-consistency", tiers=every, ttl_s=86400
        ),
    }


class Settings(BaseSettings):
    """The gateway's whole configuration."""

    model_config = SettingsConfigDict(
        env_prefix="VIEWBAIT_",
        env_nested_delimiter="__",
        extra="forbid",
    )

    gemini: GeminiSettings = Field(default_factory=GeminiSettings)
    emulator: EmulatorSettings = Field(default_factory=EmulatorSettings)
    #: Operation name -> policy.
    policies: dict[str, RoutePolicy] = Field(default_factory=_default_policies)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = os.environ.get("VIEWBAIT_CONFIG_FILE")
        if path:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    def policy(self, operation: str) -> RoutePolicy:
        """The policy of one operation; a missing entry is a configuration bug."""
        try:
            return self.policies[operation]
        except KeyError:
            raise KeyError(f"no policy configured for operation {operation!r}") from None

    def model_name(self, policy: RoutePolicy) -> str:
        """The configured Gemini model name a policy's model kind resolves to."""
        return self.gemini.image_model if policy.model == "image" else self.gemini.text_model


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment and optional TOML file, with keyword overrides on top."""
    return Settings(**overrides)
