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
from typing import Any, TypeVar

T = TypeVar("T")

#: How often the watch ticks while somebody needs it.
TICK_S = 0.005
#: Lateness below this is the loop's ordinary jitter, not a stall.
TOLERANCE_S = 0.002
#: However stalled the loop, a call waits at most this long beyond its timeout: a loop that never
#: recovers must not keep requests waiting on Redis forever.
MAX_LAG_GRACE_S = 1.0


class LoopWatch:
    """Stall time of the running event loop, measured only while at least one user holds it,
    and the deadlines of calls out (`within`), checked at every tick.

    `stalled(now)` is monotone: the total seconds the loop was unable to run callbacks (ticks
    overdue by more than `TOLERANCE_S`) while held, including a stall still visible as an
    overdue tick. The tick is not cancelled when the last user leaves: it lapses at its next
    run, so a watch held and released once per request costs no timer churn.
    """

    def __init__(self, tick_s: float = TICK_S, tolerance_s: float = TOLERANCE_S) -> None:
        self._tick_s = tick_s
        self._tolerance_s = tolerance_s
        self._users = 0
        self._due = 0.0
        self._stalled = 0.0
        self._handle: asyncio.TimerHandle | None = None
        self._deadlines: set[_Deadline] = set()

    def hold(self) -> float:
        """Somebody is waiting on I/O: keep measuring. Returns the loop's time now."""
        self._users += 1
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._handle is None:
            self._due = now + self._tick_s
            self._handle = loop.call_at(self._due, self._tick)
        elif self._users == 1:
            # The tick of an earlier hold has not lapsed yet; a stall while nobody held the
            # watch is not counted.
            self._due = max(self._due, now)
        return now

    def release(self) -> None:
        """One user fewer; with none left, stall time stops growing (the tick lapses)."""
        if self._users == 1:
            # A stall under way still counts: stall times only grow.
            self._stalled += self._overdue(asyncio.get_running_loop().time())
        self._users = max(0, self._users - 1)

    def stalled(self, now: float) -> float:
        """Seconds the loop has stalled so far (while held), the stall under way included."""
        return self._stalled + self._overdue(now)

    def _overdue(self, now: float) -> float:
        if self._handle is None or self._users == 0:
            return 0.0
        late = now - self._due
        return late if late > self._tolerance_s else 0.0

    def _tick(self) -> None:
        if self._users == 0:
            self._handle = None
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._stalled += self._overdue(now)
        self._due = now + self._tick_s
        self._handle = loop.call_at(self._due, self._tick)
        if self._deadlines:
            for deadline in tuple(self._deadlines):
                deadline.check(now, self._stalled)


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


def _responsive_left(
    mark: Mark, timeout_s: float, now: float, stalled: float, expiry: Expiry
) -> float:
    """Responsive seconds left at `now` of a `timeout_s` deadline counted from `mark` (with
    the watch's stall time `stalled` then), or 0.0 once it has passed: `timeout_s` of
    responsive time, or `timeout_s + MAX_LAG_GRACE_S` in all; `expiry` records how it did."""
    elapsed = now - mark.at
    responsive = elapsed - (stalled - mark.stalled)
    if responsive >= timeout_s or elapsed >= timeout_s + MAX_LAG_GRACE_S:
        expiry.fired = True
        expiry.responsive = responsive >= timeout_s
        return 0.0
    return timeout_s - responsive


@dataclass(slots=True, eq=False)
class _Deadline:
    """A call's future that fails with `TimeoutError` once `timeout_s` of responsive loop time
    has passed since `mark` (or `timeout_s + MAX_LAG_GRACE_S` in all)."""

    future: asyncio.Future[Any]
    mark: Mark
    timeout_s: float
    expiry: Expiry

    def check(self, now: float, stalled: float) -> None:
        if self.future.done():
            return
        if not _responsive_left(self.mark, self.timeout_s, now, stalled, self.expiry):
            self.future.set_exception(TimeoutError())


async def within(
    watch: LoopWatch, future: asyncio.Future[T], mark: Mark, timeout_s: float, expiry: Expiry
) -> T:
    """`future`'s result, or `TimeoutError` (the future failed with it) once `timeout_s` of
    responsive loop time has passed since `mark`, as `lag_aware_timeout` decides, checked at
    the watch's ticks (so up to `TICK_S` late): no timer of its own, which a call per request
    would pay for. Cancelling the caller cancels `future`."""
    deadline = _Deadline(future, mark, timeout_s, expiry)
    now = watch.hold()
    watch._deadlines.add(deadline)
    try:
        deadline.check(now, watch.stalled(now))
        return await future
    finally:
        watch._deadlines.discard(deadline)
        watch.release()


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
                left = _responsive_left(mark, timeout_s, now, watch.stalled(now), expiry)
                if not left:
                    timer.reschedule(now)
                else:
                    # Give Redis the responsive time it has not had yet (a stalled loop's reply
                    # may already be in the socket: it is read as soon as the loop runs).
                    check = loop.call_at(now + left, check_now)

            check = loop.call_at(mark.at + timeout_s, check_now)
            yield
    finally:
        if check is not None:
            check.cancel()
        watch.release()
