"""Budgets enforced before every upstream attempt, across the fleet.

**Reserve, then settle.** Before an attempt, its estimated cost (`gateway.budgets.estimate`) is
reserved against every budget that applies: the user's day and month budgets (their tier's,
with the user's override) and the fleet-wide daily cap of the model. A reservation must fit:
it is refused unless every budget's spend plus the estimate stays within its limit. After the
attempt, the reservation is replaced by the attempt's actual cost (from its `UsageRecord`, the
same the usage ledger gets); an attempt that cost nothing is so refunded. A run that makes
several calls reserves all of its first attempts at once (`RunBudget`), so it is admitted whole
or refused with nothing spent, like the limiter's advance charge.

**The overrun bound.** Spend is settled plus reserved; a reservation is admitted only while it
fits. After the last admission of a period nothing is admitted, and spend can only grow by
settlements that exceed their reservation. So a budget ends at most the sum, over the attempts
in flight at its last admission, of (actual cost - estimate) above its limit: never more than
the cost of those attempts, and nothing at all while estimates cover the actual costs.

**Where the spend lives.** Embedded (no Redis): in this process, exact for one replica. Shared:
in Redis with one script (`gateway.budgets.shared`), atomic across any number of replicas. A
user's budgets are one call (one slot); a model cap a second call in its own slot, after the
user's, whose reservation is refunded if the cap refuses.

**When Redis is in trouble** the limiter's circuit breaker (shared) and failure mode decide:
`local` reserves in process against each budget's remainder as this replica last saw it,
divided by the fleet's live size (`RateLimiter.replicas`); `open` allows and counts what it
spent without any check (`unaccounted_usd`); `closed` refuses with UNAVAILABLE. Whatever was
spent while Redis did not hear of it, and settlements Redis missed, are kept in a bounded
backlog and added to Redis once it answers again, so budgets are right after an outage.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from gateway.budgets import BudgetState
from gateway.budgets.backend import BudgetBackendError, Change, Hold
from gateway.budgets.embedded import EmbeddedBackend
from gateway.budgets.estimate import Estimator, to_nano, to_usd
from gateway.budgets.keys import model_budget_key, user_budget_key
from gateway.budgets.periods import Period, PeriodKind, period_of
from gateway.config import FailureMode, Settings, Tier
from gateway.errors import BudgetExceeded, GatewayError, Unavailable
from gateway.limiter import RateLimiter
from gateway.limiter.breaker import CircuitBreaker
from gateway.model import ModelRequest
from gateway.usage import PriceBook

if TYPE_CHECKING:
    from gateway.budgets.shared import RedisBudgetBackend
    from gateway.limiter.shared import RedisClient

log = logging.getLogger("gateway.budgets")

_NS_PER_MS = 1_000_000
#: Keys outlive their period by this much, so a settlement that comes late (an attempt that
#: started just before midnight) still finds its reservation.
KEY_GRACE_MS = 86_400_000
#: Most keys the `local` failure mode remembers the spend of (least recently seen dropped).
MAX_SEEN = 100_000
#: Most keys with spend Redis has not heard of yet; beyond, spend stays unaccounted.
MAX_BACKLOG = 100_000


class BudgetKind(StrEnum):
    """Which budget: what `BudgetState.kind` and the refusal's metadata say."""

    USER_DAY = "user_day"
    USER_MONTH = "user_month"
    MODEL_DAY = "model_day"


_WORDS = {
    BudgetKind.USER_DAY: "the user's daily budget",
    BudgetKind.USER_MONTH: "the user's monthly budget",
    BudgetKind.MODEL_DAY: "the fleet-wide daily cap on",
}


@dataclass(frozen=True, slots=True)
class Budget:
    """One budget in the current period: its limit in nano-USD and its key."""

    kind: BudgetKind
    #: The user id, or the model name of a fleet cap.
    subject: str
    limit: int
    period: Period
    key: str

    def state(self, spent: int) -> BudgetState:
        """How it stands with `spent` nano-USD."""
        return BudgetState(
            kind=self.kind.value,
            subject=self.subject,
            limit_usd=to_usd(self.limit),
            spent_usd=to_usd(spent),
            resets_at=self.period.end,
        )

    def describe(self) -> str:
        """E.g. "the user's daily budget" or "the fleet-wide daily cap on gemini-3.6-flash"."""
        words = _WORDS[self.kind]
        return f"{words} {self.subject}" if self.kind is BudgetKind.MODEL_DAY else words


class Mode(StrEnum):
    """How a reservation was decided, and so where it is settled."""

    #: By this process's own backend (no Redis configured).
    EMBEDDED = "embedded"
    #: In Redis, for the whole fleet.
    SHARED = "shared"
    #: Redis unreachable, failure mode `local`: this replica's share.
    LOCAL = "local"
    #: Redis unreachable, failure mode `open`: not checked at all.
    OPEN = "open"


@dataclass(slots=True)
class Reservation:
    """Nano-USD held on budgets for attempts not settled yet."""

    budgets: tuple[Budget, ...]
    amount: int
    mode: Mode

    def take(self, amount: int) -> Reservation:
        """Splits `amount` (at most what is left) off into a reservation of its own: one
        attempt's share of a run's advance reservation."""
        share = min(amount, self.amount)
        self.amount -= share
        return Reservation(self.budgets, share, self.mode)


def _usd(nano: int) -> str:
    """Nano-USD as an exact decimal string of USD (e.g. "0.0774")."""
    sign = "-" if nano < 0 else ""
    whole, frac = divmod(abs(nano), 1_000_000_000)
    text = f"{whole}.{frac:09d}".rstrip("0").rstrip(".")
    return sign + text


def _wait_words(seconds: float) -> str:
    minutes = int(seconds // 60)
    if minutes >= 120:
        return f"{minutes // 60} h {minutes % 60} min"
    return f"{minutes} min" if minutes else f"{seconds:.0f} s"


class Budgets:
    """Spend budgets for the pipeline and the reader for the usage API and metrics (module
    docstring). `redis`: the limiter's Redis client (None: embedded); `breaker` and `replicas`
    the limiter's; `clock`: wall-clock nanoseconds since the epoch (tests inject it)."""

    def __init__(
        self,
        settings: Settings,
        *,
        redis: RedisClient | None = None,
        breaker: CircuitBreaker | None = None,
        replicas: Callable[[], int] = lambda: 1,
        clock: Callable[[], int] | None = None,
    ) -> None:
        self._settings = settings.budgets
        self._prefix = settings.limiter.key_prefix
        self._failure_mode = settings.limiter.failure_mode
        self._retry_s = settings.limiter.probe_interval_s
        self._clock = clock or time.time_ns
        self._estimator = Estimator(settings.budgets.estimate, PriceBook(settings.gemini.prices))
        self._breaker = breaker
        self._replicas = replicas
        self._embedded = EmbeddedBackend(clock=self._clock)
        self._shared: RedisBudgetBackend | None = None
        if redis is not None:
            # Imported with Redis configured only (redis-py is heavy to import).
            from gateway.budgets.shared import RedisBudgetBackend

            self._shared = RedisBudgetBackend(
                redis, timeout_s=settings.limiter.command_timeout_s, breaker=breaker
            )
        #: The `local` failure mode's state; started afresh after every outage.
        self._fallback = EmbeddedBackend(clock=self._clock)
        self._degraded = False
        #: key -> spend as Redis last reported it.
        self._seen: OrderedDict[str, int] = OrderedDict()
        #: key -> [nano-USD Redis has not heard of, end of the key's period (ns)].
        self._backlog: dict[str, list[int]] = {}
        self._flush: asyncio.Task[None] | None = None
        #: USD spent by attempts no budget checked (Redis unreachable, failure mode `open`).
        self.unaccounted_usd = 0.0

    @classmethod
    def beside(
        cls, settings: Settings, limiter: RateLimiter, *, clock: Callable[[], int] | None = None
    ) -> Budgets:
        """The budgets of a gateway whose rate limiter is `limiter`: on its Redis client (when
        it has one), its circuit breaker and its live fleet size."""
        shared = limiter.shared
        return cls(
            settings,
            redis=None if shared is None else shared.client,
            breaker=limiter.breaker,
            replicas=lambda: limiter.replicas,
            clock=clock,
        )

    @property
    def enabled(self) -> bool:
        """Whether any budget is configured (if not, the pipeline skips budgets entirely)."""
        return self._settings.enabled

    @property
    def shared(self) -> RedisBudgetBackend | None:
        """The Redis backend, when configured (its counters feed benchmarks)."""
        return self._shared

    def estimate(self, request: ModelRequest) -> int:
        """One attempt of `request`, estimated in nano-USD."""
        return self._estimator.nano_usd(request)

    # --- which budgets ----------------------------------------------------------------------

    def _user_budgets(self, user_id: str, tier: Tier, now: int) -> list[Budget]:
        limits = self._settings.for_user(user_id, tier)
        budgets = []
        for kind, period_kind, usd in (
            (BudgetKind.USER_DAY, PeriodKind.DAY, limits.day_usd),
            (BudgetKind.USER_MONTH, PeriodKind.MONTH, limits.month_usd),
        ):
            if usd is not None:
                period = period_of(period_kind, now)
                key = user_budget_key(self._prefix, user_id, period)
                budgets.append(Budget(kind, user_id, to_nano(usd), period, key))
        return budgets

    def _model_budget(self, model: str, now: int) -> Budget | None:
        usd = self._settings.models.get(model)
        if usd is None:
            return None
        period = period_of(PeriodKind.DAY, now)
        key = model_budget_key(self._prefix, model, period)
        return Budget(BudgetKind.MODEL_DAY, model, to_nano(usd), period, key)

    @staticmethod
    def _ttl_ms(budget: Budget, now: int) -> int:
        return (budget.period.end_ns - now) // _NS_PER_MS + KEY_GRACE_MS

    # --- reserving ----------------------------------------------------------------------------

    async def reserve(
        self, user_id: str, tier: Tier, model: str, amount: int, count: int = 1
    ) -> Reservation | None:
        """Reserves `count` attempts of `amount` nano-USD each on every budget of `user_id` at
        `tier` and of `model`, all or nothing; None when no budget applies.

        Raises `BudgetExceeded` naming the budget that refused (with the time until its period
        resets), or `Unavailable` while Redis is unreachable in failure mode `closed`."""
        now = self._clock()
        users = self._user_budgets(user_id, tier, now)
        cap = self._model_budget(model, now)
        groups = [g for g in (users, [cap] if cap is not None else []) if g]
        if not groups:
            return None
        total = amount * count
        if self._shared is None:
            return self._reserve_in(self._embedded, groups, total, now, Mode.EMBEDDED)
        if not self._breaker_open():
            try:
                reservation = await self._reserve_shared(self._shared, groups, total, now)
            except BudgetBackendError:
                pass
            else:
                self._answered()
                return reservation
        return self._reserve_degraded(groups, total, now)

    def _breaker_open(self) -> bool:
        return self._breaker is not None and self._breaker.open

    def _reserve_in(
        self,
        backend: EmbeddedBackend,
        groups: Sequence[Sequence[Budget]],
        total: int,
        now: int,
        mode: Mode,
        limits: Sequence[int] | None = None,
    ) -> Reservation:
        budgets = [b for group in groups for b in group]
        limits = limits or [b.limit for b in budgets]
        holds = [
            Hold(b.key, total, limit, self._ttl_ms(b, now))
            for b, limit in zip(budgets, limits, strict=True)
        ]
        answer = backend.reserve_now(holds)
        if not answer.allowed:
            raise self._refusal(budgets, answer.spent, total, now, limits)
        return Reservation(tuple(budgets), total, mode)

    async def _reserve_shared(
        self,
        shared: RedisBudgetBackend,
        groups: Sequence[Sequence[Budget]],
        total: int,
        now: int,
    ) -> Reservation:
        """The user's budgets first (one slot), then the model's cap (its own); the first step
        is refunded when the second refuses or fails."""
        held: list[Budget] = []
        for group in groups:
            holds = [Hold(b.key, total, b.limit, self._ttl_ms(b, now)) for b in group]
            try:
                answer = await shared.reserve(holds)
            except BudgetBackendError:
                await self._refund_shared(held, total, now)
                raise
            self._remember(group, answer.spent)
            if not answer.allowed:
                await self._refund_shared(held, total, now)
                raise self._refusal(group, answer.spent, total, now)
            held.extend(group)
        return Reservation(tuple(held), total, Mode.SHARED)

    async def _refund_shared(self, budgets: Sequence[Budget], total: int, now: int) -> None:
        if not budgets or total == 0:
            return
        changes = [Change(b.key, -total, self._ttl_ms(b, now)) for b in budgets]
        assert self._shared is not None
        try:
            await self._shared.adjust(changes)
        except BudgetBackendError:
            self._queue(budgets, -total)

    def _reserve_degraded(
        self, groups: Sequence[Sequence[Budget]], total: int, now: int
    ) -> Reservation:
        """Redis did not answer: the limiter's failure mode decides."""
        self._degraded = True
        budgets = tuple(b for group in groups for b in group)
        if self._failure_mode is FailureMode.LOCAL:
            replicas = max(1, self._replicas())
            shares = [max(0, b.limit - self._seen.get(b.key, 0)) // replicas for b in budgets]
            return self._reserve_in(self._fallback, groups, total, now, Mode.LOCAL, shares)
        if self._failure_mode is FailureMode.OPEN:
            return Reservation(budgets, total, Mode.OPEN)
        raise Unavailable(
            "the shared spend budgets (Redis) are unreachable and limiter.failure_mode is "
            "'closed', so model calls are refused until Redis answers; retry shortly",
            retry_after_s=self._retry_s,
            metadata={"limiter_mode": "closed-fallback"},
        )

    def _refusal(
        self,
        budgets: Sequence[Budget],
        spent: Sequence[int],
        total: int,
        now: int,
        limits: Sequence[int] | None = None,
    ) -> BudgetExceeded:
        """The error of a refused reservation: the refusing budget that resets last (a retry
        before then would be refused again), and when that is."""
        limits = limits or [b.limit for b in budgets]
        refusing = [
            (b, s, limit)
            for b, s, limit in zip(budgets, spent, limits, strict=True)
            if s >= limit or s + total > limit
        ]
        budget, used, limit = max(refusing, key=lambda r: r[0].period.end_ns)
        share = limit != budget.limit
        wait_s = budget.period.seconds_left(now)
        resets = f"{budget.period.end:%Y-%m-%d %H:%M} UTC"
        what = f"{budget.describe()} (${_usd(budget.limit)})"
        if share:
            what += (
                f"; Redis is unreachable, so this replica may spend ${_usd(limit)} of what was left"
            )
        if total > budget.limit:
            message = (
                f"spend budget exceeded: this request's model calls are estimated at "
                f"${_usd(total)}, more than {what} allows in a whole period; it needs a larger "
                "budget"
            )
            retry_after: float | None = None
        else:
            message = (
                f"spend budget exceeded: {what} has ${_usd(max(0, limit - used))} left and this "
                f"request's model calls are estimated at ${_usd(total)}; it resets at {resets} "
                f"(in {_wait_words(wait_s)})"
            )
            retry_after = wait_s
        return BudgetExceeded(
            message,
            user_id=None if budget.kind is BudgetKind.MODEL_DAY else budget.subject,
            retry_after_s=retry_after,
            metadata={
                "budget": budget.kind.value,
                "subject": budget.subject,
                "limit_usd": _usd(budget.limit),
                "spent_usd": _usd(used),
                "estimate_usd": _usd(total),
                "resets_at": budget.period.end.isoformat().replace("+00:00", "Z"),
            },
        )

    # --- settling -----------------------------------------------------------------------------

    async def settle(self, reservation: Reservation, cost_usd: float) -> None:
        """Replaces what `reservation` holds with the actual `cost_usd` (0: a refund). Never
        raises for backend trouble: what Redis cannot take now is kept for later."""
        actual = to_nano(cost_usd)
        delta = actual - reservation.amount
        reservation.amount = 0
        mode = reservation.mode
        if mode is Mode.OPEN:
            self.unaccounted_usd += cost_usd
        if mode in (Mode.OPEN, Mode.LOCAL):
            # Redis never heard of this reservation: it learns of the cost once it answers.
            self._queue(reservation.budgets, actual)
        if delta == 0 or mode is Mode.OPEN:
            return
        now = self._clock()
        changes = [
            Change(b.key, delta, ttl)
            for b in reservation.budgets
            if (ttl := self._ttl_ms(b, now)) > 0
        ]
        if mode is Mode.EMBEDDED:
            self._embedded.adjust_now(changes)
        elif mode is Mode.LOCAL:
            self._fallback.adjust_now(changes)
        elif self._shared is not None and not self._breaker_open():
            try:
                await self._shared.adjust(changes)
            except BudgetBackendError:
                self._queue(reservation.budgets, delta)
            else:
                self._answered()
        else:
            self._queue(reservation.budgets, delta)

    async def release(self, reservation: Reservation) -> None:
        """Gives back what `reservation` holds (its attempt was not made)."""
        await self.settle(reservation, 0.0)

    # --- after an outage ----------------------------------------------------------------------

    def _remember(self, budgets: Sequence[Budget], spent: Sequence[int]) -> None:
        seen = self._seen
        for budget, value in zip(budgets, spent, strict=True):
            seen[budget.key] = value
            seen.move_to_end(budget.key)
        while len(seen) > MAX_SEEN:
            seen.popitem(last=False)

    def _queue(self, budgets: Sequence[Budget], delta: int) -> None:
        """Keeps `delta` for Redis, to be added once it answers again."""
        if delta == 0:
            return
        for budget in budgets:
            entry = self._backlog.get(budget.key)
            if entry is not None:
                entry[0] += delta
            elif len(self._backlog) < MAX_BACKLOG:
                self._backlog[budget.key] = [delta, budget.period.end_ns]
            else:
                log.warning("budgets: backlog full; spend on %s stays unknown to Redis", budget.key)

    def _answered(self) -> None:
        """Redis answered: the outage (if any) is over, so the next one starts from a fresh
        local state, and what Redis missed meanwhile is sent in the background."""
        if self._degraded:
            self._degraded = False
            self._fallback = EmbeddedBackend(clock=self._clock)
        if self._backlog and (self._flush is None or self._flush.done()):
            self._flush = asyncio.get_running_loop().create_task(
                self._flush_backlog(), name="viewbait-budget-backlog"
            )

    async def _flush_backlog(self) -> None:
        backlog, self._backlog = self._backlog, {}
        now = self._clock()
        changes = [
            Change(key, delta, (end - now) // _NS_PER_MS + KEY_GRACE_MS)
            for key, (delta, end) in backlog.items()
            if delta != 0 and (end - now) // _NS_PER_MS + KEY_GRACE_MS > 0
        ]
        if not changes or self._shared is None:
            return
        try:
            await self._shared.adjust(changes)
        except BudgetBackendError:
            for key, (delta, end) in backlog.items():
                entry = self._backlog.setdefault(key, [0, end])
                entry[0] += delta
            return
        log.info("budgets: Redis now holds the spend of %d budgets it missed", len(changes))

    async def aclose(self) -> None:
        """Sends what Redis missed, if it answers, and stops (before the Redis client closes)."""
        if self._flush is not None:
            await asyncio.gather(self._flush, return_exceptions=True)
        if self._backlog and self._shared is not None and not self._breaker_open():
            await self._flush_backlog()

    # --- reading (BudgetReader) ----------------------------------------------------------------

    async def user_budgets(self, user_id: str, tier: str) -> Sequence[BudgetState]:
        """The budgets that apply to the user now, with their spend (see `BudgetReader`)."""
        now = self._clock()
        budgets = self._user_budgets(user_id, Tier(tier), now)
        return await self._states(budgets)

    async def model_budgets(self) -> Sequence[BudgetState]:
        """The fleet-wide daily caps, one per capped model (see `BudgetReader`)."""
        now = self._clock()
        caps = [self._model_budget(model, now) for model in self._settings.models]
        return await self._states([b for b in caps if b is not None])

    async def _states(self, budgets: Sequence[Budget]) -> list[BudgetState]:
        if not budgets:
            return []
        keys = [b.key for b in budgets]
        spent: list[int] | None = None
        if self._shared is None:
            spent = await self._embedded.read(keys)
        elif not self._breaker_open():
            try:
                spent = await self._shared.read(keys)
            except BudgetBackendError:
                spent = None
            else:
                self._answered()
        if spent is None:
            # Redis is unreachable: what it last said, plus what it has not heard of yet.
            spent = [self._seen.get(k, 0) + (self._backlog.get(k) or [0])[0] for k in keys]
        return [b.state(s) for b, s in zip(budgets, spent, strict=True)]


class RunBudget:
    """The budgets one run's attempts reserve against (the pipeline makes one per run).

    A run with several first attempts (`OperationSpec.upstream_calls`) reserves them together
    before the first is made, each at the first one's estimate, and hands each its share; what
    is left when the run ends is given back (`close`). Retries and any further calls reserve
    one by one."""

    def __init__(self, budgets: Budgets, user_id: str, tier: Tier, calls: int = 1) -> None:
        self._budgets = budgets
        self._user_id = user_id
        self._tier = tier
        self._calls = calls
        self._lock = asyncio.Lock()
        self._reserved = False
        self._advance: Reservation | None = None
        self._share = 0
        self._prepaid = 0
        self._refused: GatewayError | None = None

    async def reserve(self, request: ModelRequest, attempt: int) -> Reservation | None:
        """The reservation of attempt `attempt` of `request` (None: no budget applies).
        Raises what `Budgets.reserve` raises."""
        budgets = self._budgets
        amount = budgets.estimate(request)
        if attempt == 1 and self._calls > 1:
            async with self._lock:
                if self._refused is not None:
                    raise self._refused
                if not self._reserved:
                    try:
                        self._advance = await budgets.reserve(
                            self._user_id, self._tier, request.model, amount, self._calls
                        )
                    except GatewayError as exc:
                        self._refused = exc
                        raise
                    self._reserved, self._share, self._prepaid = True, amount, self._calls
                if self._advance is None:
                    return None
                if self._prepaid > 0:
                    self._prepaid -= 1
                    return self._advance.take(self._share)
        return await budgets.reserve(self._user_id, self._tier, request.model, amount)

    async def settle(self, reservation: Reservation | None, cost_usd: float) -> None:
        """Settles one attempt's reservation at its actual cost."""
        if reservation is not None:
            await self._budgets.settle(reservation, cost_usd)

    async def release(self, reservation: Reservation | None) -> None:
        """Gives back the reservation of an attempt that was not made."""
        if reservation is not None:
            await self._budgets.release(reservation)

    async def close(self) -> None:
        """Gives back the advance shares no attempt used (the run ended early)."""
        advance, self._advance = self._advance, None
        if advance is not None and advance.amount > 0:
            await self._budgets.release(advance)


__all__ = ["Budget", "BudgetKind", "Budgets", "Mode", "Reservation", "RunBudget"]
