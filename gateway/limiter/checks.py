"""What a limiter decides about: rules, keyed checks, decisions, and the backend interface.

Times are integer microseconds everywhere (the Redis script computes in Lua doubles, exact for
integers up to 2**53; the native limiter gets the same intervals in nanoseconds), so the embedded
and the shared limiter decide identically on the same sequence.

Rules are built once from the policy table; checks, decisions and verdicts are made per request,
so they are named tuples (cheap to build, immutable).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from gateway.config import MAX_EMISSION_US, MAX_LIMIT_SPAN_US, RateLimit


@dataclass(frozen=True, slots=True)
class Rule:
    """One GCRA limit: `burst` requests at once, then one every `emission_us`.

    `kind` ("admission", "upstream" or "model") goes to error metadata; `label` names the limit in
    the words a caller reads in a denial.
    """

    emission_us: int
    burst: int
    kind: str
    label: str
    #: `period_s` for `native.GcraLimiter` at rate 1: it rounds `period_s * 1e9` back to exactly
    #: `emission_us * 1000` nanoseconds (see MAX_EMISSION_US).
    native_period_s: float = field(init=False, repr=False, compare=False)
    #: "<emission_us> <burst>", as the Redis script reads a limit.
    spec: str = field(init=False, repr=False, compare=False)
    #: Computed once: a rule is hashed with every memoized decision (`gateway.limiter.shared`).
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 1 <= self.emission_us <= MAX_EMISSION_US or self.burst < 1:
            raise ValueError("a rule needs 1 <= emission_us <= MAX_EMISSION_US and burst >= 1")
        if self.emission_us * self.burst > MAX_LIMIT_SPAN_US:
            raise ValueError("emission_us * burst is too large to compute exactly")
        object.__setattr__(self, "native_period_s", self.emission_us / 1_000_000)
        object.__setattr__(self, "spec", f"{self.emission_us} {self.burst}")
        object.__setattr__(
            self, "_hash", hash((self.emission_us, self.burst, self.kind, self.label))
        )

    def __hash__(self) -> int:
        return self._hash

    @classmethod
    def of(cls, limit: RateLimit, kind: str, label: str) -> Rule:
        """The rule of a configured limit."""
        return cls(limit.emission_us, limit.burst, kind, f"{label}: {limit.describe()}")

    def shared_by(self, replicas: int) -> Rule:
        """This replica's share when `replicas` enforce the rule without shared state."""
        if replicas == 1:
            return self
        emission = min(self.emission_us * replicas, MAX_EMISSION_US)
        return Rule(emission, max(1, self.burst // replicas), self.kind, self.label)


class Check(NamedTuple):
    """A rule applied to one key (a user's route, a model...)."""

    key: str
    rule: Rule

    @property
    def native(self) -> tuple[str, float, float, int]:
        """`(key, rate, period_s, burst)` for `native.GcraLimiter`: one request per emission."""
        rule = self.rule
        return (self.key, 1.0, rule.native_period_s, rule.burst)


class Decision(NamedTuple):
    """One limit's answer to one request (redis_rate semantics)."""

    allowed: bool
    #: Requests of cost 1 that would still pass right now.
    remaining: int
    #: Microseconds until the same request would pass; -1 when allowed.
    retry_after_us: int
    #: Microseconds until the key is back to its full burst.
    reset_after_us: int


class Verdict(NamedTuple):
    """A request's answer from every limit it needed: it passes only if each one allows it, and
    a denied request consumed from none of them."""

    allowed: bool
    checks: tuple[Check, ...]
    #: One per check, in order; empty when no limit was consulted (fail-open).
    decisions: tuple[Decision, ...]

    @classmethod
    def of(cls, checks: Sequence[Check], decisions: Sequence[Decision]) -> Verdict:
        """The verdict of per-check decisions."""
        return cls(all(d.allowed for d in decisions), tuple(checks), tuple(decisions))

    @property
    def retry_after_us(self) -> int:
        """When denied, microseconds until every denying limit would let the request pass."""
        return max((d.retry_after_us for d in self.decisions if not d.allowed), default=0)

    @property
    def remaining(self) -> int | None:
        """Requests of cost 1 the tightest limit still allows (None when none was consulted)."""
        return min((d.remaining for d in self.decisions), default=None)

    def denials(self) -> list[tuple[Check, Decision]]:
        """The checks that denied, with their decisions."""
        return [(c, d) for c, d in zip(self.checks, self.decisions, strict=True) if not d.allowed]


class LimiterBackendError(Exception):
    """The backend could not decide in time (Redis unreachable, slow or failing)."""


class Backend(Protocol):
    """Where GCRA state lives: in process (native) or shared (Redis)."""

    async def decide(self, checks: Sequence[Check], cost: int = 1) -> Verdict:
        """Decides one request of `cost` against every check at once; a denial consumes from
        none. Raises `LimiterBackendError` when the state cannot be reached in time."""
        ...

    async def aclose(self) -> None:
        """Releases connections; the backend is not used afterwards."""
        ...
