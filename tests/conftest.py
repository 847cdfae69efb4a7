"""Shared fixtures: the offline Gemini emulator on loopback, and the real adapter pointed at it.

- `emulator`: a started `EmulatorServer` on 127.0.0.1 (fresh per test, so knobs and counters
  start clean). Its API key is distinctive so tests can assert it never leaks into messages.
- `usage_sink`: an `InMemoryUsageSink` collecting every upstream attempt.
- `gemini_settings`: `GeminiSettings` for the emulator, with millisecond backoff so retry tests
  are quick.
- `gemini_client`: a `GeminiClient` (real google-genai over HTTP) built from those settings.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import pytest
from pydantic import SecretStr

from gateway.config import GeminiSettings
from gateway.emulator import EmulatorServer
from gateway.gemini import GeminiClient
from gateway.usage import InMemoryUsageSink

#: Looks like a real key so a leak would be obvious; the emulator accepts only this one.
EMULATOR_API_KEY = "AIzaSy-test-0123456789-secret-key"


@pytest.fixture
async def emulator() -> AsyncIterator[EmulatorServer]:
    """A running offline Gemini emulator on 127.0.0.1 (any free port)."""
    server = EmulatorServer(host="127.0.0.1", port=0, api_key=EMULATOR_API_KEY)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
def usage_sink() -> InMemoryUsageSink:
    """Collects the usage record of every upstream attempt."""
    return InMemoryUsageSink()


@pytest.fixture
def gemini_settings(emulator: EmulatorServer) -> GeminiSettings:
    """Adapter settings aimed at the emulator, with tiny backoff delays."""
    return GeminiSettings(
        api_key=SecretStr(emulator.api_key),
        base_url=emulator.base_url,
        backoff_initial_s=0.01,
        backoff_max_s=0.05,
        attempt_timeout_s=10.0,
    )


@pytest.fixture
async def gemini_client(
    gemini_settings: GeminiSettings, usage_sink: InMemoryUsageSink
) -> AsyncIterator[GeminiClient]:
    """The real adapter (google-genai over HTTP) talking to the emulator."""
    client = GeminiClient(gemini_settings, usage_sink=usage_sink, rng=random.Random(7))
    try:
        yield client
    finally:
        await client.aclose()
