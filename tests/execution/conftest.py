"""Fixtures for the cache and coalescing tests (`gateway.execution` and its wiring).

The stores, gateways and sample requests they share with other suites come from the plugins in
tests/fixtures; the emulator and the real Gemini adapter from the root conftest.

- `store`: a started store of each kind (`store_kind`).
- `make_pipeline(store, **execution)`: a `Pipeline` whose executor runs over `store` and a blob
  directory of the test's own, calling the emulator through the real adapter.
- `principal(user, tier)`: an authenticated caller; `ask(pipeline, operation, request, who,
  **run)`: a request prepared and run as a servicer does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.auth import Principal
from gateway.config import GeminiSettings, Settings, Tier
from gateway.execution import Executor, Pipeline
from gateway.gemini import GeminiClient
from gateway.limiter import RateLimiter
from gateway.store import Store
from gateway.store.blobs import LocalBlobStore


@pytest.fixture
async def store(store_kind: str, make_store: Any) -> Store:
    """A started store of each kind (PostgreSQL on the test's fresh schema)."""
    result: Store = await make_store(store_kind)
    return result


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
