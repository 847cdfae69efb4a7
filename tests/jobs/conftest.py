"""Fixtures of the job tests (the shared ones are in tests/fixtures/).

- `store_for`: the store settings of each store kind (None: the embedded store; else a fresh
  PostgreSQL schema, migrated when the gateway starts).
- `upstream`: recording proxies in front of the test's emulator (`fault_tools.UpstreamRecorder`),
  one per replica, telling which replica called Gemini for which job, and when.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gateway.config import StoreSettings
from gateway.emulator import EmulatorServer
from tests.fixtures.stores import store_settings

from .fault_tools import UpstreamRecorder


@pytest.fixture
def store_for(store_kind: str, pg_schema: str) -> StoreSettings | None:
    """The store settings of the parametrized kind (None: the embedded store)."""
    if store_kind == "memory":
        return None
    return store_settings(pg_schema, migrate_on_start=True)


@pytest.fixture
async def upstream(emulator: EmulatorServer) -> AsyncIterator[UpstreamRecorder]:
    """Recording proxies in front of the test's emulator."""
    recorder = UpstreamRecorder(emulator.base_url)
    try:
        yield recorder
    finally:
        await recorder.close()
