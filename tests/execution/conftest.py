"""Fixtures for the cache and coalescing tests (`gateway.execution` and its wiring).

Reused from the sibling suites rather than copied: the PostgreSQL fixtures of tests/store (a
fresh schema per test, `make_store`, the fault `tcp_proxy`) and the gRPC helpers of tests/rpc
(`Samples`, the subprocess gateway). The emulator and the real Gemini adapter come from the root
conftest.

- `store_kind`: "memory" or "postgres" (parametrized); `store`: a started store of that kind.
- `make_pipeline(store, **execution)`: a `Pipeline` whose executor runs over `store` and a blob
  directory of the test's own, calling the emulator through the real adapter.
- `principal(user, tier)`: an authenticated caller; `ask(pipeline, operation, request, who,
  **run)`: a request prepared and run as a servicer does.
- `gateway_settings(emulator, blob_dir, **sections)` and `start_gateway(settings)`: in-process
  `GatewayServer`s calling the test's emulator, with a channel and stubs, stopped after the test.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from grpc import aio
from grpc_health.v1 import health_pb2_grpc
from pydantic import SecretStr
from viewbait.ai.v1 import gateway_service_pb2_grpc

from gateway.auth import Principal
from gateway.config import (
    AuthSettings,
    GeminiSettings,
    ServerSettings,
    Settings,
    StoreSettings,
    Tier,
)
from gateway.emulator import EmulatorServer
from gateway.execution import Executor, Pipeline
from gateway.gemini import GeminiClient
from gateway.limiter import RateLimiter
from gateway.server import GatewayServer
from gateway.store import Store
from gateway.store.blobs import LocalBlobStore


def _sibling_conftest(directory: str) -> ModuleType:
    """tests/<directory>/conftest.py as a module of its own (the suite uses importlib mode)."""
    name = f"_viewbait_{directory}_conftest"
    if name in sys.modules:
        return sys.modules[name]
    path = Path(__file__).resolve().parent.parent / directory / "conftest.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


store_fixtures = _sibling_conftest("store")
rpc_fixtures = _sibling_conftest("rpc")

# The store suite's fixtures, registered here under their own names.
pg_schema = store_fixtures.pg_schema
pg_settings = store_fixtures.pg_settings
make_store = store_fixtures.make_store
tcp_proxy = store_fixtures.tcp_proxy
samples = rpc_fixtures.samples
spawn_gateway = rpc_fixtures.spawn_gateway

DATABASE_URL: str = store_fixtures.DATABASE_URL
store_settings = store_fixtures.store_settings
Samples = rpc_fixtures.Samples
encode_png = rpc_fixtures.encode_png


@pytest.fixture(params=store_fixtures.KINDS)
def store_kind(request: pytest.FixtureRequest) -> str:
    """Each store implementation."""
    return str(request.param)


@pytest.fixture
async def store(store_kind: str, make_store: Any) -> Store:
    """A started store of each kind (PostgreSQL on the test's fresh schema)."""
    result: Store = await make_store(store_kind)
    return result


async def eventually(condition: Callable[[], bool], what: str, patience_s: float = 20.0) -> None:
    """Waits until `condition()` holds; fails after `patience_s`."""
    give_up = time.monotonic() + patience_s
    while not condition():
        if time.monotonic() > give_up:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.02)


def principal(user_id: str = "user-a", tier: Tier = Tier.PRO) -> Principal:
    """An authenticated caller."""
    return Principal(user_id=user_id, tier=tier, via="service")


async def ask(
    pipeline: Pipeline,
    operation: str,
    request: Any,
    who: Principal,
    *,
    idempotency_key: str = "",
    **run: Any,
) -> Any:
    """`pipeline.prepare` then `pipeline.run(prepared, **run)`, as a servicer does."""
    prepared = pipeline.prepare(operation, request, who, idempotency_key=idempotency_key)
    return await pipeline.run(prepared, **run)


MakePipeline = Callable[..., Pipeline]


@pytest.fixture
async def make_pipeline(
    gemini_settings: GeminiSettings, gemini_client: GeminiClient, tmp_path: Path
) -> AsyncIterator[MakePipeline]:
    """`make_pipeline(store, settings=None, **execution)`: a pipeline over `store`.

    `settings` (default: plain `Settings`) gets the emulator's Gemini settings; `execution`
    overrides fields of `ExecutionSettings`. Executors are closed after the test.
    """
    executors: list[Executor] = []

    def make(store: Store, settings: Settings | None = None, **execution: Any) -> Pipeline:
        base = settings or Settings()
        # The emulator's address and quick retries; model names stay the caller's.
        gemini = gemini_settings.model_copy(
            update={"text_model": base.gemini.text_model, "image_model": base.gemini.image_model}
        )
        settings = base.model_copy(
            update={"gemini": gemini, "execution": base.execution.model_copy(update=execution)}
        )
        executor = Executor(settings.execution, store, LocalBlobStore(tmp_path / "blobs"))
        executors.append(executor)
        return Pipeline(settings, gemini_client, RateLimiter(settings), executor)

    try:
        yield make
    finally:
        for executor in executors:
            await executor.aclose()


SERVICE_TOKEN = "execution-tests-service-token-0123456789"


def as_user(user_id: str = "user-a", tier: Tier = Tier.PRO) -> tuple[tuple[str, str], ...]:
    """Metadata of the trusted backend acting for `user_id`."""
    return (
        ("authorization", f"Bearer {SERVICE_TOKEN}"),
        ("x-viewbait-user-id", user_id),
        ("x-viewbait-tier", tier.value),
    )


def gateway_settings(
    emulator: EmulatorServer, blob_dir: Path, *, store: StoreSettings | None = None, **sections: Any
) -> Settings:
    """A loopback gateway calling `emulator`; `sections` are further `Settings` fields (e.g.
    `execution=ExecutionSettings(...)`). Its blobs go where a deployment's would: under
    `blob_dir` (its own) when embedded, else where `store` says (PostgreSQL by default)."""
    store = store or StoreSettings()
    if store.database_url is None:
        store = store.model_copy(update={"blob_dir": str(blob_dir)})
    return Settings(
        server=ServerSettings(host="127.0.0.1", port=0, shutdown_grace_s=1.0),
        auth=AuthSettings(service_token=SecretStr(SERVICE_TOKEN)),
        gemini=GeminiSettings(
            api_key=SecretStr(emulator.api_key),
            base_url=emulator.base_url,
            backoff_initial_s=0.01,
            backoff_max_s=0.05,
        ),
        store=store,
        **sections,
    )


class Running:
    """A started in-process gateway, a channel to it and its stubs."""

    def __init__(self, server: GatewayServer) -> None:
        self.server = server
        self.channel = aio.insecure_channel(f"127.0.0.1:{server.port}")
        self.stub = gateway_service_pb2_grpc.GatewayServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    @property
    def executor(self) -> Executor:
        executor = self.server.executor
        assert executor is not None
        return executor


@pytest.fixture
async def start_gateway() -> AsyncIterator[Callable[[Settings], Any]]:
    """`await start_gateway(settings)`: a running in-process gateway, stopped after the test."""
    running: list[Running] = []

    async def start(settings: Settings) -> Running:
        server = GatewayServer(settings)
        await server.start()
        running.append(Running(server))
        return running[-1]

    try:
        yield start
    finally:
        for gateway in running:
            await gateway.channel.close()
            await gateway.server.stop(grace=0.5)
