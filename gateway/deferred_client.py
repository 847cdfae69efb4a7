"""The model client, loaded beside start-up instead of before the listener.

Importing google-genai (with aiohttp, httpx and their dependencies) and building its client is
most of what a cold gateway spends before it can answer; only the requests that call the model
need it. `DeferredClient` stands in for the `GeminiClient` from the start: `load()` imports the
adapter in a worker thread (so the event loop keeps starting the store, the limiter and the
listener meanwhile) and builds the client in the loop; a model call that arrives first waits for
it, and every other RPC (health, job reads, cache hits) is answered without it.

`start()` of the server still returns only once the client is loaded (and fails if loading
failed), so "started" keeps meaning "everything is up"; the listener answers before that.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from gateway.model import (
    AttemptCallback,
    AttemptGate,
    BatchStatus,
    CallLabels,
    ModelRequest,
    ModelResponse,
    TextCallback,
)

if TYPE_CHECKING:
    from gateway.gemini import GeminiClient

#: Builds the client once `gateway.gemini` is imported (in the event loop).
ClientFactory = Callable[[], Awaitable["GeminiClient"]]


async def import_in_thread(module: str) -> None:
    """Imports `module` in a worker thread: the event loop goes on meanwhile (the import holds
    the GIL in short turns, not for its whole length)."""
    await asyncio.to_thread(importlib.import_module, module)


class DeferredClient:
    """A `ModelClient` and `BatchClient` whose `GeminiClient` is still loading: every call
    waits for it; credentials listeners and the credentials flag reach it once it exists."""

    def __init__(self, factory: ClientFactory) -> None:
        self._factory = factory
        self._task: asyncio.Task[GeminiClient] | None = None
        self._listeners: list[Callable[[bool], None]] = []

    def start(self) -> None:
        """Starts loading (in the running loop)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._load(), name="viewbait-model-client-load"
            )

    async def _load(self) -> GeminiClient:
        await import_in_thread("gateway.gemini")
        client = await self._factory()
        client.prepare()
        for listener in self._listeners:
            client.add_credentials_listener(listener)
        return client

    async def loaded(self) -> GeminiClient:
        """The client, once loaded (raises what loading raised)."""
        self.start()
        assert self._task is not None
        # Shielded: a caller cancelled while waiting must not cancel the load for the others.
        return await asyncio.shield(self._task)

    def _ready(self) -> GeminiClient | None:
        task = self._task
        if task is None or not task.done() or task.cancelled() or task.exception() is not None:
            return None
        return task.result()

    @property
    def credentials_refused(self) -> bool:
        """Whether Gemini refused the key on the last answer (False until loaded)."""
        client = self._ready()
        return client is not None and client.credentials_refused

    def add_credentials_listener(self, listener: Callable[[bool], None]) -> None:
        client = self._ready()
        if client is not None:
            client.add_credentials_listener(listener)
        else:
            self._listeners.append(listener)

    async def check_credentials(self) -> bool | None:
        return await (await self.loaded()).check_credentials()

    async def aclose(self) -> None:
        """Closes the client, or stops loading it."""
        task, self._task = self._task, None
        if task is None:
            return
        if not task.done():
            task.cancel()
        await asyncio.wait([task])
        if task.cancelled() or task.exception() is not None:
            return  # nothing to close: loading was stopped, or failed (start-up raised it)
        await task.result().aclose()

    async def generate(
        self,
        request: ModelRequest,
        *,
        labels: CallLabels,
        deadline: float | None = None,
        on_text: TextCallback | None = None,
        before_attempt: AttemptGate | None = None,
        on_attempt: AttemptCallback | None = None,
    ) -> ModelResponse:
        client = self._ready() or await self.loaded()
        return await client.generate(
            request,
            labels=labels,
            deadline=deadline,
            on_text=on_text,
            before_attempt=before_attempt,
            on_attempt=on_attempt,
        )

    async def create_batch(
        self, model: str, requests: Sequence[tuple[str, ModelRequest]], *, display_name: str
    ) -> BatchStatus:
        client = await self.loaded()
        return await client.create_batch(model, requests, display_name=display_name)

    async def get_batch(self, name: str, model: str) -> BatchStatus:
        return await (await self.loaded()).get_batch(name, model)

    async def cancel_batch(self, name: str) -> None:
        await (await self.loaded()).cancel_batch(name)

    async def find_batch(self, display_name: str, model: str) -> BatchStatus | None:
        return await (await self.loaded()).find_batch(display_name, model)
