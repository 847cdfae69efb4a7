"""The gateway's rate limiter: policy to checks, the backend in use, and Redis trouble.

`RateLimiter` turns "this user calls this route" and "this call goes to this model" into keyed
checks from the policy table, asks the backend (embedded native, or shared Redis), and raises
`RateLimited` naming the limit and the retry-after when one denies. With Redis configured, a
circuit breaker and the configured failure mode decide what happens while Redis is unreachable;
the live mode is a property (health and metrics read it), every change is logged and announced to
listeners, and the breaker closes by itself once a background probe gets an answer. While Redis
answers, each replica keeps a heartbeat there (`gateway.limiter.fleet`), so the `local` failure
mode knows how many replicas share each limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from gateway.config import FailureMode, RateLimit, Settings, Tier
from gateway.errors import RateLimited, Unavailable
from gateway.limiter import keys
from gateway.limiter.breaker import CircuitBreaker
from gateway.limiter.checks import Check, LimiterBackendError, Rule, Verdict
from gateway.limiter.local import NativeBackend

if TYPE_CHECKING:
    from gateway.limiter.fleet import ReplicaRegistry
    from gateway.limiter.shared import RedisBackend, RedisClient
    from gateway.telemetry.metrics import LimiterMetrics

log = logging.getLogger("gateway.limiter")


class LimiterMode(StrEnum):
    """Which limiter is deciding right now."""

    #: No Redis configured: the native in-process limiter (exact for one replica).
    EMBEDDED = "embedded"
    #: Redis answers: limits are exact across the fleet.
    SHARED = "shared"
    #: Redis unreachable, failure mode `local`: each replica enforces its share natively (the
    #: limit divided by the fleet's last known size).
    LOCAL_FALLBACK = "local-fallback"
    #: Redis unreachable, failure mode `open`: everything is allowed.
    OPEN_FALLBACK = "open-fallback"
    #: Redis unreachable, failure mode `closed`: everything is refused with UNAVAILABLE.
    CLOSED_FALLBACK = "closed-fallback"


_FALLBACK_MODES = {
    FailureMode.LOCAL: LimiterMode.LOCAL_FALLBACK,
    FailureMode.OPEN: LimiterMode.OPEN_FALLBACK,
    FailureMode.CLOSED: LimiterMode.CLOSED_FALLBACK,
}


@dataclass(frozen=True, slots=True)
class _RouteRules:
    route_id: str
    admission: Rule | None
    upstream: Rule | None


#: Admission checks remembered per (operation, user, tier), up to this many; then all are
#: forgotten and remembered again as requests come. A request's checks are the same objects each
#: time, so a backend can keep what it derives from them (the shared one, its packed command).
KNOWN_ADMISSIONS = 4096


def _rule(limit: RateLimit | None, kind: str, label: str) -> Rule | None:
    return None if limit is None else Rule.of(limit, kind, label)


def _route_rules(settings: Settings) -> dict[tuple[str, Tier], _RouteRules]:
    """Every (operation, tier) pair's rules, compiled once."""
    compiled: dict[tuple[str, Tier], _RouteRules] = {}
    for operation, policy in settings.policies.items():
        for tier, limits in policy.limits.items():
            where = f"route {policy.route_id!r} for the {tier.value} tier"
            compiled[operation, tier] = _RouteRules(
                policy.route_id,
                _rule(limits.admission, "admission", f"request limit of {where}"),
                _rule(limits.upstream, "upstream", f"Gemini-call limit of {where}"),
            )
    return compiled


def _read_rules(settings: Settings) -> dict[tuple[str, Tier], Rule]:
    """Every (JobService read, tier) pair's rule, compiled once (RPC names as in `ReadLimits`)."""
    compiled: dict[tuple[str, Tier], Rule] = {}
    for tier, limits in settings.read_limits.items():
        for rpc in type(limits).model_fields:
            name = "".join(word.title() for word in rpc.split("_"))  # get_job -> GetJob
            where = f"{name} limit of the {tier.value} tier"
            rule = _rule(getattr(limits, rpc), "read", where)
            if rule is not None:
                compiled[rpc, tier] = rule
    return compiled


def redis_client(settings: Settings) -> RedisClient:
    """A Redis (or Redis Cluster) client for the limiter: a short connect timeout, no retries of
    its own, and no per-read timeouts, because every call already runs under one deadline of
    `command_timeout_s` (`RedisBackend`), which covers connecting, sending and reading."""
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    limiter = settings.limiter
    if limiter.redis_url is None:
        raise ValueError("limiter.redis_url is not set")
    url = limiter.redis_url.get_secret_value()
    connect_timeout = min(limiter.connect_timeout_s, limiter.command_timeout_s)
    if limiter.cluster:
        return RedisCluster.from_url(
            url,
            socket_connect_timeout=connect_timeout,
            socket_timeout=None,
            retry=Retry(NoBackoff(), 0),
        )
    return Redis.from_url(
        url,
        socket_connect_timeout=connect_timeout,
        socket_timeout=None,
        retry=Retry(NoBackoff(), 0),
    )


def _seconds(us: int) -> str:
    return f"{math.ceil(us / 1000) / 1000:g}"


class RateLimiter:
    """Admission and upstream limits for the pipeline, embedded or shared over Redis.

    `redis`: the shared backend's client (None: embedded). `clock` (integer nanoseconds) replaces
    every clock, Redis `TIME` included, in tests. `metrics` counts every decision and reports
    the mode.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        redis: RedisClient | None = None,
        clock: Callable[[], int] | None = None,
        metrics: LimiterMetrics | None = None,
    ) -> None:
        self._settings = settings.limiter
        self._metrics = metrics
        self._prefix = settings.limiter.key_prefix
        self._routes = _route_rules(settings)
        self._reads = _read_rules(settings)
        self._model_rules: dict[str, Rule | None] = {}
        self._admissions: dict[tuple[str, str, Tier], tuple[Check, ...]] = {}
        # Costs are KiB: the GCRA state stays in the same integer range as request counts.
        self._blob_rule = _rule(
            settings.store.blob_write_limit, "blob_bytes", "limit on input KiB written per user"
        )
        self._listeners: list[Callable[[LimiterMode], None]] = []
        self._probe: asyncio.Task[None] | None = None
        self._heartbeats: asyncio.Task[None] | None = None
        self._closed = False
        self._breaker = CircuitBreaker(settings.limiter.breaker_failures, self._breaker_changed)
        self._native = NativeBackend(clock=clock)
        # Enforces the shares `_shares` computes for the fleet's size at the time.
        self._fallback = NativeBackend(clock=clock)
        self._share_rules: dict[tuple[Rule, int], Rule] = {}
        self._shared: RedisBackend | None = None
        self._registry: ReplicaRegistry | None = None
        if redis is not None:
            # Imported with Redis configured only: redis-py is not on an embedded replica's
            # start-up path.
            from gateway.limiter.fleet import ReplicaRegistry
            from gateway.limiter.shared import RedisBackend

            self._registry = ReplicaRegistry(
                redis,
                settings.limiter.key_prefix,
                ttl_s=3 * settings.limiter.heartbeat_interval_s,
                timeout_s=settings.limiter.command_timeout_s,
            )
            self._shared = RedisBackend(
                redis,
                timeout_s=settings.limiter.command_timeout_s,
                breaker=self._breaker,
                clock=clock,
            )
        if metrics is not None:
            metrics.watch(self, LimiterMode)

    @classmethod
    def from_settings(
        cls, settings: Settings, *, metrics: LimiterMetrics | None = None
    ) -> RateLimiter:
        """Shared over Redis when `limiter.redis_url` is set, embedded otherwise. Connects lazily:
        a Redis that is down at startup puts the limiter in its failure mode, not the gateway."""
        if settings.limiter.redis_url is None:
            return cls(settings, metrics=metrics)
        return cls(settings, redis=redis_client(settings), metrics=metrics)

    async def start(self) -> None:
        """Loads the script into Redis; if Redis does not answer, starts in the failure mode
        (logged) and recovers by itself once it does. Nothing to do when embedded."""
        if self._shared is None:
            return
        try:
            await self._shared.load_script()
        except LimiterBackendError as exc:
            log.warning("rate limiter: %s at startup", exc)
            self._breaker.trip()
        if self._registry is not None and self._heartbeats is None:
            registry = self._registry
            with contextlib.suppress(LimiterBackendError):
                await registry.heartbeat()
            self._heartbeats = asyncio.get_running_loop().create_task(
                self._beat_forever(registry), name="viewbait-limiter-heartbeat"
            )

    async def _beat_forever(self, registry: ReplicaRegistry) -> None:
        while not self._closed:
            await asyncio.sleep(self._settings.heartbeat_interval_s)
            try:
                await registry.heartbeat()
            except LimiterBackendError as exc:
                # The breaker hears of trouble from decisions; the last count stays in use.
                log.debug("rate limiter: %s", exc)

    @property
    def replicas(self) -> int:
        """How many replicas the `local` failure mode assumes share each limit: the live count
        from the last heartbeat Redis answered, at least `limiter.replicas`."""
        live = 0 if self._registry is None or self._registry.live is None else self._registry.live
        return max(live, self._settings.replicas)

    # --- mode -----------------------------------------------------------------------------

    @property
    def mode(self) -> LimiterMode:
        """Which limiter is deciding right now (for health, metrics and logs)."""
        if self._shared is None:
            return LimiterMode.EMBEDDED
        if self._breaker.open:
            return _FALLBACK_MODES[self._settings.failure_mode]
        return LimiterMode.SHARED

    @property
    def breaker(self) -> CircuitBreaker:
        """The circuit breaker over Redis calls; the spend budgets share it, so one view of
        Redis's health decides both."""
        return self._breaker

    @property
    def shared(self) -> RedisBackend | None:
        """The Redis backend, when configured (its counters feed benchmarks and metrics)."""
        return self._shared

    def add_listener(self, listener: Callable[[LimiterMode], None]) -> None:
        """Calls `listener(mode)` on every mode change, on the event loop."""
        self._listeners.append(listener)

    def _breaker_changed(self, is_open: bool) -> None:
        mode = self.mode
        if is_open:
            log.warning(
                "rate limiter: Redis is unreachable; failure mode %r in effect until it answers",
                self._settings.failure_mode.value,
                extra={"limiter_mode": mode.value},
            )
            if self._probe is None or self._probe.done():
                self._probe = asyncio.get_running_loop().create_task(self._probe_until_closed())
        else:
            log.warning(
                "rate limiter: Redis answers again; limits are shared",
                extra={"limiter_mode": mode.value},
            )
        for listener in self._listeners:
            listener(mode)

    async def _probe_until_closed(self) -> None:
        assert self._shared is not None
        while self._breaker.open and not self._closed:
            await asyncio.sleep(self._settings.probe_interval_s)
            with contextlib.suppress(LimiterBackendError):
                await self._shared.ping()
                self._breaker.record_success()

    async def probe(self) -> LimiterMode:
        """Asks Redis now (the health service's active probe, so an idle replica notices an
        outage too): a PING that fails counts like a failed decision, one that answers like a
        successful one. Returns the mode after it; nothing to ask when embedded or while the
        breaker's own prober is at work."""
        shared = self._shared
        if shared is not None and not self._breaker.open and not self._closed:
            try:
                await shared.ping()
            except LimiterBackendError:
                self._breaker.record_failure()
            else:
                self._breaker.record_success()
        return self.mode

    # --- deciding -------------------------------------------------------------------------

    async def admit(self, operation: str, user_id: str, tier: Tier) -> Verdict | None:
        """Charges one request of `user_id` to `operation`'s admission limit for `tier`.

        Raises `RateLimited` when denied (or `Unavailable` in failure mode `closed` while Redis is
        unreachable); returns None when the tier has no admission limit on the route.
        """
        checks = self._admissions.get((operation, user_id, tier))
        if checks is None:
            rules = self._routes.get((operation, tier))
            if rules is None or rules.admission is None:
                return None
            key = keys.admission_key(self._prefix, user_id, rules.route_id)
            checks = (Check(key, rules.admission),)
            if len(self._admissions) >= KNOWN_ADMISSIONS:
                self._admissions.clear()
            self._admissions[operation, user_id, tier] = checks
        return await self.decide(checks)

    async def admit_read(self, rpc: str, user_id: str, tier: Tier) -> Verdict | None:
        """Charges one JobService read (`rpc`: `get_job`, `list_jobs`, `watch_job`,
        `cancel_job`) of `user_id` to its limit for `tier`; raises `RateLimited` when denied,
        returns None when the tier has no limit on it."""
        rule = self._reads.get((rpc, tier))
        if rule is None:
            return None
        return await self.decide([Check(keys.read_key(self._prefix, user_id, rpc), rule)])

    async def check_upstream(
        self, operation: str, user_id: str, tier: Tier, model: str, calls: int = 1
    ) -> Verdict | None:
        """Charges `calls` Gemini calls to the user's upstream limit on the route and to the
        model's fleet-wide limit, together: a denial by either charges neither."""
        checks: list[Check] = []
        rules = self._routes.get((operation, tier))
        if rules is not None and rules.upstream is not None:
            key = keys.upstream_key(self._prefix, model, user_id, rules.route_id)
            checks.append(Check(key, rules.upstream))
        model_rule = self._model_rule(model)
        if model_rule is not None:
            checks.append(Check(keys.model_key(self._prefix, model), model_rule))
        if not checks:
            return None
        return await self.decide(checks, cost=calls)

    async def charge_blob_bytes(self, user_id: str, nbytes: int) -> Verdict | None:
        """Charges `nbytes` (rounded up to KiB) about to be written to the blob store to the
        user's blob write limit; raises `RateLimited` when it refuses them."""
        rule = self._blob_rule
        if rule is None or nbytes <= 0:
            return None
        key = keys.blob_bytes_key(self._prefix, user_id)
        return await self.decide([Check(key, rule)], cost=-(-nbytes // 1024))

    def _model_rule(self, model: str) -> Rule | None:
        try:
            return self._model_rules[model]
        except KeyError:
            limit = self._settings.model_limit(model)
            rule = _rule(limit, "model", f"fleet-wide limit on calls to {model}")
            self._model_rules[model] = rule
            return rule

    async def decide(self, checks: Sequence[Check], cost: int = 1) -> Verdict:
        """Decides one request against `checks`; raises `RateLimited` when any denies."""
        try:
            verdict = await self._decide(checks, cost)
        except Unavailable:
            if self._metrics is not None:
                self._metrics.unavailable(checks)
            raise
        if self._metrics is not None:
            self._metrics.decided(verdict)
        if not verdict.allowed:
            raise _denial(verdict)
        return verdict

    async def _decide(self, checks: Sequence[Check], cost: int) -> Verdict:
        shared = self._shared
        if shared is None:
            return self._native.decide_now(checks, cost)
        if not self._breaker.open:
            try:
                return await shared.decide(checks, cost)
            except LimiterBackendError:
                pass
        failure_mode = self._settings.failure_mode
        if failure_mode is FailureMode.LOCAL:
            return self._fallback.decide_now(self._shares(checks), cost)
        if failure_mode is FailureMode.OPEN:
            return Verdict(True, tuple(checks), ())
        raise Unavailable(
            "the shared rate limiter (Redis) is unreachable and limiter.failure_mode is 'closed', "
            "so requests are refused until it answers; retry shortly",
            retry_after_s=self._settings.probe_interval_s,
            metadata={"limiter_mode": LimiterMode.CLOSED_FALLBACK.value},
        )

    def _shares(self, checks: Sequence[Check]) -> list[Check]:
        """This replica's share of each check, for the fleet's size right now."""
        replicas = self.replicas
        shares: list[Check] = []
        for check in checks:
            share = self._share_rules.get((check.rule, replicas))
            if share is None:
                share = self._share_rules[check.rule, replicas] = check.rule.shared_by(replicas)
            shares.append(Check(check.key, share))
        return shares

    async def aclose(self) -> None:
        """Stops probing and heartbeats, leaves the fleet's count and closes the Redis
        connections."""
        self._closed = True
        for task in (self._probe, self._heartbeats):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._registry is not None and not self._breaker.open:
            await self._registry.leave()
        if self._shared is not None:
            await self._shared.aclose()


def _denial(verdict: Verdict) -> RateLimited:
    """The error a denied request answers with: which limits, and when to come back."""
    denials = verdict.denials()
    retry_us = verdict.retry_after_us
    limits = "; ".join(check.rule.label for check, _ in denials)
    return RateLimited(
        f"rate limit exceeded ({limits}); retry in {_seconds(retry_us)} s",
        retry_after_s=retry_us / 1_000_000,
        metadata={
            "limit": ",".join(check.rule.kind for check, _ in denials),
            "retry_after_ms": str(math.ceil(retry_us / 1000)),
        },
    )
