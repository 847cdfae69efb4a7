"""One contract for both backends: the embedded native limiter and the shared Redis limiter.

Both are driven by the same controlled clock, so their answers must match redis_rate's published
behaviour, and each other, to the microsecond, whatever the clock's origin: every sequence runs
with the clock at one second and at a few minutes (a monotonic clock just after boot) and at an
epoch-like value.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

import pytest
from redis.asyncio import Redis

from gateway.limiter import Check, Rule
from gateway.limiter.checks import Backend
from gateway.limiter.local import NativeBackend
from gateway.limiter.shared import RedisBackend

if TYPE_CHECKING:
    from tests.limiter.conftest import Clock

MS = 1_000_000
US = 1_000
S = 1_000_000_000
TEN_PER_SECOND = Rule(emission_us=100_000, burst=10, kind="admission", label="10/s")


@pytest.fixture(params=[S, 700 * S, 1_700_000_000 * S], ids=lambda ns: f"origin={ns // S}s")
def clock(request: pytest.FixtureRequest, make_clock: Callable[[int], Clock]) -> Clock:
    """The controlled clock, starting at each origin in turn."""
    return make_clock(request.param)


@pytest.fixture(params=["native", "redis"])
async def backend(
    request: pytest.FixtureRequest, clock: Clock, redis_url: str
) -> AsyncIterator[Backend]:
    """Each backend on the controlled clock."""
    if request.param == "native":
        yield NativeBackend(clock=clock)
        return
    shared = RedisBackend(Redis.from_url(redis_url), timeout_s=5.0, clock=clock)
    try:
        yield shared
    finally:
        await shared.aclose()


def check(prefix: str, name: str, rule: Rule = TEN_PER_SECOND) -> Check:
    return Check(f"{{{prefix}}}:{name}", rule)


async def test_redis_rate_sequence(backend: Backend, key_prefix: str, clock: Clock) -> None:
    key = [check(key_prefix, "user")]

    (d,) = (await backend.decide(key, 1)).decisions
    assert (d.allowed, d.remaining, d.retry_after_us, d.reset_after_us) == (True, 9, -1, 100_000)

    (d,) = (await backend.decide(key, 2)).decisions
    assert (d.allowed, d.remaining, d.reset_after_us) == (True, 7, 300_000)

    clock.advance(1 * MS)
    (d,) = (await backend.decide(key, 7)).decisions
    assert (d.allowed, d.remaining, d.reset_after_us) == (True, 0, 999_000)

    verdict = await backend.decide(key, 1000)
    (d,) = verdict.decisions
    assert (verdict.allowed, d.allowed, d.remaining) == (False, False, 0)
    assert d.retry_after_us == 99_999_000  # about 99-100 s, as redis_rate reports
    assert d.reset_after_us == 999_000
    assert verdict.retry_after_us == 99_999_000

    # A cost of 0 only reads: same state before and after, and it is always allowed.
    (d,) = (await backend.decide(key, 0)).decisions
    assert (d.allowed, d.remaining, d.reset_after_us) == (True, 0, 999_000)
    (d,) = (await backend.decide(key, 0)).decisions
    assert d.reset_after_us == 999_000


async def test_cost_zero_on_a_fresh_key_reads_a_full_burst(
    backend: Backend, key_prefix: str
) -> None:
    key = [check(key_prefix, "fresh")]
    for _ in range(3):
        (d,) = (await backend.decide(key, 0)).decisions
        assert (d.allowed, d.remaining, d.reset_after_us) == (True, 10, 0)


async def test_burst_then_exactly_one_per_interval(
    backend: Backend, key_prefix: str, clock: Clock
) -> None:
    key = [check(key_prefix, "burst")]
    allowed = [(await backend.decide(key)).allowed for _ in range(11)]
    assert allowed == [True] * 10 + [False]
    denied = await backend.decide(key)
    assert denied.retry_after_us == 100_000

    clock.advance(100 * MS - US)  # one microsecond early
    assert not (await backend.decide(key)).allowed
    clock.advance(US)
    on_time = await backend.decide(key)
    assert on_time.allowed and on_time.remaining == 0
    clock.advance(50 * MS)
    assert not (await backend.decide(key)).allowed
    clock.advance(50 * MS)
    assert (await backend.decide(key)).allowed


async def test_cost_above_burst_never_passes_and_takes_nothing(
    backend: Backend, key_prefix: str
) -> None:
    rule = Rule(emission_us=200_000, burst=3, kind="admission", label="5/s burst 3")
    key = [check(key_prefix, "big", rule)]
    verdict = await backend.decide(key, 4)
    assert not verdict.allowed
    assert verdict.retry_after_us == 200_000
    assert (await backend.decide(key, 3)).allowed, "the whole burst must still be there"


async def test_a_denial_consumes_from_no_limit(
    backend: Backend, key_prefix: str, clock: Clock
) -> None:
    wide = check(key_prefix, "wide", Rule(10_000, 100, "upstream", "100/s"))
    narrow = check(key_prefix, "narrow", Rule(1_000_000, 1, "model", "1/s"))
    first = await backend.decide([wide, narrow])
    assert first.allowed
    assert [d.remaining for d in first.decisions] == [99, 0]

    second = await backend.decide([wide, narrow])
    assert not second.allowed
    wide_d, narrow_d = second.decisions
    assert wide_d.allowed and wide_d.remaining == 99, "the wide limit must not be charged"
    assert not narrow_d.allowed and narrow_d.retry_after_us == 1_000_000
    assert [c.key for c, _ in second.denials()] == [narrow.key]
    assert (await backend.decide([wide], 0)).remaining == 99

    clock.advance(1_000 * MS)
    assert (await backend.decide([wide, narrow])).allowed


async def test_an_idle_key_recovers_its_full_burst(
    backend: Backend, key_prefix: str, clock: Clock
) -> None:
    key = [check(key_prefix, "idle")]
    for _ in range(10):
        await backend.decide(key)
    clock.advance(1_000 * MS)
    (d,) = (await backend.decide(key, 0)).decisions
    assert (d.remaining, d.reset_after_us) == (10, 0)
    clock.advance(60_000 * MS)
    assert (await backend.decide(key, 10)).allowed


async def test_the_same_key_twice_in_one_request_is_refused(
    backend: Backend, key_prefix: str
) -> None:
    key = check(key_prefix, "twice")
    with pytest.raises(ValueError, match="twice"):
        await backend.decide([key, key])


async def test_intervals_that_are_not_whole_milliseconds_stay_exact(
    backend: Backend, key_prefix: str, clock: Clock
) -> None:
    # 3 per second: 333_333 us apart; the third request of a burst of 1 lands on 666_666 us.
    rule = Rule(emission_us=333_333, burst=1, kind="admission", label="3/s")
    key = [check(key_prefix, "thirds", rule)]
    assert (await backend.decide(key)).allowed
    denied = await backend.decide(key)
    assert denied.retry_after_us == 333_333
    clock.advance(333_333 * US)
    assert (await backend.decide(key)).allowed
    clock.advance(333_332 * US)
    assert (await backend.decide(key)).retry_after_us == 1
