"""Fixtures for the budget tests: a wall clock that moves only when told, settings with budgets,
and `Budgets` on either backend (Redis comes from tests/fixtures/redis.py).

- `WallClock`: integer nanoseconds since the Unix epoch, set to a calendar instant and moved
  by the test; `at(year, month, day, ...)` the nanoseconds of a UTC instant. Budgets read
  periods from it, never from the machine's date.
- `budget_settings(prefix, **budgets)`: `Settings` whose `budgets` are `BudgetSettings(**budgets)`
  and whose limiter uses `prefix` (and `limiter` fields, e.g. `redis_url`).
- `make_budgets(kind, settings, clock)`: `Budgets` on the embedded backend or on the shared test
  Redis; closed after the test.
- `estimate(settings, operation, request, *extra)`: the estimate of one attempt of a (domain)
  request, in nano-USD, as the pipeline reserves it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from redis.asyncio import Redis

from gateway import operations
from gateway.budgets.enforcement import Budgets
from gateway.config import BudgetSettings, LimiterSettings, Settings


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> int:
    """Nanoseconds since the epoch of a UTC instant."""
    instant = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    delta = instant - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000


class WallClock:
    """A wall clock in integer nanoseconds since the epoch that moves only when told."""

    def __init__(self, now_ns: int) -> None:
        self.now_ns = now_ns

    def __call__(self) -> int:
        return self.now_ns

    def set(self, now_ns: int) -> None:
        """Jumps to `now_ns`."""
        self.now_ns = now_ns


def budget_settings(
    prefix: str, *, limiter: dict[str, Any] | None = None, **budgets: Any
) -> Settings:
    """Settings with these budgets, the limiter's keys under `prefix`."""
    return Settings(
        budgets=BudgetSettings(**budgets),
        limiter=LimiterSettings(key_prefix=prefix, **(limiter or {})),
    )


MakeBudgets = Callable[[str, Settings, WallClock], Awaitable[Budgets]]


@pytest.fixture
async def make_budgets(redis_url: str) -> AsyncIterator[MakeBudgets]:
    """`await make_budgets("embedded" | "redis", settings, clock)`."""
    made: list[tuple[Budgets, Redis | None]] = []

    async def make(kind: str, settings: Settings, clock: WallClock) -> Budgets:
        client = Redis.from_url(redis_url) if kind == "redis" else None
        budgets = Budgets(settings, redis=client, clock=clock)
        made.append((budgets, client))
        return budgets

    try:
        yield make
    finally:
        for budgets, client in made:
            await budgets.aclose()
            if client is not None:
                await client.aclose()


def estimate(settings: Settings, operation: str, request: Any, *extra: Any) -> int:
    """The estimate of one attempt of `request` (a domain request of `operation`; `extra`: the
    spec's further `model_request` arguments, e.g. a variation's index), in nano-USD."""
    spec: Any = operations.get(operation)
    validated = spec.validate(request, settings.bounds)
    model = settings.model_name(settings.policy(operation))
    return Budgets(settings).estimate(spec.model_request(validated, model, *extra))
