"""Fixtures of the store tests (the shared ones, PostgreSQL and the fault proxy, are in
tests/fixtures/stores.py).

- `store`: parametrized over "memory" and "postgres", migrated and started.
- `replicas`: two stores over the same data, as two gateway replicas see it (two PostgresStore
  instances on one schema; for memory, the one in-process store twice).
"""

from __future__ import annotations

import pytest

from gateway.store import Store
from tests.fixtures.stores import KINDS, MakeStore


@pytest.fixture(params=KINDS)
async def store(request: pytest.FixtureRequest, make_store: MakeStore) -> Store:
    """A started store of each kind."""
    return await make_store(request.param)


@pytest.fixture(params=KINDS)
async def replicas(request: pytest.FixtureRequest, make_store: MakeStore) -> tuple[Store, Store]:
    """Two replicas' views of one store."""
    first = await make_store(request.param)
    if request.param == "memory":
        return first, first
    return first, await make_store(request.param)
