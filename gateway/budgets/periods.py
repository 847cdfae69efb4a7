"""UTC calendar periods (days and months) of a wall-clock instant: pure, clock passed in.

A budget's spend is kept per period: the key of the period an attempt starts in takes its
reservation and its settlement, whenever the settlement comes. Instants are integer nanoseconds
since the Unix epoch (`time.time_ns()`), so any clock value a test injects, 0 or centuries
away, names the same periods a calendar would.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

_NS_PER_S = 1_000_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class PeriodKind(StrEnum):
    """How long a budget's spend accumulates before it starts again at zero."""

    DAY = "day"
    MONTH = "month"


@dataclass(frozen=True, slots=True)
class Period:
    """One UTC day or calendar month."""

    kind: PeriodKind
    #: Names the period in keys: `20260131` for a day, `202601` for a month.
    label: str
    start: datetime
    end: datetime

    @property
    def end_ns(self) -> int:
        """When the next period starts, in nanoseconds since the epoch."""
        return _ns(self.end)

    def seconds_left(self, now_ns: int) -> float:
        """Seconds from `now_ns` until the period ends (0 once it has)."""
        return max(0, self.end_ns - now_ns) / _NS_PER_S


def _ns(instant: datetime) -> int:
    delta = instant - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * _NS_PER_S + delta.microseconds * 1000


def period_of(kind: PeriodKind, now_ns: int) -> Period:
    """The period of `kind` that `now_ns` (nanoseconds since the Unix epoch) falls in."""
    # Whole seconds through integer arithmetic: float seconds would round far from the epoch.
    instant = _EPOCH + timedelta(seconds=now_ns // _NS_PER_S)
    day = datetime(instant.year, instant.month, instant.day, tzinfo=UTC)
    if kind is PeriodKind.DAY:
        return Period(kind, f"{day:%Y%m%d}", day, day + timedelta(days=1))
    start = day.replace(day=1)
    end = (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )
    return Period(kind, f"{start:%Y%m}", start, end)


__all__ = ["Period", "PeriodKind", "period_of"]
