"""The in-process GCRA limiter: redis_rate semantics, validation, memory bound, thread safety.

Every sequence runs at several clock origins: `now_ns` of one second and a few minutes (a
monotonic clock just after boot, smaller than an hour-long window), a long-running host, an
epoch-like clock and the last hours of the `u64` range. The answers must be the same at each.
"""

from __future__ import annotations

import threading

import pytest

from gateway import native

MS = 1_000_000
S = 1_000_000_000
HOUR = 3600 * S

ORIGINS = [S, 700 * S, 1_000_000 * S, 1_700_000_000 * S, 2**64 - 1 - 10 * HOUR]
#: Hour-long limits (windows longer than the smallest origins) and the gateway's default
#: per-minute policy limits (`gateway/config.py`), as `(rate, period_s, burst)`.
LIMITS = [
    (10, 1.0, 10),
    (10, 3600.0, 10),
    (2, 3600.0, 2),
    (1, 3600.0, 1),
    (30, 60.0, 10),
    (10, 60.0, 8),
    (120, 60.0, 64),
    (2000, 60.0, 200),
    (600, 60.0, 60),
    (1000, 60.0, 100),
]


@pytest.fixture(params=ORIGINS, ids=lambda ns: f"origin={ns // S}s")
def origin(request: pytest.FixtureRequest) -> int:
    """A clock origin in nanoseconds."""
    value: int = request.param
    return value


def test_redis_rate_conformance_sequence(origin: int) -> None:
    limiter = native.GcraLimiter()
    now = origin
    d = limiter.check("user:1", 10, 1.0, 10, now_ns=now)
    assert (d.allowed, d.remaining, d.retry_after_s) == (True, 9, -1.0)
    assert d.reset_after_s == pytest.approx(0.1)

    d = limiter.check("user:1", 10, 1.0, 10, cost=2, now_ns=now)
    assert (d.allowed, d.remaining) == (True, 7)
    assert d.reset_after_s == pytest.approx(0.3)

    d = limiter.check("user:1", 10, 1.0, 10, cost=7, now_ns=now + MS)
    assert (d.allowed, d.remaining) == (True, 0)
    assert d.reset_after_s == pytest.approx(0.999)

    d = limiter.check("user:1", 10, 1.0, 10, cost=1000, now_ns=now + MS)
    assert (d.allowed, d.remaining) == (False, 0)
    assert d.retry_after_s == pytest.approx(99.999)
    assert d.reset_after_s == pytest.approx(0.999)


def test_hour_long_limits_from_the_first_second_after_boot(origin: int) -> None:
    # 10 per hour, burst 10: one request every 6 minutes, the window (an hour) longer than the
    # smallest origins, which is where clamping "TAT minus window" at 0 used to break `remaining`.
    limiter = native.GcraLimiter()
    for i in range(10):
        d = limiter.check("k", 10, 3600.0, 10, now_ns=origin)
        assert (d.allowed, d.remaining) == (True, 9 - i)
        assert d.reset_after_s == pytest.approx(360.0 * (i + 1))
    denied = limiter.check("k", 10, 3600.0, 10, now_ns=origin + 300 * S)
    assert (denied.allowed, denied.remaining) == (False, 0)
    assert denied.retry_after_s == pytest.approx(60.0)
    d = limiter.check("k", 10, 3600.0, 10, now_ns=origin + 700 * S)
    assert (d.allowed, d.remaining) == (True, 0)
    idle = limiter.check("k", 10, 3600.0, 10, cost=0, now_ns=origin + HOUR + 700 * S)
    assert (idle.remaining, idle.reset_after_s) == (10, 0.0)


def _transcript(origin: int, rate: float, period_s: float, burst: int) -> list[tuple[object, ...]]:
    """Every answer of one sequence on one key: a fresh read, the burst, a denial, a cost above
    the burst, one nanosecond early, on time, a cost of 2 later, and recovery after idling."""
    emission = round(period_s * S / rate)
    steps = [(0, 0), *[(0, 1)] * burst, (0, 1), (0, burst + 1), (emission - 1, 1), (emission, 1)]
    steps += [(3 * emission, 2), (3 * emission + burst * emission + 1, 0)]
    limiter = native.GcraLimiter()
    answers: list[tuple[object, ...]] = []
    for at, cost in steps:
        d = limiter.check("k", rate, period_s, burst, cost=cost, now_ns=origin + at)
        answers.append((d.allowed, d.remaining, d.retry_after_s, d.reset_after_s))
    both = [("k", rate, period_s, burst), ("other", rate, period_s, burst)]
    answers += [(d.allowed, d.remaining) for d in limiter.peek_all(both, now_ns=origin + emission)]
    return answers


@pytest.mark.parametrize(("rate", "period_s", "burst"), LIMITS)
def test_every_answer_is_the_same_at_every_clock_origin(
    rate: float, period_s: float, burst: int
) -> None:
    reference = _transcript(1_000_000 * S, rate, period_s, burst)
    assert reference[0][:2] == (True, burst), "a fresh key holds its whole burst"
    assert reference[burst][:2] == (True, 0), "the burst is spent"
    assert reference[burst + 1][0] is False, "one more is refused"
    for origin in ORIGINS:
        assert _transcript(origin, rate, period_s, burst) == reference, f"origin {origin}"


def test_burst_then_one_per_interval(origin: int) -> None:
    limiter = native.GcraLimiter()
    allowed = [limiter.check("k", 10, 1.0, 10, now_ns=origin).allowed for _ in range(11)]
    assert allowed == [True] * 10 + [False]
    denied = limiter.check("k", 10, 1.0, 10, now_ns=origin)
    assert denied.retry_after_s == pytest.approx(0.1)
    assert limiter.check("k", 10, 1.0, 10, now_ns=origin + 100 * MS).allowed
    assert not limiter.check("k", 10, 1.0, 10, now_ns=origin + 150 * MS).allowed


def test_cost_zero_reads_and_cost_above_burst_changes_nothing(origin: int) -> None:
    limiter = native.GcraLimiter()
    fresh = limiter.check("k", 10, 1.0, 10, cost=0, now_ns=origin)
    assert (fresh.allowed, fresh.remaining, fresh.reset_after_s) == (True, 10, 0.0)
    assert len(limiter) == 0
    assert not limiter.check("k", 10, 1.0, 10, cost=11, now_ns=origin).allowed
    assert limiter.check("k", 10, 1.0, 10, cost=10, now_ns=origin).allowed


@pytest.mark.parametrize(
    ("rate", "period", "burst", "cost", "message"),
    [
        (0, 1.0, 1, 1, "rate"),
        (-3, 1.0, 1, 1, "rate"),
        (1, 0.0, 1, 1, "period"),
        (1, -1.0, 1, 1, "period"),
        (1, 1.0, 0, 1, "burst"),
        (1, 1.0, 1, -1, "cost"),
    ],
)
def test_invalid_parameters_raise_value_error(
    rate: float, period: float, burst: int, cost: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        native.GcraLimiter().check("k", rate, period, burst, cost=cost, now_ns=S)


def test_check_all_consumes_nothing_when_any_denies() -> None:
    limiter = native.GcraLimiter()
    limits = [("user:1:route", 100.0, 1.0, 100), ("model:image", 1.0, 1.0, 1)]
    assert all(d.allowed for d in limiter.check_all(limits, now_ns=S))
    wide, narrow = limiter.check_all(limits, now_ns=S)
    assert wide.allowed and not narrow.allowed
    assert wide.remaining == 99
    assert limiter.check("user:1:route", 100.0, 1.0, 100, cost=0, now_ns=S).remaining == 99
    with pytest.raises(ValueError, match="twice"):
        limiter.check_all([limits[0], limits[0]], now_ns=S)


def test_expired_keys_are_dropped() -> None:
    limiter = native.GcraLimiter()
    for i in range(100_000):
        limiter.check(f"user:{i}", 10, 1.0, 1, now_ns=S + i * MS)
    # Keys idle for more than one emission interval (100 ms) carry no state and get swept as the
    # shards grow, so far fewer than 100k remain.
    assert len(limiter) < 100_000
    limiter.sweep(now_ns=S + 200 * S)
    assert len(limiter) == 0


def test_default_clock_is_monotonic_ns() -> None:
    limiter = native.GcraLimiter()
    assert limiter.check("k", 1, 3600.0, 1).allowed
    denied = limiter.check("k", 1, 3600.0, 1)
    assert not denied.allowed
    assert 3599.0 < denied.retry_after_s <= 3600.0
    # Explicit now_ns on the same clock agrees.
    again = limiter.check("k", 1, 3600.0, 1, now_ns=native.monotonic_ns())
    assert not again.allowed


def test_threads_share_one_exact_budget() -> None:
    limiter = native.GcraLimiter()
    admitted = 0
    lock = threading.Lock()

    def worker() -> None:
        nonlocal admitted
        mine = sum(limiter.check("hot", 1, 60.0, 500, now_ns=S).allowed for _ in range(400))
        with lock:
            admitted += mine

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert admitted == 500


def test_peek_all_changes_nothing_and_raise_tat_only_moves_forward() -> None:
    limiter = native.GcraLimiter()
    limits = [("k", 10.0, 1.0, 2)]  # 100 ms apart, 2 at once
    assert limiter.peek_all(limits, now_ns=S)[0].allowed
    assert len(limiter) == 0
    # An authoritative store reports the TAT 300 ms ahead: one more request is 200 ms away.
    limiter.raise_tat("k", S + 300 * MS, now_ns=S)
    (denied,) = limiter.peek_all(limits, now_ns=S)
    assert not denied.allowed
    assert denied.retry_after_s == pytest.approx(0.2)
    assert limiter.peek_all(limits, now_ns=S + 200 * MS)[0].allowed
    # An older report never lowers what is known; one already in the past is not stored.
    limiter.raise_tat("k", S + 100 * MS, now_ns=S)
    assert not limiter.peek_all(limits, now_ns=S)[0].allowed
    limiter.raise_tat("gone", S - 1, now_ns=S)
    assert len(limiter) == 1
    with pytest.raises(ValueError, match="twice"):
        limiter.peek_all([*limits, *limits], now_ns=S)
