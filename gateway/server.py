"""The gateway's gRPC server: one lifecycle (build, register, start, serve, graceful stop).

With nothing configured it serves on 127.0.0.1 with the embedded backends and the offline Gemini
emulator started in-process (local mode, and it says so loudly); with `VIEWBAIT_GEMINI__API_KEY`
set it calls real Gemini. Settings unsafe to serve with are refused before anything starts
(`gateway.config.deployment_problems`), and the listener is bound first, so a port in use ends
start-up before any backend is touched. With `VIEWBAIT_STORE__DATABASE_URL` set, results, jobs
and the usage ledger live in PostgreSQL, shared by every replica; each replica also runs the
periodic cleanup of expired rows and the rescue of executions whose lease lapsed. The standard
`OTEL_*` variables turn on OpenTelemetry tracing (`gateway.telemetry.tracing`), flushed at stop.
`viewbait-gateway worker` runs the same runtime without the gRPC listener: job workers and
maintenance only. With `VIEWBAIT_METRICS__PORT` set, either serves Prometheus metrics of its own
on that port (`gateway.telemetry.metrics`). With `VIEWBAIT_TLS__CERT_FILE` and
`VIEWBAIT_TLS__KEY_FILE` the gRPC listener serves TLS (mutual with `VIEWBAIT_TLS__CLIENT_CA_FILE`),
its certificate re-read when the files change (`gateway.tls`); the metrics port stays plain HTTP.

Start-up registers each cleanup on one `contextlib.AsyncExitStack` as it creates the resource,
so a stop undoes start-up in reverse by construction, and a start that fails half-way stops what
it had started before it raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from pydantic import SecretStr
from viewbait.ai.v1 import (
    gateway_service_pb2,
    job_service_pb2,
    job_service_pb2_grpc,
    usage_service_pb2,
    usage_service_pb2_grpc,
)

from gateway.auth import Authenticator
from gateway.budgets.enforcement import Budgets
from gateway.config import (
    Backend,
    ConfigError,
    ReflectionMode,
    Settings,
    auth_configured,
    check_deployment,
    gemini_backend,
    is_loopback,
)
from gateway.deferred_client import DeferredClient, import_in_thread
from gateway.execution import Executor, Pipeline
from gateway.jobs import JobService, OperationRunner, WorkerPool, rescue_leases
from gateway.jobs.batcher import Batcher
from gateway.limiter import LimiterMode, RateLimiter
from gateway.limiter.concurrency import InFlight
from gateway.rpc import gateway_service, reflection
from gateway.rpc import health as rpc_health
from gateway.rpc.gateway_service import GatewayServicer
from gateway.rpc.interceptors import (
    AuthInterceptor,
    DecodingInterceptor,
    ErrorMappingInterceptor,
    GatewayInterceptors,
    InFlightInterceptor,
    LoggingInterceptor,
    RequestContextInterceptor,
    RpcLayers,
    guarded_prefixes,
)
from gateway.rpc.job_service import JobServicer
from gateway.rpc.usage_service import UsageServicer
from gateway.store import MemoryStore, Store, create_store
from gateway.store.blobs import BlobStore, create_blob_store
from gateway.store.ledger import StoreUsageSink
from gateway.store.maintenance import run_cleanup
from gateway.telemetry import tracing
from gateway.usage_report import UsageReporter

if TYPE_CHECKING:
    from gateway.emulator import EmulatorServer
    from gateway.gemini import GeminiClient
    from gateway.telemetry.metrics import GatewayMetrics
    from gateway.tls import CertificateWatcher

log = logging.getLogger("gateway.server")

#: The service token of local mode (loopback listener + emulator, no auth configured). Documented
#: in the README so grpcurl commands work as written; refused anywhere else.
LOCAL_DEV_SERVICE_TOKEN = "local-dev-service-token"

#: Health-check name of the rate limiter: NOT_SERVING while it refuses every request (Redis
#: unreachable with `limiter.failure_mode` closed), SERVING otherwise. Its mode is also logged on
#: every change (`limiter_mode`); an idle replica pings Redis every `limiter.probe_interval_s`.
LIMITER_HEALTH_SERVICE = "viewbait.ai.v1.Limiter"

#: Health-check name of the result and job store: NOT_SERVING while PostgreSQL does not answer
#: (probed every `execution.rescue_interval_s`; cacheable requests then run uncached if allowed).
STORE_HEALTH_SERVICE = "viewbait.ai.v1.Store"

#: Health-check name of the model backend: NOT_SERVING while Gemini refuses the gateway's API key
#: (learned from traffic, and probed every `gemini.credentials_check_interval_s`).
UPSTREAM_HEALTH_SERVICE = "viewbait.ai.v1.Upstream"

_SERVICES = (
    gateway_service_pb2.DESCRIPTOR.services_by_name["GatewayService"],
    job_service_pb2.DESCRIPTOR.services_by_name["JobService"],
    usage_service_pb2.DESCRIPTOR.services_by_name["UsageService"],
)
_SERVICE_NAMES = tuple(service.full_name for service in _SERVICES)


class GatewayServer:
    """A configured gateway: its gRPC server, health, and the runtime behind the servicers.

    `listen=False` is the worker mode (`viewbait-gateway worker`): the same runtime, job
    workers and maintenance tasks, without the gRPC listener. `clock` is the spend budgets'
    wall clock in nanoseconds since the epoch (None: the system's; tests inject it).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        listen: bool = True,
        clock: Callable[[], int] | None = None,
    ) -> None:
        self.settings = settings
        self._listen = listen
        self._clock = clock
        self.port = 0
        #: The port of `/metrics` once serving (0: metrics off).
        self.metrics_port = 0
        self._metrics: GatewayMetrics | None = None
        self._server: aio.Server | None = None
        #: The listener's TLS certificate, re-read when its files change (None: cleartext).
        self._tls: CertificateWatcher | None = None
        #: The RPCs in flight on this replica and their caps (counted by the listener).
        self._in_flight = InFlight(settings.concurrency)
        #: Who is calling (built with the listener; it owns the JWKS fetcher).
        self._authenticator: Authenticator | None = None
        self._health = rpc_health.HealthServicer()
        self._emulator: EmulatorServer | None = None
        self._client: DeferredClient | None = None
        self._limiter: RateLimiter | None = None
        self._budgets: Budgets | None = None
        self._health_updates: set[asyncio.Task[None]] = set()
        #: Component health service -> whether it serves; the overall health follows from it.
        self._components = {
            LIMITER_HEALTH_SERVICE: True,
            STORE_HEALTH_SERVICE: True,
            UPSTREAM_HEALTH_SERVICE: True,
        }
        self._store: Store | None = None
        self._usage: StoreUsageSink | None = None
        self._blobs: BlobStore | None = None
        self._executor: Executor | None = None
        self._workers: WorkerPool | None = None
        self._batcher: Batcher | None = None
        #: What a stop undoes, in reverse order of start-up (None: nothing started).
        self._stack: contextlib.AsyncExitStack | None = None
        #: The drain's grace for the stop under way (`stop(grace)`).
        self._grace = settings.server.shutdown_grace_s

    @property
    def store(self) -> Store | None:
        """The result and job store once started."""
        return self._store

    @property
    def usage(self) -> StoreUsageSink | None:
        """The usage ledger's writer once started: `add_observer` sees every record (upstream
        attempts and savings) as it is recorded; `flush` writes what is queued."""
        return self._usage

    @property
    def blobs(self) -> BlobStore | None:
        """The blob store once started."""
        return self._blobs

    @property
    def workers(self) -> WorkerPool | None:
        """The job workers once started."""
        return self._workers

    @property
    def batcher(self) -> Batcher | None:
        """The Batch API delivery of jobs once started (None on a replica without workers)."""
        return self._batcher

    @property
    def executor(self) -> Executor | None:
        """The cache and coalescing layer once started (its `stats` say what it did)."""
        return self._executor

    @property
    def in_flight(self) -> InFlight:
        """The RPCs of the gateway's services in flight on this replica, by user."""
        return self._in_flight

    @property
    def limiter(self) -> RateLimiter | None:
        """The rate limiter once started (its `mode` says which limiter decides right now)."""
        return self._limiter

    @property
    def budgets(self) -> Budgets | None:
        """The spend budgets once started: what the pipeline enforces, and the
        `gateway.budgets.BudgetReader` the usage API and metrics read."""
        return self._budgets

    @property
    def metrics(self) -> GatewayMetrics | None:
        """This process's Prometheus metrics once started (None: `metrics.port` unset)."""
        return self._metrics

    @property
    def tls(self) -> CertificateWatcher | None:
        """The listener's TLS certificate and its reloads (None: the listener is cleartext)."""
        return self._tls

    @property
    def emulator(self) -> EmulatorServer | None:
        """The in-process offline Gemini emulator of local mode (None when calling Gemini).

        Tests and demos turn its knobs (latency, injected faults) and read its counters.
        """
        return self._emulator

    def _with_local_auth(self, settings: Settings) -> Settings:
        """Settings whose auth accepts the documented dev token in local development (the
        emulator behind a loopback listener) when nothing else is configured."""
        local_dev = gemini_backend(settings) is Backend.EMULATOR and is_loopback(
            settings.server.host
        )
        if not (self._listen and local_dev and not auth_configured(settings)):
            return settings
        log.warning(
            "local mode: no authentication configured, accepting the documented dev service "
            "token on the loopback listener only (see README)"
        )
        auth = settings.auth.model_copy(
            update={"service_token": SecretStr(LOCAL_DEV_SERVICE_TOKEN)}
        )
        return settings.model_copy(update={"auth": auth})

    def _with_backend(self, settings: Settings, stack: contextlib.AsyncExitStack) -> Settings:
        """Settings with the model backend resolved; the in-process emulator of local mode,
        when there is one, is stopped after everything that calls it."""
        backend = gemini_backend(settings)
        if backend is Backend.EMULATOR:
            stack.push_async_callback(self._stop_emulator)
        gemini = settings.gemini.model_copy(update={"backend": backend})
        return settings.model_copy(update={"gemini": gemini})

    async def _stop_emulator(self) -> None:
        if self._emulator is not None:
            await self._emulator.stop()

    async def _load_client(self, settings: Settings, usage: StoreUsageSink) -> GeminiClient:
        """The Gemini client (in local mode, calling the in-process emulator, started first so
        that its answers carry the emulator marker)."""
        gemini = settings.gemini
        if gemini.backend is Backend.EMULATOR:
            await import_in_thread("gateway.emulator")
            from gateway.emulator import EmulatorServer

            self._emulator = EmulatorServer.from_settings(settings.emulator)
            await self._emulator.start()
            log.warning(
                "using the built-in OFFLINE GEMINI EMULATOR, not Gemini; answers are synthetic "
                "and cached apart from Gemini's",
                extra={"emulator_url": self._emulator.base_url},
            )
            gemini = gemini.model_copy(
                update={
                    "base_url": self._emulator.base_url,
                    "api_key": SecretStr(self._emulator.api_key),
                }
            )
        from gateway.gemini import GeminiClient

        return GeminiClient(
            gemini, usage_sink=usage, batch_price_factor=settings.batch.price_factor
        )

    async def _build_runtime(
        self, settings: Settings, stack: contextlib.AsyncExitStack
    ) -> tuple[Pipeline, JobService]:
        """The store, blob store, limiter, budgets, Gemini client, executor and (unstarted) job
        workers both modes run, each cleanup registered on `stack` as its resource is made;
        returns the pipeline and the job service the servicers call."""
        store = self._store = create_store(settings.store)
        # Best effort: a database that is down now is retried on use (requests run uncached).
        await store.start()
        stack.push_async_callback(store.close)
        # The usage ledger is the store's (`ai_usage` in PostgreSQL, the bounded in-process
        # ledger of the embedded store), written in the background. Its final flush runs after
        # everything that records usage has stopped (workers, listener, executor, client), and
        # before the store closes.
        usage = self._usage = StoreUsageSink(store, settings.usage)
        usage.start()
        stack.push_async_callback(usage.aclose)
        blobs = self._blobs = create_blob_store(settings.store, store)
        stack.push_async_callback(blobs.aclose)
        metrics = self._metrics
        if metrics is not None:
            usage.add_observer(metrics.observe_usage)
        if metrics is not None and settings.store.database_url is not None:
            from gateway.store.postgres import PostgresStore

            assert isinstance(store, PostgresStore)
            metrics.store.watch(store.pool)
        elif metrics is not None:
            assert isinstance(store, MemoryStore)
            metrics.store.watch_embedded(store)
        limiter = self._limiter = RateLimiter.from_settings(
            settings, metrics=None if metrics is None else metrics.limiter
        )
        limiter.add_listener(
            lambda mode: self._component_changed(LIMITER_HEALTH_SERVICE, _limiter_serves(mode))
        )
        await limiter.start()
        stack.push_async_callback(limiter.aclose)
        # Beside the limiter, on its Redis connection and breaker; closed before it.
        budgets = self._budgets = Budgets.beside(settings, limiter, clock=self._clock)
        stack.push_async_callback(budgets.aclose)
        # Loaded once the listener answers (or when a model call needs it first): importing
        # google-genai in a thread still takes the GIL from the start-up beside it.
        client = self._client = DeferredClient(lambda: self._load_client(settings, usage))
        stack.push_async_callback(client.aclose)
        client.add_credentials_listener(
            lambda refused: self._component_changed(UPSTREAM_HEALTH_SERVICE, not refused)
        )
        executor = self._executor = Executor(
            settings.execution,
            store,
            blobs,
            inline_result_max_bytes=settings.store.inline_result_max_bytes,
            blob_quota=limiter.charge_blob_bytes,
            usage=usage,
            metrics=None if metrics is None else metrics.execution,
        )
        # Closed before the client: work kept for pending handles is handed back (re-queued)
        # for other replicas, not failed by a closed client.
        stack.push_async_callback(executor.aclose)
        pipeline = Pipeline(settings, client, limiter, executor, budgets)
        runner = OperationRunner(
            settings.jobs,
            pipeline,
            blobs,
            budget_refusal=settings.budgets.job_refusal,
            metrics=None if metrics is None else metrics.jobs,
        )
        workers = self._workers = WorkerPool(settings.jobs, runner)
        if settings.jobs.workers > 0:
            self._batcher = Batcher(settings, pipeline, blobs, client, usage, budgets)
        return pipeline, JobService(pipeline, blobs, on_submit=workers.wake, limiter=limiter)

    def _bind(self, settings: Settings) -> aio.Server:
        """The gRPC server with its interceptors and its listening port (bound now, so a port in
        use stops start-up before anything else starts)."""
        server_settings = settings.server
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", server_settings.max_receive_message_bytes),
            ("grpc.max_send_message_length", server_settings.max_send_message_bytes),
            ("grpc.keepalive_time_ms", int(server_settings.keepalive_time_s * 1000)),
            ("grpc.keepalive_timeout_ms", int(server_settings.keepalive_timeout_s * 1000)),
            ("grpc.keepalive_permit_without_calls", 1),
            (
                "grpc.http2.min_ping_interval_without_data_ms",
                int(server_settings.min_client_ping_interval_s * 1000),
            ),
            ("grpc.max_concurrent_streams", server_settings.max_concurrent_streams),
            ("grpc.so_reuseport", 0),
        ]
        authenticator = self._authenticator = Authenticator(settings.auth)
        guarded = guarded_prefixes(
            authenticated_reflection=server_settings.reflection is ReflectionMode.AUTHENTICATED
        )
        rpc_metrics = None if self._metrics is None else self._metrics.rpc
        server = aio.server(
            interceptors=[
                GatewayInterceptors(
                    RpcLayers(
                        RequestContextInterceptor(guarded=guarded),
                        LoggingInterceptor(rpc_metrics, guarded=guarded),
                        ErrorMappingInterceptor(guarded=guarded),
                        DecodingInterceptor(),
                    ),
                    InFlightInterceptor(self._in_flight),
                    AuthInterceptor(authenticator, guarded=guarded),
                )
            ],
            options=options,
        )
        address = f"{server_settings.host}:{server_settings.port}"
        try:
            if self._tls is not None:
                self.port = server.add_secure_port(address, self._tls.credentials())
            else:
                self.port = server.add_insecure_port(address)
        except RuntimeError:
            self.port = 0
        if self.port == 0:
            raise _cannot_listen(server_settings.host, server_settings.port)
        return server

    async def _start_grpc(
        self, server: aio.Server, settings: Settings, pipeline: Pipeline, jobs: JobService
    ) -> None:
        """Registers the services on the bound server and starts it."""
        gateway_service.add_to_server(GatewayServicer(pipeline), server)
        job_service_pb2_grpc.add_JobServiceServicer_to_server(JobServicer(jobs), server)
        store = self._store
        assert store is not None
        usage_service_pb2_grpc.add_UsageServiceServicer_to_server(
            UsageServicer(UsageReporter(store, budgets=self._budgets)), server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        if settings.server.reflection is not ReflectionMode.OFF:
            reflection.enable((*_SERVICE_NAMES, health.SERVICE_NAME), server)
        await server.start()

    async def start(self) -> int:
        """Builds everything, starts serving (or, without the listener, only working), and
        returns the bound port (0 without the listener).

        Raises `ConfigError` (before anything has started) when the settings must not serve or
        the port cannot be bound. Whatever else fails stops what had started, then raises.
        """
        check_deployment(self.settings, listen=self._listen)
        tracing.check_environment()
        if self._listen:
            _check_port_free(self.settings.server.host, self.settings.server.port)
            if self.settings.tls.enabled:
                # Read (and checked) before anything starts; imported only when TLS is on.
                from gateway.tls import CertificateWatcher

                self._tls = CertificateWatcher(self.settings.tls)
        async with contextlib.AsyncExitStack() as stack:
            await self._start(stack)
            # Started: the cleanups now belong to `stop`.
            self._stack = stack.pop_all()
        return self.port

    async def _start(self, stack: contextlib.AsyncExitStack) -> None:
        """Start-up, in the order the cleanups on `stack` undo it."""
        # Released last, after everything that makes spans has stopped: the last are flushed.
        tracing.acquire()
        stack.push_async_callback(tracing.release)
        settings = self._with_local_auth(self.settings)
        if settings.metrics.port is not None:
            # Imported only when metrics are on: prometheus-client and its HTTP server are not
            # on the start-up path of a replica that serves none.
            from gateway.telemetry.metrics import GatewayMetrics

            self._metrics = GatewayMetrics.from_settings(settings)
            if self._listen:
                self._metrics.rpc.declare(_method_paths())
        server = None
        if self._listen:
            # Bound before anything else starts: a port taken meanwhile ends start-up here.
            server = self._server = self._bind(settings)
            # Frees the port if start-up fails before serving (a no-op after the drain).
            stack.push_async_callback(server.stop, None)
            # A JWKS URL is fetched from now on, beside the rest of start-up.
            await self._start_auth(stack)
        if self._metrics is not None:
            # Served until the very end: a scrape during the drain sees it.
            await self._serve_metrics(self._metrics, settings, stack)
        settings = self._with_backend(settings, stack)
        pipeline, jobs = await self._build_runtime(settings, stack)
        limiter, client, workers = self._limiter, self._client, self._workers
        assert limiter is not None and client is not None and workers is not None
        self._components[LIMITER_HEALTH_SERVICE] = _limiter_serves(limiter.mode)
        self._components[UPSTREAM_HEALTH_SERVICE] = not client.credentials_refused
        await self._publish_health()
        self._start_maintenance(settings, stack)
        workers.start()
        # After the drain: the attempts cut short are handed back queued (`shutting_down`).
        stack.push_async_callback(workers.stop)
        if self._batcher is not None:
            self._batcher.start()
            # Batches under way are handed over to other replicas (their leases released).
            stack.push_async_callback(self._batcher.stop)
        if server is not None:
            await self._jwks_first_fetch()
            await self._start_grpc(server, settings, pipeline, jobs)
            stack.push_async_callback(self._drain, server)
        # Answering already; started once the model client is loaded too.
        client.start()
        await client.loaded()
        # Undone first: callers see NOT_SERVING, and the executor hands work back rather than
        # failing it, before anything is torn down.
        stack.push_async_callback(self._begin_shutdown)
        server_settings = settings.server
        if self._listen:
            log.info(
                "serving",
                extra={
                    "host": server_settings.host,
                    "port": self.port,
                    "limiter_mode": limiter.mode.value,
                    "backend": settings.gemini.backend,
                    "tls": _tls_mode(settings),
                    **({} if self._tls is None else self._tls.material.describe()),
                },
            )
            if self._tls is None and not is_loopback(server_settings.host):
                log.warning(
                    "serving cleartext gRPC on %s: credentials cross the network readable; set "
                    "VIEWBAIT_TLS__CERT_FILE and VIEWBAIT_TLS__KEY_FILE unless TLS ends in front "
                    "of the gateway",
                    server_settings.host,
                )
        else:
            log.info(
                "working without a listener",
                extra={"workers": settings.jobs.workers, "limiter_mode": limiter.mode.value},
            )
        if server_settings.ready_file:
            self._write_ready_file(Path(server_settings.ready_file))

    async def _start_auth(self, stack: contextlib.AsyncExitStack) -> None:
        """Starts the background JWKS refresh (with `auth.jwks_url`); stopped after the drain."""
        authenticator = self._authenticator
        assert authenticator is not None
        remote = authenticator.remote_jwks
        if remote is None:
            return
        await remote.start()
        stack.push_async_callback(authenticator.aclose)

    async def _jwks_first_fetch(self) -> None:
        """Waits for the first JWKS fetch (bounded by its timeout); a failure does not stop
        start-up (see `Authenticator.start`)."""
        if self._authenticator is not None:
            await self._authenticator.wait_for_keys()

    async def _serve_metrics(
        self, metrics: GatewayMetrics, settings: Settings, stack: contextlib.AsyncExitStack
    ) -> None:
        """Starts `/metrics` on its own port (a port in use ends start-up, like the gRPC one)."""
        host, port = settings.metrics.host, settings.metrics.port
        assert port is not None
        from gateway.telemetry.metrics import MetricsServer

        http = MetricsServer(metrics, host, port)
        try:
            self.metrics_port = await http.start()
        except OSError:
            raise ConfigError(
                [
                    f"cannot serve metrics on {host}:{port}: the port is in use (or {host} is "
                    "not an address of this host); set VIEWBAIT_METRICS__PORT (and "
                    "VIEWBAIT_METRICS__HOST)"
                ]
            ) from None
        stack.push_async_callback(http.stop)

    def _start_maintenance(self, settings: Settings, stack: contextlib.AsyncExitStack) -> None:
        """The periodic tasks every replica runs: expired-row cleanup, lease rescue (with the
        store's health), and the upstream and limiter probes; cancelled on stop."""
        store, blobs, limiter, client = self._store, self._blobs, self._limiter, self._client
        assert store is not None and blobs is not None
        assert limiter is not None and client is not None
        rescue = rescue_leases(
            store,
            blobs,
            batch=settings.store.cleanup_batch_size,
            interval_s=settings.execution.rescue_interval_s,
            report_health=lambda ok: self._component_changed(STORE_HEALTH_SERVICE, ok),
            rescued=None if self._metrics is None else self._metrics.jobs.rescued,
        )
        probes = [
            (run_cleanup(store, blobs, settings.store, settings.usage), "viewbait-store-cleanup"),
            (rescue, "viewbait-lease-rescue"),
            (
                _every(settings.gemini.credentials_check_interval_s, client.check_credentials),
                "viewbait-upstream-probe",
            ),
        ]
        if limiter.shared is not None:
            probes.append(
                (
                    _every(settings.limiter.probe_interval_s, limiter.probe),
                    "viewbait-limiter-probe",
                )
            )
        if self._metrics is not None:
            from gateway.telemetry.metrics import refresh_forever

            refresh = refresh_forever(
                self._metrics, store, self._budgets, settings.metrics.refresh_interval_s
            )
            probes.append((refresh, "viewbait-metrics-refresh"))
        tasks = [asyncio.create_task(work, name=name) for work, name in probes]
        stack.push_async_callback(_cancel_all, tasks)

    def serving(self) -> bool:
        """Whether this replica can serve (the overall health): the limiter does not refuse
        everything, Gemini accepts the key, and the store answers or requests may run
        uncached without it."""
        components = self._components
        store_ok = (
            components[STORE_HEALTH_SERVICE]
            or self.settings.execution.run_uncached_on_store_failure
        )
        return (
            components[LIMITER_HEALTH_SERVICE] and components[UPSTREAM_HEALTH_SERVICE] and store_ok
        )

    async def _publish_health(self) -> None:
        """Every component's status, then the overall one (`""` and each service)."""
        status = health_pb2.HealthCheckResponse
        for name, ok in self._components.items():
            await self._health.set(name, status.SERVING if ok else status.NOT_SERVING)
        overall = status.SERVING if self.serving() else status.NOT_SERVING
        for name in ("", *_SERVICE_NAMES):
            await self._health.set(name, overall)

    def _component_changed(self, service: str, ok: bool) -> None:
        """Records a component's health and publishes it (from event-loop callbacks)."""
        if self._components[service] == ok:
            return
        before = self.serving()
        self._components[service] = ok
        if self.serving() != before:
            log.warning(
                "replica %s (%s %s)",
                "serving again" if self.serving() else "cannot serve",
                service,
                "serving" if ok else "not serving",
            )
        update = asyncio.get_running_loop().create_task(self._publish_health())
        self._health_updates.add(update)
        update.add_done_callback(self._health_updates.discard)

    def _write_ready_file(self, path: Path) -> None:
        payload = {
            "port": self.port,
            "metrics_port": self.metrics_port,
            "pid": os.getpid(),
            "emulator_url": self._emulator.base_url if self._emulator else None,
        }
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(payload))
        tmp.replace(path)

    async def stop(self, grace: float | None = None) -> None:
        """Graceful stop: health NOT_SERVING first, refuse new RPCs, drain, close backends (the
        reverse of start-up). Nothing to do after a refused or failed start."""
        stack, self._stack = self._stack, None
        if stack is None:
            return
        self._grace = self.settings.server.shutdown_grace_s if grace is None else grace
        await stack.aclose()
        self._server = self._workers = self._executor = self._usage = self._batcher = None
        self.metrics_port = 0
        self._client = self._limiter = self._blobs = self._store = self._emulator = None
        self._budgets = None
        log.info("stopped")

    async def _begin_shutdown(self) -> None:
        await self._health.enter_graceful_shutdown()
        if self._executor is not None:
            self._executor.shutting_down()

    async def _drain(self, server: aio.Server) -> None:
        log.info("draining", extra={"grace_s": self._grace})
        await server.stop(self._grace)

    async def wait_for_termination(self) -> None:
        """Returns when the server has stopped."""
        if self._server is not None:
            await self._server.wait_for_termination()


def _cannot_listen(host: str, port: int) -> ConfigError:
    return ConfigError(
        [
            f"cannot listen on {host}:{port}: port {port} is in use (or {host} is not an "
            "address of this host); stop what listens there or set VIEWBAIT_SERVER__PORT "
            "(and VIEWBAIT_SERVER__HOST)"
        ]
    )


def _check_port_free(host: str, port: int) -> None:
    """Raises `ConfigError` when the listen address cannot be bound, before gRPC tries (its
    core would log its own error lines first). Bound the way gRPC binds: with SO_REUSEADDR,
    so a port in TIME_WAIT counts as free."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        raise _cannot_listen(host, port) from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError:
            raise _cannot_listen(host, port) from None


def _method_paths() -> list[str]:
    """The gRPC path of every method of the gateway's services (`/service/Method`)."""
    return [
        f"/{service.full_name}/{method.name}" for service in _SERVICES for method in service.methods
    ]


def _tls_mode(settings: Settings) -> str:
    """How the listener is secured, for the logs: "mutual", "tls" or "off"."""
    tls = settings.tls
    return "mutual" if tls.mutual else "tls" if tls.enabled else "off"


def _limiter_serves(mode: LimiterMode) -> bool:
    return mode is not LimiterMode.CLOSED_FALLBACK


async def _cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _every(interval_s: float, probe: Callable[[], Awaitable[object]]) -> None:
    """Runs `probe` now, then every `interval_s` seconds (a health probe: its outcome reaches
    the health service through the component's listener); an unexpected failure is logged."""
    while True:
        try:
            await probe()
        except Exception:
            log.exception("health probe failed")
        await asyncio.sleep(interval_s)


async def serve(settings: Settings, *, listen: bool = True) -> None:
    """Serves (`listen`) or only runs the job workers until SIGTERM or SIGINT, then stops
    gracefully: running jobs are handed back to the queue for other replicas."""
    server = GatewayServer(settings, listen=listen)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Installed before start so a signal during start-up still ends in a clean stop.
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await server.start()
        # What start-up built lives as long as the process: keeping it out of the garbage
        # collector's generations makes full collections short, so they do not stall requests
        # (they cost the cache-hit p99 several milliseconds otherwise).
        gc.collect()
        gc.freeze()
        await stop.wait()
        log.info("signal received, shutting down")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
        # After a start that failed half-way there is nothing left: start stopped it.
        await server.stop()


__all__ = [
    "LIMITER_HEALTH_SERVICE",
    "LOCAL_DEV_SERVICE_TOKEN",
    "STORE_HEALTH_SERVICE",
    "UPSTREAM_HEALTH_SERVICE",
    "GatewayServer",
    "serve",
]
