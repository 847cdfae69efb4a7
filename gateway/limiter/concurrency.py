"""Caps on RPCs in flight on one replica: replica-wide (load shedding), per user, and per
user's open streams (WatchJob, GenerateThumbnail).

Counted in this process alone, so they bound what this replica holds: a user whose calls a load
balancer spreads over N replicas may hold N times a per-user cap in the fleet. Pure and
synchronous (counters in dicts, no clock): the edge interceptor
(`gateway.rpc.interceptors.InFlightInterceptor`) takes a slot when an RPC starts, before its
request is read, and gives it back when the RPC's task ends, however it ends.
"""

from __future__ import annotations

import math

from gateway.config import ConcurrencySettings, Tier
from gateway.errors import Overloaded, TooManyConcurrentRpcs, TooManyStreams


class InFlight:
    """The RPCs in flight on this replica, by user, and the caps on them."""

    def __init__(self, settings: ConcurrencySettings) -> None:
        self._max = settings.max_rpcs_in_flight
        self._user_caps = dict(settings.user_rpcs)
        self._stream_caps = dict(settings.user_streams)
        self._retry_after_s = settings.retry_after_s
        #: RPCs in flight on this replica.
        self.total = 0
        #: User id -> RPCs in flight (streams included); users with none are absent.
        self._rpcs: dict[str, int] = {}
        #: User id -> streams open; users with none are absent.
        self._streams: dict[str, int] = {}

    def rpcs_of(self, user_id: str) -> int:
        """RPCs `user_id` has in flight on this replica."""
        return self._rpcs.get(user_id, 0)

    def streams_of(self, user_id: str) -> int:
        """Streams `user_id` has open on this replica."""
        return self._streams.get(user_id, 0)

    def acquire(self, user_id: str, tier: Tier, *, stream: bool) -> None:
        """Takes a slot for a new RPC of `user_id` at `tier` (`stream`: a server stream).

        Raises `Overloaded`, `TooManyConcurrentRpcs` or `TooManyStreams` (taking nothing) when
        a cap refuses it; each slot taken is given back by one `release`.
        """
        if self.total >= self._max:
            raise Overloaded(
                f"this gateway replica is at its limit of {self._max} RPCs in flight; retry in "
                f"{_seconds(self._retry_after_s)} s",
                retry_after_s=self._retry_after_s,
                metadata={"max_in_flight": str(self._max)},
            )
        rpcs = self._rpcs.get(user_id, 0)
        cap = self._user_caps.get(tier)
        if cap is not None and rpcs >= cap:
            raise TooManyConcurrentRpcs(
                f"this user has {rpcs} RPCs in flight on this gateway replica, the limit of "
                f"the {tier.value} tier; let one finish (or cancel one), then retry",
                retry_after_s=self._retry_after_s,
                metadata={"max_in_flight": str(cap)},
            )
        if stream:
            streams = self._streams.get(user_id, 0)
            stream_cap = self._stream_caps.get(tier)
            if stream_cap is not None and streams >= stream_cap:
                raise TooManyStreams(
                    f"this user has {streams} WatchJob and GenerateThumbnail streams open on "
                    f"this gateway replica, the limit of the {tier.value} tier; close one (watch "
                    "fewer jobs at once), then retry",
                    retry_after_s=self._retry_after_s,
                    metadata={"max_in_flight": str(stream_cap)},
                )
            self._streams[user_id] = streams + 1
        self._rpcs[user_id] = rpcs + 1
        self.total += 1

    def release(self, user_id: str, *, stream: bool) -> None:
        """Gives back the slot one `acquire` took for an RPC of `user_id` that has ended."""
        self.total -= 1
        _decrement(self._rpcs, user_id)
        if stream:
            _decrement(self._streams, user_id)


def _decrement(counts: dict[str, int], user_id: str) -> None:
    left = counts[user_id] - 1
    if left:
        counts[user_id] = left
    else:
        # Users with nothing in flight take no memory.
        del counts[user_id]


def _seconds(value: float) -> str:
    return f"{math.ceil(value * 1000) / 1000:g}"
