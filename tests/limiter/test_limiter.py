"""`RateLimiter`: the policy table turned into checks, and denials as callers see them, embedded
and shared alike."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

import pytest
from redis.asyncio import Redis

from gateway.config import RateLimit, RouteLimits, Settings, Tier
from gateway.errors import RateLimited
from gateway.limiter import LimiterMode, RateLimiter
from gateway.limiter import limiter as limiter_module

if TYPE_CHECKING:
    from tests.limiter.conftest import Clock

HOUR = 3600.0
TWO_PER_HOUR = RateLimit(rate=2, period_s=HOUR, burst=2)

Factory = Callable[[Settings], RateLimiter]


@pytest.fixture(params=["embedded", "shared"])
async def make_limiter(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[Factory]:
    """Builds limiters of one kind (embedded native, or shared over the test Redis)."""
    built: list[RateLimiter] = []

    def make(settings: Settings) -> RateLimiter:
        redis = Redis.from_url(redis_url) if request.param == "shared" else None
        limiter = RateLimiter(settings, redis=redis)
        built.append(limiter)
        return limiter

    try:
        yield make
    finally:
        for limiter in built:
            await limiter.aclose()


async def test_a_denial_names_the_limit_and_when_to_come_back(
    make_limiter: Factory, make_settings: Callable[..., Settings], key_prefix: str
) -> None:
    limiter = make_limiter(make_settings(key_prefix, admission=TWO_PER_HOUR))
    assert limiter.mode in (LimiterMode.EMBEDDED, LimiterMode.SHARED)
    for _ in range(2):
        assert await limiter.admit("analyze_video", "u1", Tier.PRO) is not None
    with pytest.raises(RateLimited) as denied:
        await limiter.admit("analyze_video", "u1", Tier.PRO)
    error = denied.value
    assert "request limit of route 'youtube-analyze' for the pro tier" in error.message
    assert "2 per 3600 s (burst 2)" in error.message
    assert "retry in " in error.message
    # One request every 1800 s: the next one is due half an hour after the burst.
    assert error.retry_after_s == pytest.approx(1800, abs=1)
    assert error.metadata["limit"] == "admission"
    assert int(error.metadata["retry_after_ms"]) == pytest.approx(1_800_000, abs=1000)


async def test_limits_are_per_user_and_per_route(
    make_limiter: Factory, make_settings: Callable[..., Settings], key_prefix: str
) -> None:
    limiter = make_limiter(make_settings(key_prefix, admission=TWO_PER_HOUR))
    for _ in range(2):
        await limiter.admit("analyze_video", "u1", Tier.PRO)
    # Another user on the same route, and the same user on another route, start fresh.
    for _ in range(2):
        await limiter.admit("analyze_video", "u2", Tier.PRO)
        await limiter.admit("compute_attention_heatmap", "u1", Tier.PRO)
    with pytest.raises(RateLimited):
        await limiter.admit("compute_attention_heatmap", "u1", Tier.PRO)


async def test_user_ids_cannot_break_out_of_their_keys(
    make_limiter: Factory, make_settings: Callable[..., Settings], key_prefix: str
) -> None:
    limiter = make_limiter(make_settings(key_prefix, admission=TWO_PER_HOUR))
    tricky = ["a}:a:youtube-analyze", "a", "a%7D", "{a}", "a:b"]
    for user in tricky:
        for _ in range(2):
            await limiter.admit("analyze_video", user, Tier.PRO)


def _per_tier(limits: dict[Tier, RouteLimits], key_prefix: str) -> Settings:
    """Settings whose every route has `limits` (tiers not in it unlimited)."""
    defaults = Settings()
    policies = {
        name: policy.model_copy(update={"limits": limits})
        for name, policy in defaults.policies.items()
    }
    return Settings(
        policies=policies, limiter=defaults.limiter.model_copy(update={"key_prefix": key_prefix})
    )


async def test_a_tier_without_an_entry_is_not_limited(
    make_limiter: Factory, key_prefix: str
) -> None:
    only_free = {Tier.FREE: RouteLimits(admission=RateLimit(rate=1, period_s=HOUR, burst=1))}
    limiter = make_limiter(_per_tier(only_free, key_prefix))
    for _ in range(5):
        assert await limiter.admit("check_channel_consistency", "u1", Tier.PRO) is None
    await limiter.admit("check_channel_consistency", "u1", Tier.FREE)
    with pytest.raises(RateLimited):
        await limiter.admit("check_channel_consistency", "u1", Tier.FREE)


async def _tier_change_is_held_to_the_new_tiers_limit(limiter: RateLimiter) -> None:
    await limiter.admit("analyze_video", "u1", Tier.FREE)
    with pytest.raises(RateLimited, match="for the free tier"):
        await limiter.admit("analyze_video", "u1", Tier.FREE)
    # Upgraded: the same key (the user's, on the route), an hour in debt, so the pro tier's
    # burst of 70 at one a minute leaves 10.
    for _ in range(10):
        await limiter.admit("analyze_video", "u1", Tier.PRO)
    with pytest.raises(RateLimited, match="for the pro tier"):
        await limiter.admit("analyze_video", "u1", Tier.PRO)
    with pytest.raises(RateLimited, match="for the free tier"):
        await limiter.admit("analyze_video", "u1", Tier.FREE)
    # Another user and another route are their own keys still.
    await limiter.admit("analyze_video", "u2", Tier.FREE)
    await limiter.admit("suggest_thumbnail_concepts", "u1", Tier.FREE)


_TIER_CHANGE = {
    Tier.FREE: RouteLimits(admission=RateLimit(rate=1, period_s=HOUR, burst=1)),
    Tier.PRO: RouteLimits(admission=RateLimit(rate=60, period_s=HOUR, burst=70)),
}


async def test_a_user_whose_tier_changes_is_held_to_the_new_tiers_limit(
    make_limiter: Factory, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Admission checks are remembered per (operation, user, tier), a few at most here, so the
    # limiter forgets and remembers again along the way. On the limiter's own clock (Redis
    # TIME when shared: the remembered script call is the one sent then).
    monkeypatch.setattr(limiter_module, "KNOWN_ADMISSIONS", 2)
    limiter = make_limiter(_per_tier(_TIER_CHANGE, key_prefix))
    await _tier_change_is_held_to_the_new_tiers_limit(limiter)


@pytest.mark.parametrize("origin_s", [1, 700], ids=lambda s: f"origin={s}s")
@pytest.mark.parametrize("shared", [False, True], ids=["embedded", "shared"])
async def test_a_tier_change_holds_from_the_first_second_after_boot(
    make_clock: Callable[[int], Clock],
    key_prefix: str,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    origin_s: int,
    shared: bool,
) -> None:
    """The same answers with the clock at 1 s and 700 s, where the hour of debt is longer than
    the clock's reading."""
    monkeypatch.setattr(limiter_module, "KNOWN_ADMISSIONS", 2)
    limiter = RateLimiter(
        _per_tier(_TIER_CHANGE, key_prefix),
        redis=Redis.from_url(redis_url) if shared else None,
        clock=make_clock(origin_s * 1_000_000_000),
    )
    try:
        await _tier_change_is_held_to_the_new_tiers_limit(limiter)
    finally:
        await limiter.aclose()


async def _model_limit_is_shared_and_a_denial_charges_no_user(limiter: RateLimiter) -> None:
    await limiter.check_upstream("generate_thumbnail", "alice", Tier.FREE, "gemini-test")
    await limiter.check_upstream("generate_thumbnail", "alice", Tier.FREE, "gemini-test")
    with pytest.raises(RateLimited, match="Gemini-call limit of route 'generate'"):
        await limiter.check_upstream("generate_thumbnail", "alice", Tier.FREE, "gemini-test")
    await limiter.check_upstream("generate_thumbnail", "bob", Tier.FREE, "gemini-test")
    with pytest.raises(RateLimited, match="fleet-wide limit on calls to gemini-test") as denied:
        await limiter.check_upstream("generate_thumbnail", "bob", Tier.FREE, "gemini-test")
    assert denied.value.metadata["limit"] == "model"
    # A model without a configured limit is only bound by the users' own limits.
    verdict = await limiter.check_upstream("generate_thumbnail", "carol", Tier.FREE, "other")
    assert verdict is not None and verdict.remaining == 1


def _model_limit_settings(make_settings: Callable[..., Settings], key_prefix: str) -> Settings:
    return make_settings(
        key_prefix,
        upstream=TWO_PER_HOUR,
        models={"gemini-test": RateLimit(rate=3, period_s=HOUR, burst=3)},
    )


async def test_the_model_limit_is_shared_and_a_denial_charges_no_user(
    make_limiter: Factory, make_settings: Callable[..., Settings], key_prefix: str
) -> None:
    # On the limiter's own clock (CLOCK_MONOTONIC when embedded): the answers may not depend on
    # how long the machine has been up.
    limiter = make_limiter(_model_limit_settings(make_settings, key_prefix))
    await _model_limit_is_shared_and_a_denial_charges_no_user(limiter)


@pytest.mark.parametrize("origin_s", [1, 700], ids=lambda s: f"origin={s}s")
@pytest.mark.parametrize("shared", [False, True], ids=["embedded", "shared"])
async def test_hour_long_limits_hold_from_the_first_second_after_boot(
    make_settings: Callable[..., Settings],
    make_clock: Callable[[int], Clock],
    key_prefix: str,
    redis_url: str,
    origin_s: int,
    shared: bool,
) -> None:
    """The same denials and `remaining` with the clock at 1 s and 700 s (a monotonic clock on a
    freshly booted machine), where the hour-long windows are longer than the clock's reading."""
    redis = Redis.from_url(redis_url) if shared else None
    limiter = RateLimiter(
        _model_limit_settings(make_settings, key_prefix),
        redis=redis,
        clock=make_clock(origin_s * 1_000_000_000),
    )
    try:
        await _model_limit_is_shared_and_a_denial_charges_no_user(limiter)
    finally:
        await limiter.aclose()
