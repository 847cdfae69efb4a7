"""Prometheus metrics (the official prometheus-client), served on their own HTTP port.

`GatewayMetrics` holds every metric of one gateway process in a registry of its own (not the
client's global default one), so several gateways in one process (tests, benchmarks) never
collide. Its parts each serve one layer: `rpc` (the logging interceptor), `execution` (the
executor's cache and coalescing), `upstream` (every Gemini attempt) and `savings` (what the
cache and coalescing avoided paying), both fed by the usage ledger's records (`observe_usage`),
`limiter`, `jobs` and `store`, and `budgets` (the fleet-wide caps). Every name starts with
`viewbait_`, carries its unit, and has bounded labels: operations, models, methods, status
codes, error reasons and limit kinds, never a user id.
The full list with meanings: docs/observability.md.

The request path pays one dict lookup and one increment per counter: each label set's child is
bound once (`prometheus_client`'s `.labels()` validates and locks on every call) and kept.

Each process, `serve` and `worker` alike, serves its own `/metrics` (`MetricsServer`, on
`metrics.host`:`metrics.port`) and is its own scrape target. Counters and histograms count what
that process did; sum them over targets. Gauges read from shared state (queue depth, budgets)
are the same in every process: aggregate them with `max()`, not `sum()`. Those are refreshed by
`refresh_forever` every `metrics.refresh_interval_s`; everything else is live.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Generic, TypeVar

import grpc
from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.aiohttp import make_aiohttp_handler
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from gateway.budgets import BudgetReader, BudgetState
from gateway.errors import Unavailable
from gateway.model import CACHE_HIT, UsageRecord

if TYPE_CHECKING:
    from gateway.config import Settings
    from gateway.limiter import LimiterMode, RateLimiter
    from gateway.limiter.checks import Check, Verdict
    from gateway.store.base import JobStore
    from gateway.store.memory import MemoryStore
    from gateway.store.postgres.pool import Pool

log = logging.getLogger(__name__)

#: gRPC calls: cache hits answer in well under a millisecond, long-polls wait up to 25 s and
#: streams last longer.
RPC_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
#: One Gemini attempt: a short text answer takes a fraction of a second, an image up to a minute.
UPSTREAM_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
#: One job attempt: one or more Gemini calls plus the store's writes.
JOB_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)

#: The kinds of `viewbait_upstream_tokens_total`, priced as `gateway.usage.cost_usd` prices them.
TOKEN_KINDS = ("input", "cached_input", "output", "thinking", "image_output")
#: The statuses `viewbait_job_queue_depth` reports (the active ones).
QUEUE_STATUSES = ("queued", "running")

M = TypeVar("M", bound=MetricWrapperBase)


class Children(Generic[M]):
    """The label children of one metric, each bound once and kept: `children[values]`."""

    __slots__ = ("_bound", "_metric")

    def __init__(self, metric: M) -> None:
        self._metric = metric
        self._bound: dict[tuple[str, ...], M] = {}

    def __getitem__(self, values: tuple[str, ...]) -> M:
        try:
            return self._bound[values]
        except KeyError:
            child = self._bound[values] = self._metric.labels(*values)
            return child

    def bind(self, values: Iterable[tuple[str, ...]]) -> None:
        """Creates these label sets now, at zero, so they are exported before their first event
        (a series that appears only with its first event hides that event from `rate()`)."""
        for value in values:
            self[value]


def counters(
    registry: CollectorRegistry, name: str, documentation: str, labels: Sequence[str]
) -> Children[Counter]:
    """A labelled counter of `registry`, its children bound once each."""
    return Children(Counter(name, documentation, labels, registry=registry))


def gauges(
    registry: CollectorRegistry, name: str, documentation: str, labels: Sequence[str]
) -> Children[Gauge]:
    """A labelled gauge of `registry`, its children bound once each."""
    return Children(Gauge(name, documentation, labels, registry=registry))


def histograms(
    registry: CollectorRegistry,
    name: str,
    documentation: str,
    labels: Sequence[str],
    *,
    buckets: Sequence[float],
) -> Children[Histogram]:
    """A labelled histogram of `registry`, its children bound once each."""
    return Children(Histogram(name, documentation, labels, buckets=buckets, registry=registry))


def _split_method(path: str) -> tuple[str, str]:
    """`/viewbait.ai.v1.GatewayService/AnalyzeVideo` -> (service, method)."""
    service, _, method = path.lstrip("/").rpartition("/")
    return service, method


class RpcMetrics:
    """gRPC calls to the gateway's own services, by service, method and status code."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._handled = counters(
            registry,
            "viewbait_rpcs",
            "gRPC calls of the gateway's services that finished, by status code",
            ["service", "method", "code"],
        )
        self._duration = histograms(
            registry,
            "viewbait_rpc_duration_seconds",
            "Time from the call's arrival to its last message or status",
            ["service", "method"],
            buckets=RPC_BUCKETS,
        )
        #: Method path -> (its duration child, its counter child by status code).
        self._methods: dict[str, tuple[Histogram, dict[grpc.StatusCode, Counter]]] = {}

    def declare(self, paths: Iterable[str]) -> None:
        """Exports every method's OK count at zero before its first call. (Its duration
        histogram appears with the first call: 18 series per method would make every scrape of
        an idle gateway several times longer.)"""
        for path in paths:
            self._handled[(*_split_method(path), grpc.StatusCode.OK.name)]

    def finished(self, path: str, code: grpc.StatusCode, seconds: float) -> None:
        """One call of `path` ended with `code` after `seconds`."""
        known = self._methods.get(path)
        if known is None:
            known = self._methods[path] = (self._duration[_split_method(path)], {})
        duration, codes = known
        duration.observe(seconds)
        counter = codes.get(code)
        if counter is None:
            counter = codes[code] = self._handled[(*_split_method(path), code.name)]
        counter.inc()


class _OperationCounters:
    """The request-path counters of one operation."""

    __slots__ = ("coalesced", "hot_hits", "misses", "pending", "store_hits")

    def __init__(self, metrics: ExecutionMetrics, operation: str) -> None:
        self.hot_hits = metrics.hits_by[(operation, "hot")]
        self.store_hits = metrics.hits_by[(operation, "store")]
        self.misses = metrics.misses_by[(operation,)]
        self.coalesced = metrics.coalesced_by[(operation,)]
        self.pending = metrics.pending_by[(operation,)]


class ExecutionMetrics:
    """How operation requests were answered (the executor): each cacheable request counts once,
    as a hit, a miss, a coalesced join or a pending answer."""

    def __init__(self, registry: CollectorRegistry, operations: Iterable[str]) -> None:
        self.hits_by = counters(
            registry,
            "viewbait_cache_hits",
            "Cacheable requests answered from the result cache (layer hot: this process's "
            "in-memory copy; store: the store's row)",
            ["operation", "layer"],
        )
        self.misses_by = counters(
            registry,
            "viewbait_cache_misses",
            "Cacheable requests whose own upstream work produced the answer",
            ["operation"],
        )
        self.coalesced_by = counters(
            registry,
            "viewbait_coalesced_joins",
            "Cacheable requests answered by work another request started (on this replica "
            "or on another one), at no upstream cost of their own",
            ["operation"],
        )
        self.pending_by = counters(
            registry,
            "viewbait_pending_answers",
            "Unary requests answered with a pending job handle after the long-poll window",
            ["operation"],
        )
        self._operations: dict[str, _OperationCounters] = {}
        for operation in operations:
            self.of(operation)

    def of(self, operation: str) -> _OperationCounters:
        """The counters of `operation` (bound on first use)."""
        counters = self._operations.get(operation)
        if counters is None:
            counters = self._operations[operation] = _OperationCounters(self, operation)
        return counters

    def answered(self, operation: str, *, cached: bool, coalesced: bool) -> None:
        """A cacheable request got its result from the store's cache (`cached`), from work it
        joined (`coalesced`), or from its own work (neither)."""
        counters = self.of(operation)
        if cached:
            counters.store_hits.inc()
        elif coalesced:
            counters.coalesced.inc()
        else:
            counters.misses.inc()


class UpstreamMetrics:
    """Every Gemini attempt (a `UsageRecord`): outcome, latency, tokens and cost. `routes`: the
    (model, operation) pairs the configuration calls, exported at zero from the start."""

    def __init__(self, registry: CollectorRegistry, routes: Iterable[tuple[str, str]]) -> None:
        self._attempts = counters(
            registry,
            "viewbait_upstream_attempts",
            "Gemini attempts, retries included, by outcome (ok, or the error's reason)",
            ["model", "outcome"],
        )
        self._duration = histograms(
            registry,
            "viewbait_upstream_attempt_duration_seconds",
            "Duration of one Gemini attempt, failed ones included",
            ["model"],
            buckets=UPSTREAM_BUCKETS,
        )
        self._tokens = counters(
            registry,
            "viewbait_upstream_tokens",
            "Tokens of Gemini attempts by kind (input: prompt tokens not served from "
            "Gemini's cache; cached_input; output: text; thinking; image_output)",
            ["model", "operation", "kind"],
        )
        self._cost = counters(
            registry,
            "viewbait_upstream_cost_usd",
            "What Gemini attempts cost in USD at the configured prices",
            ["model", "operation"],
        )
        #: (model, operation, outcome) -> the children one record of that kind touches.
        self._bound: dict[tuple[str, str, str], tuple[Counter, Histogram, tuple[Counter, ...]]] = {}
        for model, operation in routes:
            self._children(model, operation, "ok")
            self._cost[(model, operation)]

    def _children(
        self, model: str, operation: str, outcome: str
    ) -> tuple[Counter, Histogram, tuple[Counter, ...]]:
        bound = self._bound.get((model, operation, outcome))
        if bound is None:
            tokens = tuple(self._tokens[(model, operation, kind)] for kind in TOKEN_KINDS)
            bound = self._bound[(model, operation, outcome)] = (
                self._attempts[(model, outcome)],
                self._duration[(model,)],
                tokens,
            )
        return bound

    def attempt(self, record: UsageRecord) -> None:
        """Counts one attempt."""
        operation = record.labels.operation
        attempts, duration, tokens = self._children(record.model, operation, record.outcome)
        attempts.inc()
        duration.observe(record.duration_s)
        usage = record.usage
        cached = min(usage.cached_prompt_tokens, usage.prompt_tokens)
        counts = (
            usage.prompt_tokens - cached,
            cached,
            usage.output_tokens,
            usage.thinking_tokens,
            usage.image_output_tokens,
        )
        for counter, count in zip(tokens, counts, strict=True):
            if count:
                counter.inc(count)
        if record.cost_usd:
            self._cost[(record.model, operation)].inc(record.cost_usd)


class SavingsMetrics:
    """What the cache and coalescing avoided paying: the price of the upstream work each cache
    hit or coalesced join would otherwise have needed."""

    #: `source` values: a result-cache hit, or a join of work already under way.
    SOURCES = ("cache", "coalescing")

    def __init__(self, registry: CollectorRegistry, operations: Iterable[str]) -> None:
        self._saved = counters(
            registry,
            "viewbait_saved_cost_usd",
            "USD the cache (source cache) and coalescing (source coalescing) avoided "
            "paying Gemini, priced as the upstream work each answer would have needed",
            ["operation", "source"],
        )
        self._saved.bind((op, source) for op in operations for source in self.SOURCES)

    def saved(self, operation: str, usd: float, *, source: str) -> None:
        """Adds `usd` avoided by one answer of `operation` (`source`: "cache" or "coalescing")."""
        if source not in self.SOURCES:
            raise ValueError(f"unknown savings source {source!r}; one of {self.SOURCES}")
        if usd > 0:
            self._saved[(operation, source)].inc(usd)


class LimiterMetrics:
    """Rate-limit decisions by limit kind and outcome, and which limiter decides."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._decisions = counters(
            registry,
            "viewbait_limiter_decisions",
            "Rate-limit checks by limit (admission, upstream, model, blob_bytes) and outcome "
            "(allowed: charged; denied: this limit refused the request; unavailable: the "
            "shared limiter was unreachable with failure mode closed)",
            ["limit", "outcome"],
        )
        self._decisions.bind(
            (kind, outcome)
            for kind in ("admission", "upstream", "model")
            for outcome in ("allowed", "denied")
        )
        self._mode = Gauge(
            "viewbait_limiter_mode",
            "1 for the limiter deciding right now (embedded, shared, local-fallback, "
            "open-fallback, closed-fallback), 0 for the others",
            ["mode"],
            registry=registry,
        )

    def decided(self, verdict: Verdict) -> None:
        """One request's verdict: every limit charged when it passed, else those that refused."""
        if verdict.allowed:
            for check in verdict.checks:
                self._decisions[(check.rule.kind, "allowed")].inc()
            return
        for check, decision in zip(verdict.checks, verdict.decisions, strict=True):
            if not decision.allowed:
                self._decisions[(check.rule.kind, "denied")].inc()

    def unavailable(self, checks: Sequence[Check]) -> None:
        """A request refused because the shared limiter cannot be reached (failure mode closed)."""
        for check in checks:
            self._decisions[(check.rule.kind, "unavailable")].inc()

    def watch(self, limiter: RateLimiter, modes: Iterable[LimiterMode]) -> None:
        """Reports `limiter.mode` at every scrape."""
        for mode in modes:
            self._mode.labels(mode.value).set_function(_is_mode(limiter, mode))


def _is_mode(limiter: RateLimiter, mode: LimiterMode) -> Callable[[], float]:
    return lambda: 1.0 if limiter.mode is mode else 0.0


class JobMetrics:
    """Background work on this process: job attempts, retries, lease rescues, and the queue."""

    def __init__(self, registry: CollectorRegistry, operations: Iterable[str]) -> None:
        operations = list(operations)
        self._attempts = histograms(
            registry,
            "viewbait_job_attempt_duration_seconds",
            "Duration of job attempts this process's workers ran, by how they ended "
            "(succeeded, failed: retried or failed for good, stopped: cancelled, handed "
            "back or its lease lost)",
            ["operation", "outcome"],
            buckets=JOB_BUCKETS,
        )
        self._retries = counters(
            registry,
            "viewbait_job_retries",
            "Failed job attempts queued again for a later retry, by the error's reason",
            ["operation", "reason"],
        )
        self.rescues = Counter(
            "viewbait_job_rescues",
            "Executions whose lease lapsed that this process re-queued (or failed after their "
            "last attempt)",
            registry=registry,
        )
        self._depth = gauges(
            registry,
            "viewbait_job_queue_depth",
            "Active executions in the store by status and operation (the same in every "
            "process sharing the store: aggregate with max)",
            ["status", "operation"],
        )
        self._depth.bind((status, op) for status in QUEUE_STATUSES for op in operations)
        self._depth_seen: set[tuple[str, str]] = set()

    def attempt(self, operation: str, outcome: str, seconds: float) -> None:
        """One job attempt ran for `seconds` and ended as `outcome`."""
        self._attempts[(operation, outcome)].observe(seconds)

    def retried(self, operation: str, reason: str) -> None:
        """A failed attempt was queued again."""
        self._retries[(operation, reason)].inc()

    def rescued(self, count: int) -> None:
        """`count` lapsed leases were rescued."""
        if count:
            self.rescues.inc(count)

    def set_queue_depth(self, depth: Mapping[tuple[str, str], int]) -> None:
        """The store's active executions by (status, operation); pairs left out are zero."""
        for pair in self._depth_seen - depth.keys():
            self._depth[pair].set(0)
        for pair, count in depth.items():
            self._depth[pair].set(count)
        self._depth_seen = set(depth)


class StoreMetrics:
    """The PostgreSQL store's circuit and connection pool, or the embedded store's bounded
    memory (its result cache and usage ledger), read at every scrape."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def watch_embedded(self, store: MemoryStore) -> None:
        """Reads the embedded `store`'s bounds at every scrape."""
        self._registry.register(_EmbeddedStoreCollector(store))

    def watch(self, pool: Pool) -> None:
        """Reads `pool` at every scrape."""
        registry = self._registry
        Gauge(
            "viewbait_store_circuit_open",
            "1 while store calls fail at once after a connection failure (the circuit is open)",
            registry=registry,
        ).set_function(lambda: 1.0 if pool.circuit_open else 0.0)
        connections = Gauge(
            "viewbait_store_pool_connections",
            "Connections of the store's pool by state (in_use, idle)",
            ["state"],
            registry=registry,
        )
        connections.labels("in_use").set_function(lambda: pool.connections()[0])
        connections.labels("idle").set_function(lambda: pool.connections()[1])
        Gauge(
            "viewbait_store_pool_max_connections",
            "Most connections the store's pool opens",
            registry=registry,
        ).set_function(lambda: pool.max_connections)


class _EmbeddedStoreCollector(Collector):
    """What the embedded store holds against its bounds (`gateway.store.memory`)."""

    def __init__(self, store: MemoryStore) -> None:
        self._store = store

    def collect(self) -> Iterator[Metric]:
        store = self._store
        yield GaugeMetricFamily(
            "viewbait_store_embedded_cache_bytes",
            "Bytes of result-cache rows the embedded store holds (as its budget counts them)",
            value=store.result_bytes,
        )
        yield GaugeMetricFamily(
            "viewbait_store_embedded_cache_max_bytes",
            "The embedded store's result-cache budget (VIEWBAIT_STORE__EMBEDDED_CACHE_MAX_BYTES)",
            value=store.results_max_bytes,
        )
        yield GaugeMetricFamily(
            "viewbait_store_embedded_cache_rows",
            "Result-cache rows the embedded store holds",
            value=store.result_count,
        )
        yield CounterMetricFamily(
            "viewbait_store_embedded_cache_evictions",
            "Result-cache rows the embedded store evicted (least recently used) for its budget",
            value=store.results_evicted,
        )
        yield CounterMetricFamily(
            "viewbait_store_embedded_cache_refused",
            "Results larger than the embedded store's whole cache budget (served, not kept)",
            value=store.results_refused,
        )
        yield GaugeMetricFamily(
            "viewbait_store_embedded_usage_rows",
            "Raw usage-ledger rows the embedded store holds (at most "
            "VIEWBAIT_STORE__EMBEDDED_USAGE_MAX_ROWS)",
            value=store.usage_row_count,
        )
        yield CounterMetricFamily(
            "viewbait_store_embedded_usage_folded_rows",
            "Raw usage-ledger rows the embedded store folded into daily totals for its bound",
            value=store.usage_rows_folded,
        )


class BudgetMetrics:
    """The fleet-wide budget caps per model, as a `BudgetReader` reports them."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._remaining = gauges(
            registry,
            "viewbait_budget_remaining_usd",
            "USD left in a fleet-wide budget cap this period (the same in every process: "
            "aggregate with max)",
            ["budget", "model"],
        )
        self._limit = gauges(
            registry,
            "viewbait_budget_limit_usd",
            "USD a fleet-wide budget cap allows per period",
            ["budget", "model"],
        )

    def set_states(self, states: Iterable[BudgetState]) -> None:
        """The caps as they stand now."""
        for state in states:
            self._remaining[(state.kind, state.subject)].set(state.remaining_usd)
            self._limit[(state.kind, state.subject)].set(state.limit_usd)


class GatewayMetrics:
    """Every metric of one gateway process, in a registry of its own (module docstring).

    `routes`: the (model, operation) pairs the configuration calls; their series, and those of
    every operation, are exported at zero from the start.
    """

    def __init__(self, routes: Iterable[tuple[str, str]] = ()) -> None:
        routes = sorted(set(routes))
        operations = sorted({operation for _, operation in routes})
        # No `_created` series beside every counter and histogram: Prometheus does not need
        # them, and they would double the exposition. (A switch of the client's, for the
        # process: the gateway is the only user of prometheus-client in it.)
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=True)
        # The client's standard process, platform and garbage-collector metrics, which its
        # default registry would have carried.
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.rpc = RpcMetrics(self.registry)
        self.execution = ExecutionMetrics(self.registry, operations)
        self.upstream = UpstreamMetrics(self.registry, routes)
        self.savings = SavingsMetrics(self.registry, operations)
        self.limiter = LimiterMetrics(self.registry)
        self.jobs = JobMetrics(self.registry, operations)
        self.store = StoreMetrics(self.registry)
        self.budgets = BudgetMetrics(self.registry)

    def observe_usage(self, record: UsageRecord) -> None:
        """Counts one usage-ledger record as it is recorded (`StoreUsageSink.add_observer`): an
        upstream attempt, or what a cache hit or coalesced join saved. The metrics never wait
        for the ledger, nor depend on its writes succeeding."""
        if record.upstream:
            self.upstream.attempt(record)
        else:
            source = "cache" if record.outcome == CACHE_HIT else "coalescing"
            self.savings.saved(record.labels.operation, record.saved_usd, source=source)

    @classmethod
    def from_settings(cls, settings: Settings) -> GatewayMetrics:
        """Metrics with every configured operation and its model exported from the start."""
        return cls(
            (settings.model_name(policy), operation)
            for operation, policy in settings.policies.items()
        )

    def exposition(self) -> bytes:
        """The metrics in Prometheus's text format, as `/metrics` serves them by default."""
        return generate_latest(self.registry)


class MetricsServer:
    """`GET /metrics` over HTTP on its own port, served on the gateway's event loop (every
    gauge read at scrape time reads loop-owned state without a lock)."""

    def __init__(self, metrics: GatewayMetrics, host: str, port: int) -> None:
        self._host = host
        self._requested_port = port
        app = web.Application()
        # Prometheus's Accept header chooses the format (OpenMetrics or the text format).
        app.router.add_get("/metrics", make_aiohttp_handler(metrics.registry))
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        #: The bound port once started.
        self.port = 0

    async def start(self) -> int:
        """Binds and serves; returns the port. Raises `OSError` when the address is taken."""
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._requested_port, reuse_address=True)
        try:
            await site.start()
        except OSError:
            await self._runner.cleanup()
            raise
        self.port = int(self._runner.addresses[0][1])
        return self.port

    async def stop(self) -> None:
        """Stops serving."""
        await self._runner.cleanup()


async def refresh_forever(
    metrics: GatewayMetrics,
    store: JobStore,
    budgets: BudgetReader | None,
    interval_s: float,
    *,
    refreshed: Callable[[], None] | None = None,
) -> None:
    """Every `interval_s`: the queue depth from the store (one grouped count) and, given a
    reader, the fleet-wide budget caps; `refreshed()` after each round (tests). A source that
    fails keeps its last values (logged once per outage). Runs until cancelled."""
    failing: set[str] = set()
    while True:
        for source, refresh in (("queue depth", _refresh_queue), ("budgets", _refresh_budgets)):
            try:
                await refresh(metrics, store, budgets)
            except Exception as exc:
                # A gauge left stale is better than metrics that stop: the store's health and
                # circuit say why.
                if source not in failing:
                    why = exc.message if isinstance(exc, Unavailable) else repr(exc)
                    log.warning("metrics: %s not refreshed: %s", source, why)
                failing.add(source)
            else:
                failing.discard(source)
        if refreshed is not None:
            refreshed()
        await asyncio.sleep(interval_s)


async def _refresh_queue(
    metrics: GatewayMetrics, store: JobStore, _budgets: BudgetReader | None
) -> None:
    metrics.jobs.set_queue_depth(
        {(status.value, op): count for (status, op), count in (await store.queue_depth()).items()}
    )


async def _refresh_budgets(
    metrics: GatewayMetrics, _store: JobStore, budgets: BudgetReader | None
) -> None:
    if budgets is not None:
        metrics.budgets.set_states(await budgets.model_budgets())


__all__ = [
    "BudgetMetrics",
    "ExecutionMetrics",
    "GatewayMetrics",
    "JobMetrics",
    "LimiterMetrics",
    "MetricsServer",
    "RpcMetrics",
    "SavingsMetrics",
    "StoreMetrics",
    "UpstreamMetrics",
    "refresh_forever",
]
