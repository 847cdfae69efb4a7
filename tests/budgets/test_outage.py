"""Budgets while Redis does not answer follow the limiter's failure mode, on the limiter's own
circuit breaker and live fleet size; what was spent meanwhile reaches Redis once it answers.

Each replica is a `RateLimiter` with its `Budgets` beside it, on a redis-server of the test's
own, paused with SIGSTOP (connections stay open, nothing answers) and resumed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import pytest

from gateway.budgets.enforcement import Budgets
from gateway.config import FailureMode, PeriodBudgets, Tier
from gateway.errors import BudgetExceeded, Unavailable
from gateway.limiter import LimiterMode, RateLimiter

from .conftest import WallClock, at, budget_settings

if TYPE_CHECKING:
    from tests.fixtures.redis import RedisProcess

USD = 1_000_000_000
MODEL = "gemini-3.6-flash"
#: Far longer than any interval below; reaching it means something hung.
HANG_S = 10.0


async def until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    give_up = time.monotonic() + HANG_S
    while not await condition():
        assert time.monotonic() < give_up, f"gave up waiting for {what}"
        await asyncio.sleep(0.02)


class Replica:
    """A limiter and the budgets beside it, as a gateway builds them."""

    def __init__(self, limiter: RateLimiter, budgets: Budgets) -> None:
        self.limiter, self.budgets = limiter, budgets

    async def spend(self, amount: int, user: str = "ann") -> int:
        """Reserves and settles `amount` at a time until refused; returns how many passed."""
        passed = 0
        while True:
            try:
                held = await self.budgets.reserve(user, Tier.PRO, MODEL, amount)
            except BudgetExceeded:
                return passed
            assert held is not None
            await self.budgets.settle(held, amount / USD)
            passed += 1

    async def day_spent(self, user: str = "ann") -> float:
        (day,) = await self.budgets.user_budgets(user, "pro")
        return round(day.spent_usd, 9)


Fleet = Callable[..., Awaitable[list[Replica]]]


@pytest.fixture
async def fleet(private_redis: RedisProcess, key_prefix: str) -> AsyncIterator[Fleet]:
    """`await fleet(n, failure_mode)`: n replicas sharing the test's redis-server, a day budget
    of $3 on the pro tier, the wall clock at noon."""
    started: list[Replica] = []

    async def make(n: int, mode: FailureMode) -> list[Replica]:
        for _ in range(n):
            settings = budget_settings(
                key_prefix,
                tiers={Tier.PRO: PeriodBudgets(day_usd=3.0)},
                limiter={
                    "redis_url": private_redis.url,
                    "failure_mode": mode,
                    "breaker_failures": 1,
                    "command_timeout_s": 0.05,
                    "probe_interval_s": 0.05,
                    "heartbeat_interval_s": 0.05,
                },
            )
            limiter = RateLimiter.from_settings(settings)
            await limiter.start()
            budgets = Budgets.beside(settings, limiter, clock=WallClock(at(2026, 7, 14, 12)))
            started.append(Replica(limiter, budgets))
        return started[-n:]

    try:
        yield make
    finally:
        private_redis.resume()
        for replica in started:
            await replica.budgets.aclose()
            await replica.limiter.aclose()


async def outage(redis: RedisProcess, *replicas: Replica) -> None:
    """Pauses Redis and lets each replica's limiter notice (a PING that times out), so no
    budget call is cut short by the outage: a call that timed out may still be applied by
    Redis once it runs again, which would make the spend below inexact (over, never under)."""
    redis.pause()
    for replica in replicas:
        assert await replica.limiter.probe() is not LimiterMode.SHARED


async def recovered(expected: float, *replicas: Replica) -> None:
    """Waits until every replica's limiter answers on Redis again and Redis holds `expected`
    (each replica sends what Redis missed once it hears from Redis)."""

    async def shared() -> bool:
        return all(r.limiter.mode is LimiterMode.SHARED for r in replicas)

    await until(shared, "the breakers to close")

    async def caught_up() -> bool:
        return [await r.day_spent() for r in replicas] == [expected] * len(replicas)

    await until(caught_up, f"Redis to hold ${expected}")


async def test_local_mode_spends_each_replicas_share_of_what_it_saw_left(
    fleet: Fleet, private_redis: RedisProcess
) -> None:
    a, b, c = await fleet(3, FailureMode.LOCAL)

    async def three() -> bool:
        return all(r.limiter.replicas == 3 for r in (a, b, c))

    await until(three, "the replicas to see each other's heartbeats")
    assert await a.spend(12 * USD // 10) == 2  # $2.40 of $3 spent, seen by a only
    await outage(private_redis, a, b, c)

    # a saw $0.60 left: a third of it is $0.20; b and c never saw the user: a third of $3.
    passed = [await r.spend(USD // 10) for r in (a, b, c)]

    assert passed == [2, 10, 10]
    assert all(r.limiter.mode is LimiterMode.LOCAL_FALLBACK for r in (a, b, c))
    private_redis.resume()
    # What the replicas spent while Redis was away is added to it once it answers again:
    # $2.40 before, $2.20 during the outage. What b and c did not know of is the overspend.
    await recovered(4.6, a, b, c)
    with pytest.raises(BudgetExceeded):
        await b.budgets.reserve("ann", Tier.PRO, MODEL, 1)


async def test_open_mode_allows_and_counts_what_went_unaccounted(
    fleet: Fleet, private_redis: RedisProcess
) -> None:
    (replica,) = await fleet(1, FailureMode.OPEN)
    await outage(private_redis, replica)
    held = await replica.budgets.reserve("ann", Tier.PRO, MODEL, 5 * USD)
    assert held is not None
    await replica.budgets.settle(held, 5.0)
    assert replica.budgets.unaccounted_usd == 5.0
    private_redis.resume()
    await recovered(5.0, replica)
    with pytest.raises(BudgetExceeded):
        await replica.budgets.reserve("ann", Tier.PRO, MODEL, 1)


async def test_closed_mode_refuses_until_redis_answers(
    fleet: Fleet, private_redis: RedisProcess
) -> None:
    (replica,) = await fleet(1, FailureMode.CLOSED)
    await outage(private_redis, replica)
    with pytest.raises(Unavailable) as refused:
        await replica.budgets.reserve("ann", Tier.PRO, MODEL, USD)
    assert "closed" in refused.value.message
    private_redis.resume()

    async def answers() -> bool:
        try:
            await replica.budgets.reserve("ann", Tier.PRO, MODEL, USD)
        except Unavailable:
            return False
        return True

    await until(answers, "Redis to decide again")


async def test_a_settlement_redis_missed_is_sent_once_it_answers(
    fleet: Fleet, private_redis: RedisProcess
) -> None:
    (replica,) = await fleet(1, FailureMode.LOCAL)
    held: Any = await replica.budgets.reserve("ann", Tier.PRO, MODEL, USD)
    await outage(private_redis, replica)
    # Reserved at $1 in Redis; the attempt cost $0.25, settled while Redis is away.
    await replica.budgets.settle(held, 0.25)
    private_redis.resume()
    await recovered(0.25, replica)
