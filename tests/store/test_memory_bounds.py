"""The embedded store's memory bounds: a result cache within a byte budget (least recently used
evicted first, a row larger than the budget never kept) and a bounded usage ledger whose
fleet totals stay whole."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest

from gateway.model import CallLabels, Usage, UsageRecord
from gateway.store import MemoryStore
from gateway.store.base import ResultRef, UsageEntry, UsageTotals
from gateway.store.memory import RESULT_ROW_OVERHEAD, result_row_bytes


def key(name: str) -> bytes:
    return hashlib.sha256(name.encode()).digest()


def ref(size: int) -> ResultRef:
    return ResultRef(json="x" * size, blobs=(key("image"),))


async def put(store: MemoryStore, name: str, size: int = 1000) -> None:
    await store.put_result(key(name), op="x", scope="user", model="m", ref=ref(size), ttl_s=3600)


async def test_the_cache_evicts_the_least_recently_used_rows_past_its_budget() -> None:
    row = result_row_bytes(key("a"), ref(1000))
    assert row > 1000 + RESULT_ROW_OVERHEAD
    store = MemoryStore(results_max_bytes=3 * row)
    for name in "abc":
        await put(store, name)
    assert store.result_bytes == 3 * row and store.results_evicted == 0
    # A hit refreshes "a": "b" is now the least recently used, and goes first.
    assert await store.get_result(key("a")) is not None
    await put(store, "d")
    assert await store.get_result(key("b")) is None
    assert [await store.get_result(key(n)) is not None for n in "acd"] == [True] * 3
    assert store.results_evicted == 1 and store.result_bytes == 3 * row
    # A larger row evicts as many as it needs; the count never passes the budget.
    await put(store, "big", 2500)
    assert store.result_bytes <= 3 * row
    assert await store.get_result(key("big")) is not None
    assert await store.get_result(key("a")) is None and await store.get_result(key("c")) is None
    assert store.result_count == 2 and store.results_evicted == 3


async def test_a_row_larger_than_the_budget_is_answered_but_not_kept() -> None:
    store = MemoryStore(results_max_bytes=4000)
    await put(store, "small")
    before = store.result_bytes
    await put(store, "huge", 10_000)
    entry = await store.put_result(
        key("huge"), op="x", scope="user", model="m", ref=ref(10_000), ttl_s=3600
    )
    assert entry.ref == ref(10_000)  # what the caller serves
    assert await store.get_result(key("huge")) is None
    assert store.results_refused == 2 and store.results_evicted == 0
    assert store.result_bytes == before and await store.get_result(key("small")) is not None
    # A new result too large for the budget still replaces the old one under its key.
    await put(store, "small", 10_000)
    assert await store.get_result(key("small")) is None and store.result_bytes == 0


async def test_replaced_and_purged_rows_leave_the_count() -> None:
    now = [datetime(2031, 5, 17, 12, tzinfo=UTC)]
    store = MemoryStore(clock=lambda: now[0])
    await put(store, "a", 100)
    await put(store, "a", 5000)
    assert store.result_bytes == result_row_bytes(key("a"), ref(5000))
    await store.put_result(key("b"), op="x", scope="user", model="m", ref=ref(10), ttl_s=60)
    now[0] += timedelta(hours=2)
    assert await store.purge_expired_results(10) == 2
    assert store.result_bytes == 0 and store.result_count == 0
    with pytest.raises(ValueError, match="results_max_bytes"):
        MemoryStore(results_max_bytes=-1)


def usage(user: str, day: datetime, n: int) -> UsageEntry:
    record = UsageRecord(
        CallLabels("analyze_video", user, "", f"req-{user}-{n}"),
        "gemini-test",
        1,
        "ok",
        0.2,
        Usage(prompt_tokens=n, total_tokens=2 * n),
        cost_usd=n / 1000,
    )
    return UsageEntry(record, day)


async def test_fleet_totals_stay_whole_when_daily_totals_are_dropped() -> None:
    # Three rows kept: every older row folds into its daily total, and only three daily totals
    # (day, user, operation, model) of the nine are kept, so the oldest leave their users'
    # reports; the fleet's totals (three days of one operation and model) keep them.
    store = MemoryStore(usage_rows_kept=3)
    day = datetime(2031, 5, 17, 12, tzinfo=UTC)
    entries = [usage(f"user-{n % 4}", day + timedelta(days=n // 6), n) for n in range(1, 13)]
    await store.insert_usage_entries(entries)
    assert len(store.usage_entries()) == 3 and store.usage_rows_folded == 9
    whole = sum((UsageTotals.of(e.record) for e in entries), UsageTotals())
    start, end = day - timedelta(days=1), day + timedelta(days=5)
    fleet = await store.usage_by_day(None, start, end)
    assert sum((d.totals for d in fleet), UsageTotals()) == whole
    assert [d.day for d in fleet] == sorted({e.created_at.date() for e in entries})
    # A user whose daily totals were dropped sees less than the fleet counted for her.
    mine = await store.usage_by_day("user-1", start, end)
    counted = sum((d.totals for d in mine), UsageTotals())
    assert counted.upstream_calls < sum(e.record.labels.user_id == "user-1" for e in entries)
    # Retention purges the fleet totals too: the raw rows kept are all that is left.
    assert await store.purge_usage_days((day + timedelta(days=5)).date(), 100) > 0
    left = await store.usage_by_day(None, start, end)
    raw = store.usage_entries()
    assert sum((d.totals for d in left), UsageTotals()) == sum(
        (UsageTotals.of(e.record) for e in raw), UsageTotals()
    )
