"""The `local` failure mode divides each limit by the fleet's live size, not a static setting.

Three replicas (each its own settings and connections) register with a heartbeat in a
redis-server of the test's own; once it is stopped, the fleet as a whole admits about the limit,
not three times it. A replica that never reached Redis falls back to `limiter.replicas`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

import pytest

from gateway.config import RateLimit, Settings, Tier
from gateway.errors import RateLimited
from gateway.limiter import LimiterMode, RateLimiter

if TYPE_CHECKING:
    from tests.fixtures.redis import RedisProcess

#: Far longer than any interval below; reaching it means something hung.
HANG = 10.0
LIMIT = RateLimit(rate=30, period_s=3600, burst=30)


async def _until(condition: Callable[[], bool]) -> None:
    give_up = time.monotonic() + HANG
    while not condition():
        assert time.monotonic() < give_up, "the replicas never saw each other's heartbeats"
        await asyncio.sleep(0.01)


async def _admitted(limiter: RateLimiter, attempts: int) -> int:
    admitted = 0
    for _ in range(attempts):
        try:
            async with asyncio.timeout(HANG):
                await limiter.admit("analyze_video", "fleet-user", Tier.PRO)
        except RateLimited:
            continue
        admitted += 1
    return admitted


@pytest.fixture
async def fleet(
    private_redis: RedisProcess, make_settings: Callable[..., Settings], key_prefix: str
) -> AsyncIterator[list[RateLimiter]]:
    limiters: list[RateLimiter] = []
    try:
        for _ in range(3):
            settings = make_settings(
                key_prefix,
                admission=LIMIT,
                redis_url=private_redis.url,
                breaker_failures=1,
                probe_interval_s=0.05,
                heartbeat_interval_s=0.05,
            )
            limiter = RateLimiter.from_settings(settings)
            await limiter.start()
            limiters.append(limiter)
        yield limiters
    finally:
        for limiter in limiters:
            await limiter.aclose()


async def test_the_outage_fallback_admits_about_the_limit_across_the_fleet(
    private_redis: RedisProcess, fleet: list[RateLimiter]
) -> None:
    await _until(lambda: all(limiter.replicas == 3 for limiter in fleet))
    private_redis.stop()
    admitted = [await _admitted(limiter, LIMIT.burst) for limiter in fleet]
    assert all(limiter.mode is LimiterMode.LOCAL_FALLBACK for limiter in fleet)
    # Each replica enforces a third: the fleet admits the limit, not three times it.
    assert admitted == [LIMIT.burst // 3] * 3
    # The last known count stays in use while Redis is gone.
    assert all(limiter.replicas == 3 for limiter in fleet)


async def test_a_replica_that_leaves_stops_counting(fleet: list[RateLimiter]) -> None:
    await _until(lambda: all(limiter.replicas == 3 for limiter in fleet))
    await fleet[2].aclose()
    await _until(lambda: fleet[0].replicas == 2 and fleet[1].replicas == 2)


async def test_a_replica_that_never_reached_redis_uses_the_setting(
    private_redis: RedisProcess, make_settings: Callable[..., Settings], key_prefix: str
) -> None:
    url = private_redis.url
    private_redis.stop()
    counts: list[int] = []
    for replicas in (1, 3):
        settings = make_settings(key_prefix, admission=LIMIT, redis_url=url, replicas=replicas)
        limiter = RateLimiter.from_settings(settings)
        try:
            await limiter.start()
            assert limiter.mode is LimiterMode.LOCAL_FALLBACK
            assert limiter.replicas == replicas
            counts.append(await _admitted(limiter, LIMIT.burst))
        finally:
            await limiter.aclose()
    assert counts == [LIMIT.burst, LIMIT.burst // 3]
