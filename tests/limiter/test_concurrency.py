"""The caps on RPCs in flight as a pure counter (`gateway.limiter.concurrency.InFlight`): which
cap refuses, that a refusal takes nothing, and that every release gives back what its acquire
took. The real server hits each cap in `tests/rpc/test_edge_bounds.py`."""

from __future__ import annotations

import grpc
import pytest

from gateway.config import ConcurrencySettings, Tier
from gateway.errors import (
    ConcurrencyLimited,
    Overloaded,
    TooManyConcurrentRpcs,
    TooManyStreams,
)
from gateway.limiter.concurrency import InFlight
from gateway.rpc.status import status_code


def caps(**settings: object) -> InFlight:
    return InFlight(ConcurrencySettings.model_validate(settings))


def test_the_replica_cap_sheds_every_user_and_a_release_makes_room() -> None:
    in_flight = caps(max_rpcs_in_flight=2, retry_after_s=0.25)
    in_flight.acquire("a", Tier.PRO, stream=False)
    in_flight.acquire("b", Tier.FREE, stream=True)
    with pytest.raises(Overloaded) as refused:
        in_flight.acquire("c", Tier.PRO, stream=False)
    assert refused.value.retry_after_s == 0.25
    assert refused.value.metadata == {"max_in_flight": "2"}
    assert in_flight.total == 2 and in_flight.rpcs_of("c") == 0

    in_flight.release("b", stream=True)
    in_flight.acquire("c", Tier.PRO, stream=False)
    assert (in_flight.total, in_flight.streams_of("b"), in_flight.rpcs_of("b")) == (2, 0, 0)


def test_a_users_cap_follows_the_tier_of_the_call_and_spares_other_users() -> None:
    in_flight = caps(user_rpcs={Tier.FREE: 1, Tier.PRO: 3})
    in_flight.acquire("a", Tier.FREE, stream=False)
    with pytest.raises(TooManyConcurrentRpcs) as refused:
        in_flight.acquire("a", Tier.FREE, stream=True)
    assert "free tier" in refused.value.message
    assert in_flight.streams_of("a") == 0  # a refusal takes nothing
    in_flight.acquire("a", Tier.PRO, stream=False)  # the same user, a pro call
    in_flight.acquire("b", Tier.FREE, stream=False)
    assert (in_flight.rpcs_of("a"), in_flight.rpcs_of("b"), in_flight.total) == (2, 1, 3)


def test_streams_have_a_cap_of_their_own_and_count_as_rpcs() -> None:
    in_flight = caps(user_rpcs={Tier.PRO: 3}, user_streams={Tier.PRO: 2})
    for _ in range(2):
        in_flight.acquire("a", Tier.PRO, stream=True)
    with pytest.raises(TooManyStreams):
        in_flight.acquire("a", Tier.PRO, stream=True)
    in_flight.acquire("a", Tier.PRO, stream=False)  # a unary call: the RPC cap still has room
    with pytest.raises(TooManyConcurrentRpcs):
        in_flight.acquire("a", Tier.PRO, stream=False)
    for stream in (True, True, False):
        in_flight.release("a", stream=stream)
    assert (in_flight.total, in_flight.rpcs_of("a"), in_flight.streams_of("a")) == (0, 0, 0)


def test_a_tier_left_out_is_uncapped() -> None:
    in_flight = caps(user_rpcs={Tier.FREE: 1}, user_streams={})
    for _ in range(100):
        in_flight.acquire("a", Tier.PRO, stream=True)
    assert in_flight.streams_of("a") == 100


@pytest.mark.parametrize("refusal", [Overloaded, TooManyConcurrentRpcs, TooManyStreams])
def test_every_refusal_is_resource_exhausted_and_retryable(
    refusal: type[ConcurrencyLimited],
) -> None:
    error = refusal("full", retry_after_s=1.0)
    assert status_code(error) is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.retryable
