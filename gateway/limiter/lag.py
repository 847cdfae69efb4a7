"""Loop lag: how long this event loop could not run anything, told apart from a slow Redis.

A Redis reply that arrives while the event loop is busy (a burst of requests, a blocking call,
the process descheduled by the OS) sits in the socket until the loop reads it. A plain deadline
fires in that same loop iteration and calls the request a timeout although Redis answered on
time; enough of those open the circuit breaker and the fleet stops sharing its limits exactly
when load peaks. So the shared limiter's deadlines count only *responsive* time: `LoopWatch`
ticks while calls are out, and every tick that ran late adds its lateness to the loop's stall
time, which deadlines (`lag_aware_timeout`) do not charge to Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

#: How often the watch ticks while somebody needs it.
TICK_S = 0.005
#: Lateness below this is the loop's ordinary jitter, not a stall.
TOLERANCE_S = 0.002
#: However stalled the loop, a call waits at most this long beyond its timeout: a loop that never
#: recovers must not keep requests waiting on Redis forever.
MAX_LAG_GRACE_S = 1.0


class LoopWatch:
    """Stall time of the running event loop, measured only while at least one user holds it.

    `stalled(now)` is monotone: the total seconds the loop was unable to run callbacks (ticks
    overdue by more than `TOLERANCE_S`), including a stall still visible as an overdue tick.
    """

    def __init__(self, tick_s: float = TICK_S, tolerance_s: float = TOLERANCE_S) -> None:
        self._tick_s = tick_s
        self._tolerance_s = tolerance_s
        self._users = 0
        self._due = 0.0
        self._stalled = 0.0
        self._handle: asyncio.TimerHandle | None = None

    def hold(self) -> None:
        """Somebody is waiting on I/O: keep measuring."""
        self._users += 1
        if self._handle is None:
            loop = asyncio.get_running_loop()
            self._due = loop.time() + self._tick_s
            self._handle = loop.call_at(self._due, self._tick)

    def release(self) -> None:
        """One user fewer; the watch stops ticking with none left."""
        self._users -= 1
        if self._users <= 0 and self._handle is not None:
            self._users = 0
            # A stall under way still counts: stall times only grow.
            self._stalled += self._overdue(asyncio.get_running_loop().time())
            self._handle.cancel()
            self._handle = None

    def stalled(self, now: float) -> float:
        """Seconds the loop has stalled so far (while held), the stall under way included."""
        return self._stalled + self._overdue(now)

    def _overdue(self, now: float) -> float:
        if self._handle is None:
            return 0.0
        late = now - self._due
        return late if late > self._tolerance_s else 0.0

    def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._stalled += self._overdue(now)
        self._due = now + self._tick_s
        self._handle = loop.call_at(self._due, self._tick)


@dataclass(slots=True)
class Mark:
    """When a request started waiting, in loop time and in the watch's stall time."""

    at: float
    stalled: float


@dataclass(slots=True)
class Expiry:
    """How a lag-aware deadline ended (set only when it fired)."""

    fired: bool = False
    #: The loop was responsive for the whole timeout: Redis really did not answer.
    responsive: bool = False


@contextlib.asynccontextmanager
async def lag_aware_timeout(
    watch: LoopWatch, mark: Mark, timeout_s: float, expiry: Expiry
) -> AsyncIterator[None]:
    """Raises `TimeoutError` once `timeout_s` of responsive loop time has passed since `mark`
    (or `timeout_s + MAX_LAG_GRACE_S` in all). `expiry` says afterwards whether the deadline
    fired and whether the loop was responsive meanwhile (only that is Redis's failure)."""
    loop = asyncio.get_running_loop()
    watch.hold()
    check: asyncio.TimerHandle | None = None
    try:
        async with asyncio.timeout(None) as timer:

            def check_now() -> None:
                nonlocal check
                now = loop.time()
                elapsed = now - mark.at
                responsive = elapsed - (watch.stalled(now) - mark.stalled)
                if responsive >= timeout_s or elapsed >= timeout_s + MAX_LAG_GRACE_S:
                    expiry.fired = True
                    expiry.responsive = responsive >= timeout_s
                    timer.reschedule(now)
                else:
                    # Give Redis the responsive time it has not had yet (a stalled loop's reply
                    # may already be in the socket: it is read as soon as the loop runs).
                    check = loop.call_at(now + timeout_s - responsive, check_now)

            check = loop.call_at(mark.at + timeout_s, check_now)
            yield
    finally:
        if check is not None:
            check.cancel()
        watch.release()
