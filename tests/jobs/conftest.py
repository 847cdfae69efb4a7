"""Fixtures for the durable job tests: in-process `GatewayServer`s (their JobService and worker
pools) over the embedded store or real PostgreSQL, calling the emulator.

Reused from tests/execution rather than copied: `start_gateway`, `gateway_settings`, `as_user`,
the PostgreSQL schema fixture of tests/store (`pg_schema`), `eventually`, and the gateway
subprocess factory of tests/rpc (`spawn_gateway`).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest


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


execution_fixtures = _sibling_conftest("execution")

start_gateway = execution_fixtures.start_gateway
pg_schema = execution_fixtures.pg_schema
as_user = execution_fixtures.as_user
gateway_settings = execution_fixtures.gateway_settings
eventually = execution_fixtures.eventually
store_settings = execution_fixtures.store_settings
encode_png = execution_fixtures.encode_png
spawn_gateway = execution_fixtures.spawn_gateway
DATABASE_URL: str = execution_fixtures.DATABASE_URL


@pytest.fixture(params=execution_fixtures.store_fixtures.KINDS)
def store_kind(request: pytest.FixtureRequest) -> str:
    """Each store implementation."""
    return str(request.param)
