"""The in-process limiter: the native GCRA core, for one replica (or one replica's share)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from gateway import native
from gateway.limiter.checks import Check, Decision, Verdict


def _us(seconds: float) -> int:
    # The native side reports float seconds of integer nanoseconds; -1.0 means "allowed".
    return -1 if seconds < 0 else round(seconds * 1_000_000)


def decision_of(d: native.Decision) -> Decision:
    """A native decision in microseconds."""
    return Decision(d.allowed, d.remaining, _us(d.retry_after_s), _us(d.reset_after_s))


class NativeBackend:
    """GCRA state in this process (`native.GcraLimiter.check_all`): exact for a single replica.

    With `replicas` > 1 every rule is enforced at a 1/`replicas` share, which is how the shared
    limiter's `local` failure mode keeps a fleet near its limits without Redis. `clock` (integer
    nanoseconds) replaces the monotonic clock in tests.
    """

    def __init__(self, *, replicas: int = 1, clock: Callable[[], int] | None = None) -> None:
        if replicas < 1:
            raise ValueError("replicas must be at least 1")
        self._limiter = native.GcraLimiter()
        self._replicas = replicas
        self._clock = clock

    def decide_now(self, checks: Sequence[Check], cost: int = 1) -> Verdict:
        """`decide`, synchronously (it never waits)."""
        if self._replicas == 1:
            items = [c.native for c in checks]
        else:
            items = [Check(c.key, c.rule.shared_by(self._replicas)).native for c in checks]
        now = self._clock() if self._clock is not None else None
        decisions = self._limiter.check_all(items, cost, now)
        return Verdict.of(checks, [decision_of(d) for d in decisions])

    async def decide(self, checks: Sequence[Check], cost: int = 1) -> Verdict:
        """Decides one request of `cost` against every check; a denial consumes from none."""
        return self.decide_now(checks, cost)

    async def aclose(self) -> None:
        """Nothing to release."""
