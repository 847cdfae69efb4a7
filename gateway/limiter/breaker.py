"""A circuit breaker over Redis calls: pure state, no I/O, no clock.

Closed: requests ask Redis. After `failures_to_open` consecutive failed calls it opens: requests
skip Redis entirely (the failure mode answers at once) while a prober asks Redis now and then. The
first successful call, probe or not, closes it again.
"""

from __future__ import annotations

from collections.abc import Callable


class CircuitBreaker:
    """Counts consecutive failures; `on_change(open)` is called on every transition."""

    def __init__(self, failures_to_open: int, on_change: Callable[[bool], None]) -> None:
        if failures_to_open < 1:
            raise ValueError("failures_to_open must be at least 1")
        self._threshold = failures_to_open
        self._failures = 0
        self._open = False
        self._on_change = on_change

    @property
    def open(self) -> bool:
        """Whether Redis is being skipped."""
        return self._open

    def record_success(self) -> None:
        """A call answered: Redis is usable."""
        self._failures = 0
        if self._open:
            self._open = False
            self._on_change(False)

    def trip(self) -> None:
        """Opens at once (e.g. Redis unreachable at startup)."""
        self._failures = max(self._failures, self._threshold)
        if not self._open:
            self._open = True
            self._on_change(True)

    def record_failure(self) -> None:
        """A call failed or timed out."""
        self._failures += 1
        if not self._open and self._failures >= self._threshold:
            self._open = True
            self._on_change(True)
