"""The gateway's gRPC server: one lifecycle (build, register, start, serve, graceful stop).

With nothing configured it serves on 127.0.0.1 with the embedded backends and the offline Gemini
emulator started in-process (and says so loudly); with `VIEWBAIT_GEMINI__API_KEY` set it calls
real Gemini. With `VIEWBAIT_STORE__DATABASE_URL` set, results, jobs and the usage ledger live in
PostgreSQL, shared by every replica; each replica also runs the periodic cleanup of expired rows
and the rescue of executions whose lease lapsed. `viewbait-gateway worker` runs the same
runtime without the gRPC listener: job workers and maintenance only.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import json
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from pydantic import SecretStr
from viewbait.ai.v1 import (
    gateway_service_pb2,
    gateway_service_pb2_grpc,
    job_service_pb2,
    job_service_pb2_grpc,
)

from gateway.auth import Authenticator
from gateway.config import Settings
from gateway.emulator import EmulatorServer
from gateway.errors import Unavailable
from gateway.execution import Executor, Pipeline
from gateway.gemini import GeminiClient
from gateway.jobs import OperationRunner, WorkerPool
from gateway.limiter import LimiterMode, RateLimiter
from gateway.rpc import reflection
from gateway.rpc.gateway_service import GatewayServicer
from gateway.rpc.interceptors import (
    AuthInterceptor,
    ErrorMappingInterceptor,
    LoggingInterceptor,
    RequestContextInterceptor,
)
from gateway.rpc.job_service import JobServicer
from gateway.store import Store, create_store
from gateway.store.blobs import BlobStore, create_blob_store
from gateway.store.ledger import StoreUsageSink
from gateway.store.maintenance import run_cleanup
from gateway.usage import InMemoryUsageSink

log = logging.getLogger("gateway.server")

#: The service token of local mode (loopback listener + emulator, no auth configured). Documented
#: in the README so grpcurl commands work as written; refused anywhere else.
LOCAL_DEV_SERVICE_TOKEN = "local-dev-service-token"

#: Health-check name of the rate limiter: NOT_SERVING while it refuses every request (Redis
#: unreachable with `limiter.failure_mode` closed), SERVING otherwise. Its mode is also logged on
#: every change (`limiter_mode`).
LIMITER_HEALTH_SERVICE = "viewbait.ai.v1.Limiter"

#: Health-check name of the result and job store: NOT_SERVING while PostgreSQL does not answer
#: (probed every `execution.rescue_interval_s`; cacheable requests then run uncached if allowed).
STORE_HEALTH_SERVICE = "viewbait.ai.v1.Store"

_SERVICE_NAMES = (
    gateway_service_pb2.DESCRIPTOR.services_by_name["GatewayService"].full_name,
    job_service_pb2.DESCRIPTOR.services_by_name["JobService"].full_name,
)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _auth_configured(settings: Settings) -> bool:
    auth = settings.auth
    return bool(auth.service_token or auth.jwt_secret or auth.jwks_file or auth.allow_anonymous)


@dataclass(frozen=True, slots=True)
class _Runtime:
    """What both modes run: what the servicers call, the job workers and their backends."""

    store: Store
    limiter: RateLimiter
    pipeline: Pipeline
    blobs: BlobStore
    workers: WorkerPool


class GatewayServer:
    """A configured gateway: its gRPC server, health, and the runtime behind the servicers.

    `listen=False` is the worker mode (`viewbait-gateway worker`): the same runtime, job
    workers and maintenance tasks, without the gRPC listener.
    """

    def __init__(self, settings: Settings, *, listen: bool = True) -> None:
        self.settings = settings
        self._listen = listen
        self.port = 0
        self._server: aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._emulator: EmulatorServer | None = None
        self._client: GeminiClient | None = None
        self._limiter: RateLimiter | None = None
        self._health_updates: set[asyncio.Task[None]] = set()
        self._store: Store | None = None
        self._blobs: BlobStore | None = None
        self._executor: Executor | None = None
        self._workers: WorkerPool | None = None
        self._maintenance: list[asyncio.Task[None]] = []
        #: The usage ledger: in memory with the embedded store, else the store's `ai_usage`.
        self.usage: InMemoryUsageSink | StoreUsageSink = InMemoryUsageSink()

    @property
    def store(self) -> Store | None:
        """The result and job store once started."""
        return self._store

    @property
    def blobs(self) -> BlobStore | None:
        """The blob store once started."""
        return self._blobs

    @property
    def workers(self) -> WorkerPool | None:
        """The job workers once started."""
        return self._workers

    @property
    def executor(self) -> Executor | None:
        """The cache and coalescing layer once started (its `stats` say what it did)."""
        return self._executor

    @property
    def limiter(self) -> RateLimiter | None:
        """The rate limiter once started (its `mode` says which limiter decides right now)."""
        return self._limiter

    @property
    def emulator(self) -> EmulatorServer | None:
        """The in-process offline Gemini emulator of local mode (None when calling Gemini).

        Tests and demos turn its knobs (latency, injected faults) and read its counters.
        """
        return self._emulator

    async def _runtime_settings(self) -> Settings:
        """Settings with local-mode defaults filled in (emulator URL and key, dev token)."""
        settings = self.settings
        gemini = settings.gemini
        local = gemini.api_key is None
        if local:
            if gemini.base_url:
                raise SystemExit(
                    "VIEWBAIT_GEMINI__BASE_URL is set without VIEWBAIT_GEMINI__API_KEY: set both"
                )
            self._emulator = EmulatorServer.from_settings(settings.emulator)
            await self._emulator.start()
            log.warning(
                "no Gemini API key configured: using the built-in OFFLINE GEMINI EMULATOR, "
                "not Gemini; answers are synthetic",
                extra={"emulator_url": self._emulator.base_url},
            )
            gemini = gemini.model_copy(
                update={
                    "base_url": self._emulator.base_url,
                    "api_key": SecretStr(self._emulator.api_key),
                }
            )
        auth = settings.auth
        # Without a listener nobody calls in: there is nothing to authenticate.
        if self._listen and not _auth_configured(settings):
            if not (local and _is_loopback(settings.server.host)):
                raise SystemExit(
                    "no authentication configured: set VIEWBAIT_AUTH__SERVICE_TOKEN and/or "
                    "VIEWBAIT_AUTH__JWT_SECRET / VIEWBAIT_AUTH__JWKS_FILE"
                )
            auth = auth.model_copy(update={"service_token": SecretStr(LOCAL_DEV_SERVICE_TOKEN)})
            log.warning(
                "local mode: no authentication configured, accepting the documented dev service "
                "token on the loopback listener only (see README)"
            )
        return settings.model_copy(update={"gemini": gemini, "auth": auth})

    async def _build_runtime(self, settings: Settings) -> _Runtime:
        """The store, executor, Gemini client, limiter, pipeline and (unstarted) job workers
        both modes run."""
        store = self._store = create_store(settings.store)
        # Best effort: a database that is down now is retried on use (requests run uncached).
        await store.start()
        if settings.store.database_url is not None:
            self.usage = StoreUsageSink(store)
        blobs = self._blobs = create_blob_store(settings.store, store)
        limiter = self._limiter = RateLimiter.from_settings(settings)
        limiter.add_listener(self._limiter_mode_changed)
        await limiter.start()
        executor = self._executor = Executor(
            settings.execution,
            store,
            blobs,
            inline_result_max_bytes=settings.store.inline_result_max_bytes,
            blob_quota=limiter.charge_blob_bytes,
        )
        client = self._client = GeminiClient(settings.gemini, usage_sink=self.usage)
        client.prepare()
        pipeline = Pipeline(settings, client, limiter, executor)
        workers = self._workers = WorkerPool(
            settings.jobs, OperationRunner(settings.jobs, pipeline, blobs)
        )
        return _Runtime(store, limiter, pipeline, blobs, workers)

    async def _start_grpc(self, settings: Settings, runtime: _Runtime) -> None:
        """Registers the services and starts the gRPC listener."""
        server_settings = settings.server
        pipeline, blobs = runtime.pipeline, runtime.blobs
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
        server = aio.server(
            interceptors=[
                RequestContextInterceptor(),
                LoggingInterceptor(),
                ErrorMappingInterceptor(),
                AuthInterceptor(Authenticator(settings.auth)),
            ],
            options=options,
        )
        gateway_service_pb2_grpc.add_GatewayServiceServicer_to_server(
            GatewayServicer(pipeline), server
        )
        job_service_pb2_grpc.add_JobServiceServicer_to_server(
            JobServicer(pipeline, blobs, on_submit=runtime.workers.wake), server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        if server_settings.reflection:
            reflection.enable((*_SERVICE_NAMES, health.SERVICE_NAME), server)
        self.port = server.add_insecure_port(f"{server_settings.host}:{server_settings.port}")
        if self.port == 0:
            raise SystemExit(f"could not bind {server_settings.host}:{server_settings.port}")
        await server.start()
        self._server = server

    async def start(self) -> int:
        """Builds everything, starts serving (or, without the listener, only working), and
        returns the bound port (0 without the listener)."""
        settings = await self._runtime_settings()
        runtime = await self._build_runtime(settings)
        store, limiter, blobs = runtime.store, runtime.limiter, runtime.blobs
        if self._listen:
            await self._start_grpc(settings, runtime)
        runtime.workers.start()
        for name in ("", *_SERVICE_NAMES):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        await self._health.set(LIMITER_HEALTH_SERVICE, _limiter_health(limiter.mode))
        await self._health.set(STORE_HEALTH_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        self._maintenance = [
            asyncio.create_task(
                run_cleanup(store, blobs, settings.store), name="viewbait-store-cleanup"
            ),
            asyncio.create_task(self._rescue_leases(store, blobs), name="viewbait-lease-rescue"),
        ]
        server_settings = settings.server
        if self._listen:
            log.info(
                "serving",
                extra={
                    "host": server_settings.host,
                    "port": self.port,
                    "limiter_mode": limiter.mode.value,
                },
            )
        else:
            log.info(
                "working without a listener",
                extra={"workers": settings.jobs.workers, "limiter_mode": limiter.mode.value},
            )
        if server_settings.ready_file:
            self._write_ready_file(Path(server_settings.ready_file))
        return self.port

    async def _rescue_leases(self, store: Store, blobs: BlobStore) -> None:
        """Every `rescue_interval_s`: re-queues (or fails) executions whose lease lapsed, and
        reports whether the store and the blob store answer on the store's health service."""
        settings = self.settings
        batch = settings.store.cleanup_batch_size
        serving = True
        while True:
            try:
                while await store.rescue_expired_leases(batch) == batch:
                    pass
                await blobs.ping()
                healthy = True
            except Unavailable as exc:
                healthy = False
                if serving:
                    log.warning("store unavailable: %s", exc.message)
            if healthy != serving:
                serving = healthy
                status = health_pb2.HealthCheckResponse
                await self._health.set(
                    STORE_HEALTH_SERVICE, status.SERVING if healthy else status.NOT_SERVING
                )
                if healthy:
                    log.info("store available again")
            await asyncio.sleep(settings.execution.rescue_interval_s)

    def _limiter_mode_changed(self, mode: LimiterMode) -> None:
        update = asyncio.get_running_loop().create_task(
            self._health.set(LIMITER_HEALTH_SERVICE, _limiter_health(mode))
        )
        self._health_updates.add(update)
        update.add_done_callback(self._health_updates.discard)

    def _write_ready_file(self, path: Path) -> None:
        payload = {
            "port": self.port,
            "pid": os.getpid(),
            "emulator_url": self._emulator.base_url if self._emulator else None,
        }
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(payload))
        tmp.replace(path)

    async def stop(self, grace: float | None = None) -> None:
        """Graceful stop: health NOT_SERVING first, refuse new RPCs, drain, close backends."""
        await self._health.enter_graceful_shutdown()
        if self._executor is not None:
            self._executor.shutting_down()
        if self._server is not None:
            grace = self.settings.server.shutdown_grace_s if grace is None else grace
            log.info("draining", extra={"grace_s": grace})
            await self._server.stop(grace)
            self._server = None
        if self._workers is not None:
            # After `shutting_down`: the attempts cut short are re-queued for other replicas.
            await self._workers.stop()
            self._workers = None
        for task in self._maintenance:
            task.cancel()
        await asyncio.gather(*self._maintenance, return_exceptions=True)
        self._maintenance = []
        if self._executor is not None:
            # Work kept for pending handles is handed back (re-queued) for other replicas.
            await self._executor.aclose()
            self._executor = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        if self._limiter is not None:
            await self._limiter.aclose()
            self._limiter = None
        if self._blobs is not None:
            await self._blobs.aclose()
            self._blobs = None
        if self._store is not None:
            await self._store.close()
            self._store = None
        if self._emulator is not None:
            await self._emulator.stop()
            self._emulator = None
        log.info("stopped")

    async def wait_for_termination(self) -> None:
        """Returns when the server has stopped."""
        if self._server is not None:
            await self._server.wait_for_termination()


def _limiter_health(mode: LimiterMode) -> int:
    if mode is LimiterMode.CLOSED_FALLBACK:
        return health_pb2.HealthCheckResponse.NOT_SERVING
    return health_pb2.HealthCheckResponse.SERVING


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
        # Also runs when start() failed half-way: whatever it started (emulator, client) stops.
        await server.stop()


__all__ = [
    "LIMITER_HEALTH_SERVICE",
    "LOCAL_DEV_SERVICE_TOKEN",
    "STORE_HEALTH_SERVICE",
    "GatewayServer",
    "serve",
]
