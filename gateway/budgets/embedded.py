"""The in-process budget backend: exact for one replica, and each replica's share while Redis
is unreachable (failure mode `local`). Same contract as the Redis backend
(`gateway.budgets.backend`); expiry follows the injected clock."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from gateway.budgets.backend import Answer, Change, Hold

_NS_PER_MS = 1_000_000
#: Writes between two sweeps of expired keys (keys of past periods, users gone quiet).
_SWEEP_EVERY = 1024


class EmbeddedBackend:
    """Spend per key in a dict, with expiry on `clock` (integer nanoseconds; monotonic by
    default: only differences matter)."""

    def __init__(self, *, clock: Callable[[], int] | None = None) -> None:
        self._clock = clock or time.monotonic_ns
        #: key -> (spend, expires at on `clock`)
        self._spend: dict[str, tuple[int, int]] = {}
        self._writes = 0

    def _get(self, key: str, now: int) -> int | None:
        entry = self._spend.get(key)
        if entry is None:
            return None
        if entry[1] <= now:
            del self._spend[key]
            return None
        return entry[0]

    def _set(self, key: str, value: int, ttl_ms: int, now: int) -> None:
        self._spend[key] = (value, now + ttl_ms * _NS_PER_MS)
        self._writes += 1
        if self._writes % _SWEEP_EVERY == 0:
            self._spend = {k: e for k, e in self._spend.items() if e[1] > now}

    def reserve_now(self, holds: Sequence[Hold]) -> Answer:
        """`reserve`, synchronously (it never waits)."""
        now = self._clock()
        spent = [self._get(h.key, now) or 0 for h in holds]
        allowed = all(
            s < h.limit and s + h.amount <= h.limit for s, h in zip(spent, holds, strict=True)
        )
        if not allowed:
            return Answer(False, tuple(spent))
        after = []
        for s, h in zip(spent, holds, strict=True):
            if h.amount > 0:
                self._set(h.key, s + h.amount, h.ttl_ms, now)
            after.append(s + h.amount)
        return Answer(True, tuple(after))

    def adjust_now(self, changes: Sequence[Change]) -> None:
        """`adjust`, synchronously."""
        now = self._clock()
        for c in changes:
            current = self._get(c.key, now)
            if current is None and c.delta <= 0:
                continue
            self._set(c.key, max(0, (current or 0) + c.delta), c.ttl_ms, now)

    async def reserve(self, holds: Sequence[Hold]) -> Answer:
        """See `gateway.budgets.backend.BudgetBackend.reserve`."""
        return self.reserve_now(holds)

    async def adjust(self, changes: Sequence[Change]) -> None:
        """See `gateway.budgets.backend.BudgetBackend.adjust`."""
        self.adjust_now(changes)

    async def read(self, keys: Sequence[str]) -> list[int]:
        """See `gateway.budgets.backend.BudgetBackend.read`."""
        now = self._clock()
        return [self._get(key, now) or 0 for key in keys]


__all__ = ["EmbeddedBackend"]
