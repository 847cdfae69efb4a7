"""The usage report's rules as plain functions: who may see what, the default range, and the
savings summed by operation."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from gateway.auth import Principal
from gateway.config import Tier
from gateway.errors import InvalidArgument, PermissionDenied
from gateway.model import Usage
from gateway.store.base import UsageDay, UsageTotals
from gateway.usage_report import (
    DEFAULT_RANGE,
    OperationSavings,
    UsageQuery,
    check_query,
    savings_by_operation,
)

NOW = datetime(2031, 3, 14, 15, 9, 26, tzinfo=UTC)
USER = Principal("user-alice", Tier.PRO, "jwt")
SERVICE = Principal("user-ops", Tier.PRO, "service")


def query(
    principal: Principal = USER,
    *,
    user_id: str = "",
    fleet: bool = False,
    start: datetime | None = None,
    end: datetime | None = None,
) -> UsageQuery:
    return check_query(principal, user_id=user_id, fleet=fleet, start=start, end=end, now=NOW)


def test_an_open_range_ends_now_and_starts_the_default_range_before() -> None:
    own = query()
    assert (own.user_id, own.start, own.end) == ("user-alice", NOW - DEFAULT_RANGE, NOW)
    end = NOW - timedelta(days=400)
    ranged = query(end=end)
    assert (ranged.start, ranged.end) == (end - DEFAULT_RANGE, end)
    earliest = datetime.min.replace(tzinfo=UTC) + timedelta(days=1)
    early = query(end=earliest)
    assert early.start == datetime.min.replace(tzinfo=UTC)


def test_a_user_sees_only_their_own_usage() -> None:
    assert query(user_id="user-alice").user_id == "user-alice"
    with pytest.raises(PermissionDenied, match="only their own"):
        query(user_id="user-bob")
    with pytest.raises(PermissionDenied, match="service token"):
        query(fleet=True)


def test_the_service_token_sees_anyone_and_the_fleet() -> None:
    assert query(SERVICE).user_id == "user-ops"
    assert query(SERVICE, user_id="user-bob").user_id == "user-bob"
    assert query(SERVICE, fleet=True).user_id is None


def test_every_bad_field_is_named_before_permissions_are_checked() -> None:
    with pytest.raises(InvalidArgument) as caught:
        query(user_id="user-bob", fleet=True, start=NOW, end=NOW)
    assert [v.field for v in caught.value.violations] == ["user_id", "start_time"]
    with pytest.raises(InvalidArgument) as caught:
        query(SERVICE, user_id="no spaces allowed")
    assert [v.field for v in caught.value.violations] == ["user_id"]


def totals(hits: int = 0, joins: int = 0, saved: float = 0.0, calls: int = 1) -> UsageTotals:
    return UsageTotals(calls, Usage(total_tokens=calls), calls / 100, hits, joins, saved)


def test_savings_are_summed_by_operation_across_days_and_models() -> None:
    day, next_day = date(2031, 3, 14), date(2031, 3, 15)
    days = [
        UsageDay(day, "suggest_thumbnail_concepts", "m1", totals(joins=2, saved=0.5)),
        UsageDay(day, "analyze_video", "m1", totals(hits=1, saved=0.25)),
        UsageDay(day, "analyze_video", "m2", totals(hits=2, joins=1, saved=0.75)),
        UsageDay(next_day, "analyze_video", "m1", totals(hits=1, saved=0.25)),
        UsageDay(next_day, "generate_thumbnail", "m3", totals(calls=4)),  # nothing saved
    ]
    assert savings_by_operation(days) == [
        OperationSavings("analyze_video", cache_hits=4, joins=1, saved_usd=1.25),
        OperationSavings("suggest_thumbnail_concepts", cache_hits=0, joins=2, saved_usd=0.5),
    ]
    assert savings_by_operation([]) == []
