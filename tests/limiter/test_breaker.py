"""The circuit breaker's transitions (pure state)."""

from __future__ import annotations

import pytest

from gateway.limiter.breaker import CircuitBreaker


def test_opens_after_consecutive_failures_and_closes_on_a_success() -> None:
    changes: list[bool] = []
    breaker = CircuitBreaker(3, changes.append)
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()  # not consecutive any more
    breaker.record_failure()
    breaker.record_failure()
    assert not breaker.open and changes == []
    breaker.record_failure()
    assert breaker.open and changes == [True]
    breaker.record_failure()
    assert changes == [True], "only transitions are announced"
    breaker.record_success()
    assert not breaker.open and changes == [True, False]


def test_trip_opens_at_once() -> None:
    changes: list[bool] = []
    breaker = CircuitBreaker(5, changes.append)
    breaker.trip()
    breaker.trip()
    assert breaker.open and changes == [True]


def test_needs_a_positive_threshold() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        CircuitBreaker(0, lambda _: None)
