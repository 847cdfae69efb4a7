"""Fixtures for the store tests: both store implementations, real PostgreSQL, a fault proxy.

PostgreSQL comes from `GATEWAY_TEST_DATABASE_URL` (default
`postgresql://postgres@127.0.0.1:5432/test`). Every test that uses it gets a fresh schema with a
unique name, dropped afterwards, so tests never see each other's rows. A database that cannot be
reached fails these tests: they are not skipped.

- `store`: parametrized over "memory" and "postgres", migrated and started.
- `replicas`: two stores over the same data, as two gateway replicas see it (two PostgresStore
  instances on one schema; for memory, the one in-process store twice).
- `make_store(kind, **settings)`: more stores of a kind on the test's schema.
- `pg_settings(url=None, **overrides)`: `StoreSettings` for the test's schema.
- `tcp_proxy`: a loopback TCP proxy in front of PostgreSQL that can cut or blackhole the link;
  `tcp_proxy.url` is the database URL through it.
- `closed_port_url`: the database URL with a port nothing listens on.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from pydantic import SecretStr

from gateway.config import StoreSettings
from gateway.store import MemoryStore, Store
from gateway.store.migrate import quote_ident
from gateway.store.postgres import PostgresStore, run_migrations

DATABASE_URL = os.environ.get(
    "GATEWAY_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
KINDS = ["memory", "postgres"]

MakeStore = Callable[..., Awaitable[Store]]
PgSettings = Callable[..., StoreSettings]


def store_settings(schema: str, url: str = DATABASE_URL, **overrides: Any) -> StoreSettings:
    """Settings for a test store: short timeouts, and polling so slow that a waiter woken within
    a test's bound was woken by NOTIFY, not by a poll."""
    values: dict[str, Any] = {
        "database_url": SecretStr(url),
        "schema_name": schema,
        "connect_timeout_s": 1.0,
        "command_timeout_s": 1.0,
        "reconnect_interval_s": 0.1,
        "poll_interval_s": 30.0,
        "pool_min_size": 1,
        "pool_max_size": 4,
    }
    values.update(overrides)
    return StoreSettings(**values)


@pytest.fixture
async def pg_schema() -> AsyncIterator[str]:
    """A fresh, uniquely named schema name (not yet created); dropped after the test."""
    name = f"viewbait_test_{uuid.uuid4().hex[:12]}"
    try:
        yield name
    finally:
        conn = await asyncpg.connect(DATABASE_URL, timeout=5)
        try:
            await conn.execute(f"DROP SCHEMA IF EXISTS {quote_ident(name)} CASCADE")
        finally:
            await conn.close()


@pytest.fixture
def pg_settings(pg_schema: str) -> PgSettings:
    """`store_settings` for the test's schema: `pg_settings(url=None, **overrides)`."""

    def settings(url: str | None = None, **overrides: Any) -> StoreSettings:
        return store_settings(pg_schema, url or DATABASE_URL, **overrides)

    return settings


@pytest.fixture
async def make_store(pg_schema: str) -> AsyncIterator[MakeStore]:
    """Builds started stores of a kind ("memory" or "postgres", the latter on the test's
    migrated schema); closes them all after the test."""
    opened: list[Store] = []
    migrated = False

    async def make(kind: str, **overrides: Any) -> Store:
        nonlocal migrated
        store: Store
        if kind == "memory":
            retention = overrides.pop("job_retention_s", 7 * 86400)
            store = MemoryStore(job_retention_s=retention, **overrides)
        else:
            settings = store_settings(pg_schema, **overrides)
            if not migrated and settings.database_url is not None:
                await run_migrations(store_settings(pg_schema))
                migrated = True
            store = PostgresStore(settings)
        await store.start()
        opened.append(store)
        return store

    try:
        yield make
    finally:
        for store in opened:
            await store.close()


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


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class TcpProxy:
    """Forwards a loopback port to a target, with faults a network really has.

    `cut()` closes every connection and stops listening (connection refused);
    `blackhole()` keeps accepting but never forwards or answers (a hung host);
    `restore()` forwards again on the same port.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._blackholed = False
        #: Connections accepted so far.
        self.accepted = 0

    @property
    def url(self) -> str:
        """The test database URL through this proxy."""
        return via(f"127.0.0.1:{self.port}")

    async def start(self) -> None:
        self._blackholed = False
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def blackhole(self) -> None:
        self._blackholed = True

    async def restore(self) -> None:
        await self.cut()
        await self.start()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        self.accepted += 1
        upstream: asyncio.StreamWriter | None = None
        try:
            if self._blackholed:
                while await reader.read(65536):
                    pass
                return
            up_reader, upstream = await asyncio.open_connection(*self.target)
            self._writers.add(upstream)
            await asyncio.gather(self._pump(reader, upstream), self._pump(up_reader, writer))
        except OSError:
            pass
        finally:
            for w in (writer, upstream):
                if w is not None:
                    self._writers.discard(w)
                    w.transport.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            if self._blackholed:
                continue  # swallowed: the peer waits for an answer that never comes
            writer.write(data)
            await writer.drain()
        with contextlib.suppress(OSError):
            writer.write_eof()


@pytest.fixture
async def tcp_proxy() -> AsyncIterator[TcpProxy]:
    """A started proxy in front of the test database."""
    host, port = _database_address()
    proxy = TcpProxy(host, port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.cut()


def _database_address() -> tuple[str, int]:
    parts = urlsplit(DATABASE_URL)
    return parts.hostname or "127.0.0.1", parts.port or 5432


def via(host_port: str) -> str:
    """The test database URL with its host and port replaced."""
    parts = urlsplit(DATABASE_URL)
    userinfo = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit(parts._replace(netloc=userinfo + host_port))


@pytest.fixture
def closed_port_url() -> str:
    """The test database URL pointing at a loopback port nothing listens on."""
    return via(f"127.0.0.1:{free_port()}")
