"""Budgets on a real Redis Cluster (three local masters): a user's budgets are one slot, a model's
cap another, reads and late adjustments spanning slots are split by slot, and a cap's refusal
still leaves the user's budgets as they were."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import pytest
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from gateway.budgets.backend import Change
from gateway.budgets.enforcement import Budgets
from gateway.budgets.keys import user_budget_key
from gateway.budgets.periods import PeriodKind, period_of
from gateway.config import PeriodBudgets, Tier
from gateway.errors import BudgetExceeded

from .conftest import WallClock, at, budget_settings

if TYPE_CHECKING:
    from tests.fixtures.redis import RedisCluster as LocalCluster

USD = 1_000_000_000
MODEL = "gemini-3.6-flash"


@pytest.fixture
async def cluster_client(redis_cluster: LocalCluster) -> AsyncIterator[RedisCluster]:
    client = RedisCluster.from_url(redis_cluster.url)
    try:
        yield client
    finally:
        await client.aclose()


async def test_budgets_on_a_cluster(cluster_client: RedisCluster, key_prefix: str) -> None:
    settings = budget_settings(
        key_prefix,
        tiers={Tier.PRO: PeriodBudgets(day_usd=1.0, month_usd=5.0)},
        models={MODEL: 10.0},
    )
    budgets = Budgets(settings, redis=cluster_client, clock=WallClock(at(2026, 7, 14, 12)))
    users = [f"user-{i}" for i in range(30)]

    async def spend(user: str) -> int:
        passed = 0
        for _ in range(4):
            try:
                held = await budgets.reserve(user, Tier.PRO, MODEL, 3 * USD // 10)
            except BudgetExceeded:
                continue
            assert held is not None
            await budgets.settle(held, 0.3)
            passed += 1
        return passed

    # Thirty users at once: three $0.30 calls fit each day budget, until the $10 cap runs out.
    passed = await asyncio.gather(*(spend(user) for user in users))
    assert sum(passed) == 33
    states = {user: await budgets.user_budgets(user, "pro") for user in users}
    days = [s for user in users for s in states[user] if s.kind == "user_day"]
    assert round(sum(d.spent_usd for d in days), 6) == 9.9
    (cap,) = await budgets.model_budgets()
    assert round(cap.spent_usd, 6) == 9.9
    day = period_of(PeriodKind.DAY, at(2026, 7, 14, 12))
    month = period_of(PeriodKind.MONTH, at(2026, 7, 14, 12))
    slots = {key_slot(user_budget_key(key_prefix, user, day).encode()) for user in users}
    assert len(slots) > 10, "users must spread over slots"
    for user in users:
        same = {key_slot(user_budget_key(key_prefix, user, p).encode()) for p in (day, month)}
        assert len(same) == 1, "a user's budgets share one slot"


async def test_adjustments_across_slots(cluster_client: RedisCluster, key_prefix: str) -> None:
    budgets = Budgets(budget_settings(key_prefix), redis=cluster_client)
    shared = budgets.shared
    assert shared is not None
    keys = [f"{{{key_prefix}:k{i}}}:day:x" for i in range(20)]
    await shared.adjust([Change(key, i + 1, 60_000) for i, key in enumerate(keys)])
    assert await shared.read(keys) == list(range(1, 21))
