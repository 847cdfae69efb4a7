"""UTC calendar periods come from the instant passed in, whatever its distance from the epoch."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gateway.budgets.periods import PeriodKind, period_of

from .conftest import at

S = 1_000_000_000


@pytest.mark.parametrize(
    ("now", "label", "start", "end"),
    [
        (0, "19700101", (1970, 1, 1), (1970, 1, 2)),
        (at(2026, 3, 1) - 1, "20260228", (2026, 2, 28), (2026, 3, 1)),
        (at(2028, 2, 29, 23, 59, 59), "20280229", (2028, 2, 29), (2028, 3, 1)),
        (at(2199, 12, 31, 12), "21991231", (2199, 12, 31), (2200, 1, 1)),
    ],
)
def test_days(now: int, label: str, start: tuple[int, ...], end: tuple[int, ...]) -> None:
    period = period_of(PeriodKind.DAY, now)
    assert period.label == label
    assert period.start == datetime(*start, tzinfo=UTC)
    assert period.end == datetime(*end, tzinfo=UTC)
    assert period.end_ns == at(*end)


@pytest.mark.parametrize(
    ("now", "label", "end"),
    [
        (0, "197001", (1970, 2, 1)),
        (at(2026, 12, 31, 23, 59, 59), "202612", (2027, 1, 1)),
        (at(2027, 1, 1), "202701", (2027, 2, 1)),
        (at(2199, 2, 14), "219902", (2199, 3, 1)),
    ],
)
def test_months(now: int, label: str, end: tuple[int, ...]) -> None:
    period = period_of(PeriodKind.MONTH, now)
    assert period.label == label
    assert period.end == datetime(*end, tzinfo=UTC)


def test_seconds_left_counts_to_the_end_and_never_below_zero() -> None:
    period = period_of(PeriodKind.DAY, at(2026, 5, 4, 23, 0))
    assert period.seconds_left(at(2026, 5, 4, 23, 0)) == 3600
    assert period.seconds_left(at(2026, 5, 4, 23, 59, 59) + S // 2) == 0.5
    assert period.seconds_left(at(2026, 5, 6)) == 0
