"""Property: on the same request sequence under the same clock, the shared Redis limiter (with its
local deny mirror) and the embedded native limiter give the same answers, field for field, from
any clock origin (one second after boot as well as an epoch-like clock)."""

from __future__ import annotations

import asyncio
import uuid

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from gateway.limiter import Check, Rule, Verdict
from gateway.limiter.local import NativeBackend
from gateway.limiter.shared import RedisBackend

rules = st.builds(
    Rule,
    emission_us=st.integers(1, 2_000_000),
    burst=st.integers(1, 12),
    kind=st.just("admission"),
    label=st.just("generated"),
)
#: (microseconds to wait first, which keys the request needs, its cost)
steps = st.lists(
    st.tuples(
        st.one_of(st.just(0), st.integers(0, 3_000_000)),
        st.sets(st.integers(0, 2), min_size=1, max_size=3),
        st.integers(0, 4),
    ),
    min_size=1,
    max_size=40,
)
#: Clock origins in nanoseconds: smaller than most generated windows (up to 24 s), and large.
origins = st.sampled_from([10**9, 700 * 10**9, 1_700_000_000 * 10**9])


def _compare(native: Verdict, shared: Verdict, step: int) -> None:
    assert native.allowed == shared.allowed, f"step {step}: {native} vs {shared}"
    assert native.decisions == shared.decisions, f"step {step}: {native} vs {shared}"


async def _run(
    redis_url: str,
    key_rules: list[Rule],
    sequence: list[tuple[int, set[int], int]],
    origin_ns: int = 1_700_000_000 * 10**9,
) -> int:
    """Plays `sequence` against both limiters from `origin_ns`, comparing every answer; returns
    how many requests the shared limiter's mirror denied without Redis."""
    clock_ns = [origin_ns]

    def clock() -> int:
        return clock_ns[0]

    prefix = f"vbtest:{uuid.uuid4().hex[:12]}"
    checks = [Check(f"{{{prefix}}}:k{i}", rule) for i, rule in enumerate(key_rules)]
    native = NativeBackend(clock=clock)
    shared = RedisBackend(Redis.from_url(redis_url), timeout_s=5.0, clock=clock)
    try:
        for step, (wait_us, which, cost) in enumerate(sequence):
            clock_ns[0] += wait_us * 1000
            request = [checks[i] for i in sorted(which)]
            _compare(native.decide_now(request, cost), await shared.decide(request, cost), step)
        return shared.local_denials
    finally:
        await shared.aclose()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key_rules=st.lists(rules, min_size=3, max_size=3), sequence=steps, origin_ns=origins)
def test_native_and_redis_agree(
    redis_url: str,
    key_rules: list[Rule],
    sequence: list[tuple[int, set[int], int]],
    origin_ns: int,
) -> None:
    asyncio.run(_run(redis_url, key_rules, sequence, origin_ns))


def test_the_mirror_answers_repeated_denials_identically(redis_url: str) -> None:
    """A flood on an exhausted key: Redis is asked once, the mirror answers the rest, and the
    answers are still exactly the native limiter's."""
    rule = Rule(emission_us=1_000_000, burst=2, kind="admission", label="1/s")
    sequence: list[tuple[int, set[int], int]] = [(0, {0}, 1)] * 50 + [(1_000_000, {0}, 1)] * 5
    local_denials = asyncio.run(_run(redis_url, [rule, rule, rule], sequence))
    assert local_denials >= 47
