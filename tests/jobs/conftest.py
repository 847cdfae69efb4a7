"""Fixtures of the job tests (the shared ones are in tests/fixtures/).

- `store_for`: the store settings of each store kind (None: the embedded store; else a fresh
  PostgreSQL schema, migrated when the gateway starts).
"""

from __future__ import annotations

import pytest

from gateway.config import StoreSettings
from tests.fixtures.stores import store_settings


@pytest.fixture
def store_for(store_kind: str, pg_schema: str) -> StoreSettings | None:
    """The store settings of the parametrized kind (None: the embedded store)."""
    if store_kind == "memory":
        return None
    return store_settings(pg_schema, migrate_on_start=True)
