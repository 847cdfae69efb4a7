"""Fixtures for the limiter tests: a controlled clock and limiter settings (the Redis servers,
key prefixes and clients come from the shared plugin tests/fixtures/redis.py).

- `clock`: a `Clock`, integer nanoseconds that only move when a test says so; `make_clock` builds
  one starting at a given origin (results may not depend on it: see the conformance tests).
- `make_settings`: `limiter_settings`, Settings with the same limits on every route and tier.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from gateway.config import LimiterSettings, RateLimit, RouteLimits, Settings, Tier

S = 1_000_000_000


class Clock:
    """A controlled clock in integer nanoseconds (whole microseconds, as Redis counts)."""

    def __init__(self, start_ns: int = 1_700_000_000 * S) -> None:
        self.now_ns = start_ns

    def __call__(self) -> int:
        return self.now_ns

    def advance(self, ns: int) -> None:
        """Moves time forward by `ns` nanoseconds."""
        self.now_ns += ns


@pytest.fixture
def clock() -> Clock:
    """A controlled clock (not moving unless advanced)."""
    return Clock()


@pytest.fixture
def make_clock() -> Callable[[int], Clock]:
    """`Clock(start_ns)`, for tests that run at several clock origins."""
    return Clock


def limiter_settings(
    prefix: str,
    *,
    admission: RateLimit | None = None,
    upstream: RateLimit | None = None,
    models: dict[str, RateLimit] | None = None,
    **limiter: object,
) -> Settings:
    """Settings whose every route and tier has these limits (None: unlimited), every model
    `models[name]` (unlisted models unlimited), and these `LimiterSettings` fields."""
    defaults = Settings()
    limits = {tier: RouteLimits(admission=admission, upstream=upstream) for tier in Tier}
    policies = {
        name: policy.model_copy(update={"limits": limits})
        for name, policy in defaults.policies.items()
    }
    return Settings(
        policies=policies,
        limiter=LimiterSettings(
            key_prefix=prefix, models=models or {}, model_default=None, **limiter
        ),
    )


@pytest.fixture
def make_settings() -> Callable[..., Settings]:
    """`limiter_settings`, for tests (conftest modules are not imported by tests)."""
    return limiter_settings
