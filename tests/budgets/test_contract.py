"""One contract for both budget backends: embedded (in process) and shared (Redis).

Every case runs on each backend and with the wall clock near the epoch and two centuries away,
each time on the 30th of a month, so moving one day on crosses a day boundary and moving two
crosses a month (and at the far origin, a year) boundary. No case reads the machine's date.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from gateway.budgets import BudgetState
from gateway.budgets.backend import Change, Hold
from gateway.budgets.embedded import EmbeddedBackend
from gateway.budgets.enforcement import Budgets
from gateway.budgets.shared import RedisBudgetBackend
from gateway.config import PeriodBudgets, Tier
from gateway.errors import BudgetExceeded

from .conftest import MakeBudgets, WallClock, at, budget_settings

USD = 1_000_000_000
MODEL = "gemini-3.6-flash"
DAY_S = 86_400


@pytest.fixture(params=["embedded", "redis"])
def kind(request: pytest.FixtureRequest) -> str:
    """Each backend."""
    return str(request.param)


@pytest.fixture(params=[(1970, 1), (2199, 12)], ids=["near-epoch", "far-origin"])
def clock(request: pytest.FixtureRequest) -> WallClock:
    """Noon on the 30th of the month, at each origin."""
    year, month = request.param
    return WallClock(at(year, month, 30, 12))


async def _budgets(
    make_budgets: MakeBudgets, kind: str, clock: WallClock, prefix: str, **budgets: object
) -> Budgets:
    return await make_budgets(kind, budget_settings(prefix, **budgets), clock)


def _spent(states: Sequence[BudgetState]) -> dict[str, float]:
    return {s.kind: round(s.spent_usd, 9) for s in states}


async def test_reserve_settle_and_refund(
    make_budgets: MakeBudgets, kind: str, clock: WallClock, key_prefix: str
) -> None:
    budgets = await _budgets(
        make_budgets, kind, clock, key_prefix, tiers={Tier.FREE: PeriodBudgets(day_usd=1.0)}
    )
    held = await budgets.reserve("ann", Tier.FREE, MODEL, USD // 4, count=2)
    assert held is not None
    assert _spent(await budgets.user_budgets("ann", "free")) == {"user_day": 0.5}
    # Settled at the actual cost: the reservation is replaced by it.
    await budgets.settle(held.take(USD // 4), 0.1)
    assert _spent(await budgets.user_budgets("ann", "free")) == {"user_day": 0.35}
    # The other share's attempt was never made: given back.
    await budgets.release(held)
    assert _spent(await budgets.user_budgets("ann", "free")) == {"user_day": 0.1}


async def test_a_reservation_that_does_not_fit_is_refused_and_changes_nothing(
    make_budgets: MakeBudgets, kind: str, clock: WallClock, key_prefix: str
) -> None:
    budgets = await _budgets(
        make_budgets,
        kind,
        clock,
        key_prefix,
        tiers={Tier.FREE: PeriodBudgets(day_usd=1.0, month_usd=10.0)},
    )
    first = await budgets.reserve("ann", Tier.FREE, MODEL, 6 * USD // 10)
    assert first is not None
    with pytest.raises(BudgetExceeded) as refused:
        await budgets.reserve("ann", Tier.FREE, MODEL, 5 * USD // 10)
    error = refused.value
    assert error.user_id == "ann"
    assert error.metadata["budget"] == "user_day"
    assert error.metadata["subject"] == "ann"
    assert error.metadata["limit_usd"] == "1"
    assert error.metadata["spent_usd"] == "0.6"
    assert error.metadata["estimate_usd"] == "0.5"
    # Until the day resets (noon to midnight UTC).
    assert error.retry_after_s == DAY_S / 2
    assert error.metadata["resets_at"].endswith("T00:00:00Z")
    assert "the user's daily budget ($1) has $0.4 left" in error.message
    assert _spent(await budgets.user_budgets("ann", "free")) == {
        "user_day": 0.6,
        "user_month": 0.6,
    }
    # What does fit still passes.
    assert await budgets.reserve("ann", Tier.FREE, MODEL, 4 * USD // 10) is not None
    with pytest.raises(BudgetExceeded):
        await budgets.reserve("ann", Tier.FREE, MODEL, 0)


async def test_all_budgets_or_none(
    make_budgets: MakeBudgets, kind: str, clock: WallClock, key_prefix: str
) -> None:
    budgets = await _budgets(
        make_budgets,
        kind,
        clock,
        key_prefix,
        tiers={Tier.PRO: PeriodBudgets(day_usd=5.0, month_usd=1.0)},
    )
    with pytest.raises(BudgetExceeded) as refused:
        await budgets.reserve("bo", Tier.PRO, MODEL, 2 * USD)
    # The month refused; the day, which would have allowed it, did not take anything either.
    assert refused.value.metadata["budget"] == "user_month"
    assert _spent(await budgets.user_budgets("bo", "pro")) == {"user_day": 0, "user_month": 0}


async def test_the_budget_that_resets_last_is_named(
    make_budgets: MakeBudgets, kind: str, clock: WallClock, key_prefix: str
) -> None:
    budgets = await _budgets(
        make_budgets,
        kind,
        clock,
        key_prefix,
        tiers={Tier.PRO: PeriodBudgets(day_usd=1.0, month_usd=1.0)},
    )
    await budgets.reserve("bo", Tier.PRO, MODEL, USD)
    with pytest.raises(BudgetExceeded) as refused:
        await budgets.reserve("bo", Tier.PRO, MODEL, 1)
    # Both are spent; a retry at midnight would meet the month's refusal: wait for the month.
    assert refused.value.metadata["budget"] == "user_month"
    assert refused.value.retry_after_s == DAY_S * 1.5


async def test_an_estimate_above_the_whole_budget_says_no_wait_helps(
    make_budgets: MakeBudgets, kind: str, clock: WallClock, key_prefix: str
) -> None:
    budgets = await _budgets(
        make_budgets, kind, clock, key_prefix, tiers={Tier.FREE: PeriodBudgets(day_usd=0.1)}
    )
    with pytest.raises(BudgetExceeded) as refused:
        await budgets.reserve("ann", Tier.FREE, MODEL, USD // 5)
    assert refused.value.retry_after_s is None
    assert "needs a larger budget" in refused.value.message


async def test_user_overrides_replace_what_they_name(
    make_budgets: MakeBudgets, kind: str, clock: WallClock, key_prefix: str
) -> None:
    budgets = await _budgets(
        make_budgets,
        kind,
        clock,
        key_prefix,
        tiers={Tier.FREE: PeriodBudgets(day_usd=1.0, month_usd=10.0)},
        users={
            "vip": PeriodBudgets(day_usd=50.0),
            "unbound": PeriodBudgets(day_usd=None, month_usd=None),
        },
    )
    states = await budgets.user_budgets("vip", "free")
    assert {s.kind: s.limit_usd for s in states} == {"user_day": 50.0, "user_month": 10.0}
    assert await budgets.user_budgets("unbound", "free") == []
    assert await budgets.reserve("unbound", Tier.FREE, MODEL, 100 * USD) is None
    # A tier without budgets has none.
    assert await budgets.user_budgets("other", "pro") == []


async def test_the_model_cap_refuses_for_everyone_and_the_user_part_is_refunded(
    make_budgets: MakeBudgets, kind: str, clock: WallClock, key_prefix: str
) -> None:
    budgets = await _budgets(
        make_budgets,
        kind,
        clock,
        key_prefix,
        tiers={Tier.FREE: PeriodBudgets(day_usd=10.0)},
        models={MODEL: 1.0},
    )
    held = await budgets.reserve("ann", Tier.FREE, MODEL, 7 * USD // 10)
    assert held is not None
    with pytest.raises(BudgetExceeded) as refused:
        await budgets.reserve("bo", Tier.FREE, MODEL, 4 * USD // 10)
    error = refused.value
    assert error.user_id is None
    assert (error.metadata["budget"], error.metadata["subject"]) == ("model_day", MODEL)
    assert f"the fleet-wide daily cap on {MODEL} ($1)" in error.message
    # Bo's own budget kept nothing of the refused reservation.
    assert _spent(await budgets.user_budgets("bo", "free")) == {"user_day": 0}
    (cap,) = await budgets.model_budgets()
    assert (cap.kind, cap.subject, cap.limit_usd, round(cap.spent_usd, 9)) == (
        "model_day",
        MODEL,
        1.0,
        0.7,
    )
    # Another model is not capped.
    assert await budgets.reserve("bo", Tier.FREE, "gemini-other", USD) is not None


async def test_days_and_months_start_again_at_zero(
    make_budgets: MakeBudgets, kind: str, clock: WallClock, key_prefix: str
) -> None:
    budgets = await _budgets(
        make_budgets,
        kind,
        clock,
        key_prefix,
        tiers={Tier.FREE: PeriodBudgets(day_usd=1.0, month_usd=1.5)},
        models={MODEL: 1.0},
    )
    await budgets.reserve("ann", Tier.FREE, MODEL, USD)
    with pytest.raises(BudgetExceeded):
        await budgets.reserve("ann", Tier.FREE, MODEL, 1)
    # Just before midnight: still the same day.
    clock.set(clock.now_ns + DAY_S // 2 * 1_000_000_000 - 1)
    with pytest.raises(BudgetExceeded):
        await budgets.reserve("ann", Tier.FREE, MODEL, 1)
    # The 31st: a new day (and a new day for the model cap), the same month.
    clock.set(clock.now_ns + 1)
    assert _spent(await budgets.user_budgets("ann", "free")) == {
        "user_day": 0,
        "user_month": 1.0,
    }
    await budgets.reserve("ann", Tier.FREE, MODEL, USD // 2)
    with pytest.raises(BudgetExceeded) as refused:
        await budgets.reserve("ann", Tier.FREE, MODEL, 1)
    assert refused.value.metadata["budget"] == "user_month"
    assert refused.value.retry_after_s == DAY_S
    # The 1st of the next month: both start again.
    clock.set(clock.now_ns + DAY_S * 1_000_000_000)
    assert _spent(await budgets.user_budgets("ann", "free")) == {"user_day": 0, "user_month": 0}
    (cap,) = await budgets.model_budgets()
    assert cap.spent_usd == 0
    assert cap.resets_at.day == 2 and cap.resets_at.hour == 0


async def test_a_late_settlement_goes_to_the_period_it_reserved_in(
    make_budgets: MakeBudgets, kind: str, clock: WallClock, key_prefix: str
) -> None:
    budgets = await _budgets(
        make_budgets, kind, clock, key_prefix, tiers={Tier.FREE: PeriodBudgets(day_usd=1.0)}
    )
    clock.set(clock.now_ns + (DAY_S // 2 - 1) * 1_000_000_000)
    held = await budgets.reserve("ann", Tier.FREE, MODEL, USD // 2)
    assert held is not None
    clock.set(clock.now_ns + 2_000_000_000)
    await budgets.settle(held, 0.9)
    # The new day is untouched; the old one took the actual cost.
    assert _spent(await budgets.user_budgets("ann", "free")) == {"user_day": 0}
    clock.set(clock.now_ns - 2_000_000_000)
    assert _spent(await budgets.user_budgets("ann", "free")) == {"user_day": 0.9}


async def test_concurrent_reservations_never_share_the_last_dollar(
    make_budgets: MakeBudgets, kind: str, clock: WallClock, key_prefix: str
) -> None:
    # Two clients of one backend kind each: as two replicas would be.
    settings = budget_settings(key_prefix, tiers={Tier.FREE: PeriodBudgets(day_usd=1.0)})
    replicas = [await make_budgets(kind, settings, clock) for _ in range(2)]
    if kind == "embedded":
        replicas = replicas[:1]

    async def one(index: int) -> bool:
        try:
            await replicas[index % len(replicas)].reserve("ann", Tier.FREE, MODEL, USD // 7)
        except BudgetExceeded:
            return False
        return True

    allowed = await asyncio.gather(*(one(i) for i in range(40)))
    assert sum(allowed) == 7
    (day,) = await replicas[0].user_budgets("ann", "free")
    assert round(day.spent_usd, 9) == 7 * (USD // 7) / USD


# --- the backend interface itself --------------------------------------------------------------


@pytest.fixture
async def backend(kind: str, redis_client: object, clock: WallClock) -> object:
    """Each raw backend."""
    if kind == "embedded":
        return EmbeddedBackend(clock=clock)
    return RedisBudgetBackend(redis_client, timeout_s=5.0)  # type: ignore[arg-type]


async def test_adjustments_never_go_below_zero_nor_revive_a_missing_key(
    backend: EmbeddedBackend | RedisBudgetBackend, key_prefix: str
) -> None:
    a, b = f"{{{key_prefix}}}:a", f"{{{key_prefix}}}:b"
    assert (await backend.reserve([Hold(a, 5, 10, 60_000)])).spent == (5,)
    await backend.adjust([Change(a, -7, 60_000), Change(b, -3, 60_000)])
    assert await backend.read([a, b]) == [0, 0]
    await backend.adjust([Change(b, 4, 60_000)])
    assert await backend.read([a, b]) == [0, 4]
    answer = await backend.reserve([Hold(a, 3, 10, 60_000), Hold(b, 7, 10, 60_000)])
    assert answer == (False, (0, 4))
    assert await backend.read([a, b]) == [0, 4]


async def test_amounts_stay_exact_near_the_largest_budget(
    backend: EmbeddedBackend | RedisBudgetBackend, key_prefix: str
) -> None:
    key = f"{{{key_prefix}}}:big"
    limit = 1_000_000 * USD + 4 * 10**14
    assert (await backend.reserve([Hold(key, limit - 1, limit, 60_000)])).allowed
    assert (await backend.reserve([Hold(key, 1, limit, 60_000)])).spent == (limit,)
    assert not (await backend.reserve([Hold(key, 1, limit, 60_000)])).allowed
    await backend.adjust([Change(key, -3, 60_000)])
    assert await backend.read([key]) == [limit - 3]


async def test_keys_expire_after_their_ttl(
    kind: str,
    backend: EmbeddedBackend | RedisBudgetBackend,
    key_prefix: str,
    clock: WallClock,
    redis_client: object,
) -> None:
    key = f"{{{key_prefix}}}:ttl"
    await backend.reserve([Hold(key, 5, 10, 90_000)])
    if kind == "embedded":
        clock.set(clock.now_ns + 89_999_000_000)
        assert await backend.read([key]) == [5]
        clock.set(clock.now_ns + 1_000_000)
        assert await backend.read([key]) == [0]
    else:
        ttl = await redis_client.pttl(key)  # type: ignore[attr-defined]
        assert 80_000 < ttl <= 90_000
