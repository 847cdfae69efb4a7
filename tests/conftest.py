"""Shared fixtures: the offline Gemini emulator on loopback, and the real adapter pointed at it.

- `emulator`: a started `EmulatorServer` on 127.0.0.1 (fresh per test, so knobs and counters
  start clean). Its API key is distinctive so tests can assert it never leaks into messages.
- `gemini_settings`: `GeminiSettings` for the emulator, with millisecond backoff so retry tests
  are quick.
- `gemini_client`: a `GeminiClient` (real google-genai over HTTP) built from those settings.
- `s3_server`: a real S3-compatible server (s3s-fs, tests/s3s_fs.py) on loopback, per session;
  `s3_settings(**overrides)` the s3 blob backend's settings on a fresh bucket of it.

The fixtures the suites share beyond these (PostgreSQL and the stores, sample requests,
in-process and subprocess gateways, `usage_sink` collecting every upstream attempt, Redis
servers) are the plugins of tests/fixtures, registered here.
"""

from __future__ import annotations

import importlib.util
import random
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pytest
from pydantic import SecretStr

from gateway.config import GeminiSettings, StoreSettings
from gateway.emulator import EmulatorServer
from gateway.gemini import GeminiClient

if TYPE_CHECKING:
    # Only for annotations: importing a plugin module before pytest registers it would skip
    # its assertion rewriting.
    from tests.fixtures.usage import UsageCollector

pytest_plugins = [
    "tests.fixtures.stores",
    "tests.fixtures.gateways",
    "tests.fixtures.usage",
    "tests.fixtures.redis",
]

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
    gemini_settings: GeminiSettings, usage_sink: UsageCollector
) -> AsyncIterator[GeminiClient]:
    """The real adapter (google-genai over HTTP) talking to the emulator."""
    client = GeminiClient(gemini_settings, usage_sink=usage_sink, rng=random.Random(7))
    try:
        yield client
    finally:
        await client.aclose()


def _load_s3s_fs() -> ModuleType:
    """tests/s3s_fs.py (the suite uses importlib mode, so it is loaded by path)."""
    name = "_viewbait_s3s_fs"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).parent / "s3s_fs.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


s3s_fs = _load_s3s_fs()


def pytest_collection_finish(session: pytest.Session) -> None:
    """Builds s3s-fs before any test that needs it runs (outside every test's timeout); a
    build that fails stops the run."""
    if any("s3_server" in getattr(item, "fixturenames", ()) for item in session.items):
        try:
            s3s_fs.ensure_built()
        except RuntimeError as exc:
            raise pytest.UsageError(str(exc)) from None


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real S3-compatible server (s3s-fs) on loopback for the session; `new_bucket()` gives
    each test a bucket of its own."""
    server = s3s_fs.start(tmp_path_factory.mktemp("s3s-fs"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_settings(s3_server: Any) -> Callable[..., StoreSettings]:
    """`s3_settings(**overrides)`: `StoreSettings` of the s3 blob backend on a fresh bucket of
    the session's server (each call: a bucket of its own, as each deployment has)."""

    def settings(**overrides: Any) -> StoreSettings:
        values: dict[str, Any] = {
            "blob_backend": "s3",
            "s3_bucket": s3_server.new_bucket(),
            "s3_endpoint": s3_server.endpoint,
            "s3_access_key_id": SecretStr(s3s_fs.ACCESS_KEY),
            "s3_secret_access_key": SecretStr(s3s_fs.SECRET_KEY),
            "s3_timeout_s": 5.0,
        }
        values.update(overrides)
        return StoreSettings(**values)

    return settings
