"""The store's connections: an asyncpg pool behind a circuit, every failure an `Unavailable`.

Every call is bounded by `connect_timeout_s + command_timeout_s` and fails with
`gateway.errors.Unavailable` when the database is unreachable, slow or not migrated. A call that
fails that way opens a circuit: for `reconnect_interval_s` every call fails at once (no request
queues behind a dead database), then the next call tries again, re-creating the pool if it was
never made. asyncpg replaces broken pooled connections. Nothing needs a restart when the
database returns.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any, TypeVar

import asyncpg

from gateway import errors
from gateway.config import StoreSettings
from gateway.store import migrate as migrations

log = logging.getLogger(__name__)

T = TypeVar("T")
Connection = migrations.Connection
Record = asyncpg.Record

#: Failures that mean "the database cannot be reached or cannot serve now", not "bad query".
UNREACHABLE: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    # A pooled connection the server is terminating (a restart, an administrator's kill) can
    # still be handed out while it consumes the server's FATAL error; a statement on it then
    # fails with "cannot switch to state ...; another operation is in progress".
    asyncpg.InternalClientError,
)

UNREACHABLE_OR_SLOW: tuple[type[BaseException], ...] = (TimeoutError, *UNREACHABLE)

#: Bound on migrations applied at start (`migrate_on_start`); `viewbait-gateway migrate` has none.
_MIGRATE_ON_START_TIMEOUT_S = 300.0


async def _keep_session(_conn: Connection) -> None:
    """The pool's reset of a released connection: nothing beyond asyncpg's own rollback of an
    open transaction. Its default (RESET ALL, UNLISTEN *, unlock advisory locks, CLOSE ALL)
    costs a round trip at the end of every store call, and the store leaves no session state:
    its advisory locks are transaction-scoped and it listens on a connection of its own."""


def _retrieve(task: asyncio.Task[Any]) -> None:
    # An attempt whose callers all gave up: its failure was handled (circuit), not lost.
    if not task.cancelled():
        task.exception()


def deleted(status: str) -> int:
    """The row count of a DELETE's command tag, e.g. "DELETE 12"."""
    return int(status.rsplit(" ", 1)[-1])


def usd(amount: float) -> Decimal:
    """A dollar amount for a numeric column, exactly as the float prints (no binary noise)."""
    return Decimal(repr(float(amount)))


class Pool:
    """The pooled connections of one store, opened on first use, behind the circuit."""

    def __init__(self, settings: StoreSettings) -> None:
        if settings.database_url is None:
            raise ValueError("PostgresStore needs store.database_url")
        self._settings = settings
        self.dsn = settings.database_url.get_secret_value()
        self.schema = settings.schema_name
        #: One store call: maybe a new connection, then its statements.
        self.call_timeout_s = settings.connect_timeout_s + settings.command_timeout_s
        self._pool: asyncpg.Pool | None = None
        self._opening: asyncio.Task[asyncpg.Pool] | None = None
        self._retry_at = 0.0
        self._last_failure = ""
        self._closed = False

    async def open(self) -> None:
        """Connects now; a database that is down is retried on later calls."""
        try:
            await self._get_pool()
        except errors.Unavailable as exc:
            log.warning("store not ready at start, will retry on use: %s", exc.message)

    def closing(self) -> None:
        """From now on every call fails (`close` finishes the job)."""
        self._closed = True

    async def close(self) -> None:
        """Fails every later call, abandons a connection attempt and closes the pool."""
        self._closed = True
        if self._opening is not None:
            self._opening.cancel()
            await asyncio.gather(self._opening, return_exceptions=True)
            self._opening = None
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                async with asyncio.timeout(self._settings.command_timeout_s):
                    await pool.close()
            except UNREACHABLE_OR_SLOW:
                pool.terminate()

    @property
    def circuit_open(self) -> bool:
        """Whether calls fail at once right now, after a connection failure (metrics)."""
        return asyncio.get_running_loop().time() < self._retry_at

    def connections(self) -> tuple[int, int]:
        """The pool's connections (in use, idle) right now; none before it is opened."""
        pool = self._pool
        if pool is None:
            return 0, 0
        idle = pool.get_idle_size()
        return pool.get_size() - idle, idle

    @property
    def max_connections(self) -> int:
        """Most connections the pool opens."""
        return self._settings.pool_max_size

    def unavailable(self, detail: str) -> errors.Unavailable:
        """The error of a store call that cannot be served now, saying why."""
        return errors.Unavailable(
            f"the result and job store (PostgreSQL) is unavailable: {detail}; retry shortly",
            retry_after_s=self._settings.reconnect_interval_s,
        )

    async def run(
        self, fn: Callable[[Connection], Awaitable[T]], *, transaction: bool = False
    ) -> T:
        """Runs `fn` on a pooled connection (in a transaction if asked), bounded in time."""
        pool = await self._get_pool()
        try:
            async with (
                asyncio.timeout(self.call_timeout_s),
                pool.acquire(timeout=self.call_timeout_s) as conn,
            ):
                if not transaction:
                    return await fn(conn)
                async with conn.transaction():
                    return await fn(conn)
        except TimeoutError:
            failure = self.unavailable(f"no answer within {self.call_timeout_s:g} s")
            raise self._trip(failure) from None
        except asyncpg.UndefinedTableError:
            log.error("schema %s is not migrated: run `viewbait-gateway migrate`", self.schema)
            raise self.unavailable(
                "its schema is not migrated: run `viewbait-gateway migrate`"
            ) from None
        except UNREACHABLE as exc:
            failure = self.unavailable(f"connection failed ({type(exc).__name__})")
            raise self._trip(failure) from None

    def _trip(self, failure: errors.Unavailable) -> errors.Unavailable:
        """Opens the circuit: for `reconnect_interval_s`, calls fail at once with this failure
        instead of each waiting out the timeouts against a database that is down."""
        loop = asyncio.get_running_loop()
        self._retry_at = loop.time() + self._settings.reconnect_interval_s
        self._last_failure = failure.message
        return failure

    def _check_circuit(self) -> None:
        if self._closed:
            raise self.unavailable("the store is closed")
        if asyncio.get_running_loop().time() < self._retry_at:
            raise errors.Unavailable(
                self._last_failure, retry_after_s=self._settings.reconnect_interval_s
            )

    async def _get_pool(self) -> asyncpg.Pool:
        self._check_circuit()
        if self._pool is not None:
            return self._pool
        if self._opening is None or self._opening.done():
            # The store owns the attempt, not the caller: a caller giving up (its timeout, its
            # cancellation) does not abort a connection or migration others will use.
            self._opening = asyncio.create_task(self._open())
            self._opening.add_done_callback(_retrieve)
        try:
            async with asyncio.timeout(self.call_timeout_s):
                return await asyncio.shield(self._opening)
        except TimeoutError:
            raise self.unavailable("still connecting") from None

    async def _open(self) -> asyncpg.Pool:
        try:
            self._pool = await self._open_pool()
        except errors.Unavailable as exc:
            raise self._trip(exc) from None
        return self._pool

    async def _open_pool(self) -> asyncpg.Pool:
        settings = self._settings
        pool: asyncpg.Pool | None = None
        try:
            async with asyncio.timeout(self.call_timeout_s):
                pool = await asyncpg.create_pool(
                    self.dsn,
                    min_size=settings.pool_min_size,
                    max_size=settings.pool_max_size,
                    timeout=settings.connect_timeout_s,
                    command_timeout=settings.command_timeout_s,
                    reset=_keep_session,
                    # A replica stopped in the middle of a transaction (paused, its event loop
                    # stalled) would hold its locks, the capped claims' lock among them, and so
                    # stall every replica's claims: PostgreSQL ends such a session once it has
                    # idled past the longest a store call may take.
                    server_settings={
                        "idle_in_transaction_session_timeout": str(
                            math.ceil(self.call_timeout_s * 1000)
                        )
                    },
                )
            await self._prepare_schema(pool)
            return pool
        except BaseException as exc:
            if pool is not None:
                pool.terminate()
            if isinstance(exc, UNREACHABLE_OR_SLOW):
                raise self.unavailable(f"cannot connect ({type(exc).__name__})") from None
            if isinstance(exc, migrations.MigrationError | asyncpg.PostgresError):
                # An operator must act (permissions, an edited migration): say so loudly, and
                # keep failing calls cleanly until it is fixed.
                log.error("the store cannot prepare schema %s: %s", self.schema, exc)
                raise self.unavailable(
                    f"its schema cannot be prepared ({type(exc).__name__})"
                ) from None
            raise

    async def _prepare_schema(self, pool: asyncpg.Pool) -> None:
        if self._settings.migrate_on_start:
            # Migrations may take longer than one store call: a dedicated connection without
            # the pool's command timeout, bounded only against a database that stopped answering.
            async with asyncio.timeout(_MIGRATE_ON_START_TIMEOUT_S):
                await run_migrations(self._settings)
            return
        async with asyncio.timeout(self.call_timeout_s), pool.acquire() as conn:
            pending = await migrations.pending_versions(conn, self.schema)
        if pending:
            log.error(
                "schema %s lacks migrations %s: run `viewbait-gateway migrate` (or set "
                "store.migrate_on_start)",
                self.schema,
                pending,
            )
            raise self.unavailable("its schema lacks migrations: run `viewbait-gateway migrate`")


async def run_migrations(settings: StoreSettings) -> list[int]:
    """Applies pending migrations to the configured schema on a dedicated connection.

    Returns the versions applied (empty when the schema was up to date). Raises `Unavailable`
    when the database cannot be reached within the connect timeout.
    """
    if settings.database_url is None:
        raise ValueError("migrations need store.database_url")
    try:
        conn = await asyncpg.connect(
            settings.database_url.get_secret_value(), timeout=settings.connect_timeout_s
        )
    except UNREACHABLE_OR_SLOW as exc:
        raise errors.Unavailable(
            f"cannot connect to PostgreSQL to migrate ({type(exc).__name__})"
        ) from None
    try:
        return await migrations.migrate(conn, settings.schema_name)
    finally:
        await conn.close()
