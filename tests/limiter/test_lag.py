"""A burst is not an outage: a stalled event loop must not open the breaker or loosen limits.

The loop is stalled on purpose (a task that blocks it with `time.sleep`) while a herd of
requests is out on a healthy Redis: the replies arrive during the stall and are read late. The
limits must stay exact (admitted == the limit) and the mode must stay `shared`. True outages are
still detected quickly (`test_faults.py`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from gateway.config import RateLimit, Settings, Tier
from gateway.errors import RateLimited
from gateway.limiter import LimiterMode, RateLimiter
from gateway.limiter.lag import LoopWatch

LIMIT = RateLimit(rate=50, period_s=3600, burst=50)
REPLICAS = 3
REQUESTS = 900
WAVES = 3


def block_the_loop(seconds: float) -> None:
    """Stalls the running event loop on purpose (what a CPU-bound burst does to it)."""
    time.sleep(seconds)


async def test_a_stalled_loop_under_a_herd_keeps_limits_exact_and_shared(
    redis_url: str, make_settings: Callable[..., Settings], key_prefix: str
) -> None:
    changes: list[LimiterMode] = []
    limiters: list[RateLimiter] = []
    try:
        for _ in range(REPLICAS):
            # Each replica its own settings and connections; one failure would open a breaker.
            settings = make_settings(
                key_prefix,
                admission=LIMIT,
                redis_url=redis_url,
                command_timeout_s=0.1,
                breaker_failures=1,
            )
            limiter = RateLimiter.from_settings(settings)
            limiter.add_listener(changes.append)
            await limiter.start()
            limiters.append(limiter)

        async def one(index: int) -> bool:
            try:
                await limiters[index % REPLICAS].admit("analyze_video", "herd", Tier.PRO)
            except RateLimited:
                return False
            return True

        herd: list[asyncio.Future[bool]] = []
        for wave in range(WAVES):
            herd += [asyncio.ensure_future(one(i)) for i in range(REQUESTS // WAVES)]
            # Let the wave send its calls (and Redis answer them), then block the loop on
            # purpose: the replies wait in the sockets past every deadline.
            for _ in range(wave + 1):
                await asyncio.sleep(0)
            block_the_loop(0.3)
        admitted = sum(await asyncio.gather(*herd))
        assert admitted == LIMIT.burst
        assert changes == []
        assert all(limiter.mode is LimiterMode.SHARED for limiter in limiters)
    finally:
        for limiter in limiters:
            await limiter.aclose()


async def test_the_watch_counts_a_stall_and_nothing_while_released() -> None:
    loop = asyncio.get_running_loop()
    watch = LoopWatch()
    watch.hold()
    await asyncio.sleep(0.02)
    block_the_loop(0.2)
    assert watch.stalled(loop.time()) >= 0.15
    watch.release()
    stalled = watch.stalled(loop.time())
    block_the_loop(0.1)
    assert watch.stalled(loop.time()) == stalled
