"""PostgreSQL-only behaviour: migrations, and what the store does when the database misbehaves.

Faults are real network faults on loopback: a port nothing listens on, and a TCP proxy that
cuts connections or swallows traffic (a hung host). "Fails fast" is checked as "fails with
UNAVAILABLE before a generous bound", never as a measured latency.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import redirect_stdout
from typing import Any, TypeVar

import asyncpg
import pytest

from gateway.cli import main as cli_main
from gateway.config import StoreSettings
from gateway.errors import Unavailable
from gateway.store import JobError, JobStatus, LeaseLost, NewJob, ResultRef, Store
from gateway.store.migrate import (
    MigrationError,
    applied_versions,
    latest_version,
    load_migrations,
    migrate,
    quote_ident,
)
from gateway.store.postgres import PostgresStore, channel_name, run_migrations

T = TypeVar("T")
PgSettings = Callable[..., StoreSettings]
TABLES = ("ai_results", "ai_jobs", "ai_usage", "ai_usage_daily", "schema_migrations")
REF = ResultRef(json="{}")
#: Far above every configured timeout (1 s connect + 1 s command): only a hang reaches it.
HANG_S = 15.0


def key(name: str) -> bytes:
    return hashlib.sha256(name.encode()).digest()


@pytest.fixture
def database_url(pg_settings: PgSettings) -> str:
    url = pg_settings().database_url
    assert url is not None
    return url.get_secret_value()


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(database_url)
    try:
        yield connection
    finally:
        await connection.close()


async def tables(conn: asyncpg.Connection, schema: str) -> list[str]:
    found = []
    for table in TABLES:
        if await conn.fetchval("SELECT to_regclass($1)", f"{quote_ident(schema)}.{table}"):
            found.append(table)
    return found


async def recovered(call: Callable[[], Awaitable[T]], within_s: float = HANG_S) -> T:
    """Retries `call` while it raises Unavailable, until it succeeds (bounded)."""
    async with asyncio.timeout(within_s):
        while True:
            try:
                return await call()
            except Unavailable:
                await asyncio.sleep(0.05)


async def started(settings: StoreSettings) -> PostgresStore:
    store = PostgresStore(settings)
    await store.start()
    return store


# -- migrations ------------------------------------------------------------------------------


async def test_migrations_apply_from_empty_and_rerun_changes_nothing(
    conn: asyncpg.Connection, pg_schema: str
) -> None:
    assert await tables(conn, pg_schema) == []
    every = [m.version for m in load_migrations()]
    assert every and every[-1] == latest_version()
    assert await migrate(conn, pg_schema) == every
    assert await tables(conn, pg_schema) == list(TABLES)
    assert await migrate(conn, pg_schema) == []
    assert sorted(await applied_versions(conn, pg_schema)) == every


async def test_replicas_migrating_at_once_apply_each_migration_once(
    database_url: str, pg_schema: str
) -> None:
    conns = [await asyncpg.connect(database_url) for _ in range(4)]
    try:
        applied = await asyncio.gather(*(migrate(c, pg_schema) for c in conns))
    finally:
        for c in conns:
            await c.close()
    assert sorted(applied) == [[], [], [], [m.version for m in load_migrations()]]


async def test_a_migration_edited_after_it_was_applied_is_refused(
    conn: asyncpg.Connection, pg_schema: str
) -> None:
    await migrate(conn, pg_schema)
    await conn.execute(f"UPDATE {quote_ident(pg_schema)}.schema_migrations SET checksum = 'edited'")
    with pytest.raises(MigrationError, match="changed after it was applied"):
        await migrate(conn, pg_schema)


async def test_a_schema_migrated_before_a_comment_only_edit_still_starts(
    conn: asyncpg.Connection, pg_schema: str
) -> None:
    # 0001's text before its header comment was corrected, as such schemas recorded it.
    await migrate(conn, pg_schema)
    earlier = "19964d3a4d20901642b4805a9385813e535720cdda493e1af7f64b419abbcc13"
    table = f"{quote_ident(pg_schema)}.schema_migrations"
    await conn.execute(f"UPDATE {table} SET checksum = $1 WHERE version = 1", earlier)
    assert await migrate(conn, pg_schema) == []
    # The exception is for that version alone.
    await conn.execute(f"UPDATE {table} SET checksum = $1 WHERE version = 2", earlier)
    with pytest.raises(MigrationError, match="0002_blobs changed after it was applied"):
        await migrate(conn, pg_schema)


async def test_any_schema_name_works(conn: asyncpg.Connection, pg_settings: PgSettings) -> None:
    schema = f'Odd "Schema"; DROP {uuid.uuid4().hex[:8]}'
    try:
        await migrate(conn, schema)
        assert await tables(conn, schema) == list(TABLES)
        store = await started(pg_settings(schema_name=schema))
        try:
            job = await store.join_or_create_active_job(
                NewJob("u", "op", "{}", dedupe_key=key("k"))
            )
            waiter = asyncio.create_task(store.wait_for_job_change(job.job.id, "u", 1, 60))
            await store.claim_job(job.job.id, "w", 30)
            async with asyncio.timeout(HANG_S):
                assert (await waiter).status is JobStatus.RUNNING
        finally:
            await store.close()
    finally:
        await conn.execute(f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE")


async def test_an_unmigrated_schema_fails_calls_with_a_hint(pg_settings: PgSettings) -> None:
    store = await started(pg_settings())
    try:
        with pytest.raises(Unavailable, match="viewbait-gateway migrate"):
            await store.get_result(key("k"))
    finally:
        await store.close()


async def test_migrate_on_start(pg_settings: PgSettings) -> None:
    store = await started(pg_settings(migrate_on_start=True))
    try:
        await store.put_result(key("k"), op="x", scope="global", model="m", ref=REF, ttl_s=60)
        assert await store.get_result(key("k")) is not None
    finally:
        await store.close()


def test_migrate_command(
    pg_settings: PgSettings, pg_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = pg_settings().database_url
    assert url is not None
    monkeypatch.setenv("VIEWBAIT_STORE__DATABASE_URL", url.get_secret_value())
    monkeypatch.setenv("VIEWBAIT_STORE__SCHEMA", pg_schema)
    outputs = []
    for _ in range(2):
        out = io.StringIO()
        with redirect_stdout(out):
            assert cli_main(["migrate"]) == 0
        outputs.append(out.getvalue())
    assert f"applied migrations {[m.version for m in load_migrations()]}" in outputs[0]
    assert "up to date" in outputs[1]
    monkeypatch.delenv("VIEWBAIT_STORE__DATABASE_URL")
    assert cli_main(["migrate"]) == 2


# -- faults ----------------------------------------------------------------------------------


@pytest.fixture
async def migrated(pg_settings: PgSettings) -> None:
    await run_migrations(pg_settings())


async def every_call_is_unavailable(store: Store, pause_s: float = 0.0) -> None:
    calls: list[Callable[[], Awaitable[Any]]] = [
        lambda: store.get_result(key("k")),
        lambda: store.put_result(key("k"), op="x", scope="user", model="m", ref=REF, ttl_s=9),
        lambda: store.join_or_create_active_job(NewJob("u", "op", "{}", dedupe_key=key("k"))),
        lambda: store.get_job(str(uuid.uuid4()), "u"),
        lambda: store.wait_for_job_change(str(uuid.uuid4()), "u", 0, 60),
    ]
    for call in calls:
        async with asyncio.timeout(HANG_S):
            with pytest.raises(Unavailable, match="retry shortly"):
                await call()
        await asyncio.sleep(pause_s)


async def test_nothing_listening_fails_fast(pg_settings: PgSettings, closed_port_url: str) -> None:
    store = await started(pg_settings(closed_port_url))
    try:
        await every_call_is_unavailable(store)
        assert not store.listening
    finally:
        await store.close()


#: Every call meets the fault itself instead of failing at once on the open circuit.
#: (with `pause_s` longer than the interval between calls).
NO_CIRCUIT = {"reconnect_interval_s": 0.001, "connect_timeout_s": 0.3, "command_timeout_s": 0.3}


async def test_a_database_that_never_answers_fails_within_the_timeout(
    pg_settings: PgSettings, tcp_proxy: Any, migrated: None
) -> None:
    tcp_proxy.blackhole()
    store = await started(pg_settings(tcp_proxy.url, **NO_CIRCUIT))
    try:
        await every_call_is_unavailable(store, pause_s=0.01)
    finally:
        await store.close()


async def test_a_database_hanging_mid_session_fails_calls_then_recovers(
    pg_settings: PgSettings, tcp_proxy: Any, migrated: None
) -> None:
    store = await started(pg_settings(tcp_proxy.url, **NO_CIRCUIT))
    try:
        await store.put_result(key("k"), op="x", scope="user", model="m", ref=REF, ttl_s=60)
        tcp_proxy.blackhole()
        await every_call_is_unavailable(store, pause_s=0.01)
        await tcp_proxy.restore()
        assert await recovered(lambda: store.get_result(key("k"))) is not None
    finally:
        await store.close()


async def test_the_store_recovers_when_the_database_returns(
    pg_settings: PgSettings, tcp_proxy: Any, migrated: None
) -> None:
    through_proxy = await started(pg_settings(tcp_proxy.url))
    direct = await started(pg_settings())
    try:
        job = (await direct.join_or_create_active_job(NewJob("u", "op", "{}"))).job
        await recovered(lambda: through_proxy.get_job(job.id, "u"))
        await tcp_proxy.cut()
        await every_call_is_unavailable(through_proxy)
        await tcp_proxy.restore()
        assert (await recovered(lambda: through_proxy.get_job(job.id, "u"))).id == job.id

        # The listener reconnects by itself: a change on the other replica wakes a waiter here
        # (polling is every 30 s in these tests, so the wake-up is NOTIFY's).
        async def listening() -> bool:
            if not through_proxy.listening:
                raise Unavailable("not yet")
            return True

        await recovered(listening)
        waiter = asyncio.create_task(through_proxy.wait_for_job_change(job.id, "u", 1, 60))
        await asyncio.sleep(0.1)
        await direct.claim_job(job.id, "w", 30)
        async with asyncio.timeout(HANG_S):
            assert (await waiter).status is JobStatus.RUNNING
    finally:
        await through_proxy.close()
        await direct.close()


async def test_an_open_circuit_spares_the_database(
    pg_settings: PgSettings, tcp_proxy: Any, migrated: None
) -> None:
    # No minimum pool size: asyncpg would replace the connection broken below in the
    # background, which is the pool's doing, not a caller's.
    store = await started(pg_settings(tcp_proxy.url, reconnect_interval_s=60, pool_min_size=0))
    try:
        await store.get_result(key("k"))
        tcp_proxy.blackhole()
        with pytest.raises(Unavailable):
            await store.get_result(key("k"))
        # Callers now fail at once instead of each queueing behind the dead connection; no
        # new connection is even attempted while the circuit is open.
        attempts = tcp_proxy.accepted
        await every_call_is_unavailable(store)
        assert tcp_proxy.accepted == attempts
    finally:
        await store.close()


async def test_a_store_started_while_the_database_is_down_connects_later(
    pg_settings: PgSettings, tcp_proxy: Any, migrated: None
) -> None:
    await tcp_proxy.cut()
    store = await started(pg_settings(tcp_proxy.url))
    try:
        with pytest.raises(Unavailable):
            await store.get_result(key("k"))
        await tcp_proxy.restore()
        assert await recovered(lambda: store.get_result(key("k"))) is None
    finally:
        await store.close()


async def test_two_replicas_hold_one_active_row_per_key(
    make_store: Callable[..., Awaitable[Store]], conn: asyncpg.Connection, pg_schema: str
) -> None:
    a, b = await make_store("postgres"), await make_store("postgres")
    new = NewJob("u", "op", "{}", dedupe_key=key("herd"))
    outcomes = await asyncio.gather(*(s.join_or_create_active_job(new) for s in [a, b] * 25))
    assert sum(o.created for o in outcomes) == 1
    rows = await conn.fetchval(
        f"SELECT count(*) FROM {quote_ident(pg_schema)}.ai_jobs WHERE dedupe_key = $1",
        key("herd"),
    )
    assert rows == 1


async def test_concurrent_cache_lookups_and_writes_share_statements(
    make_store: Callable[..., Awaitable[Store]],
) -> None:
    store = await make_store("postgres")
    assert isinstance(store, PostgresStore)
    keys = [key(f"entry-{n}") for n in range(20)]
    # Held writes among them: a claim that is current writes, one that is not writes nothing.
    runner = await store.join_or_create_active_job(NewJob("u", "op", "{}", dedupe_key=keys[0]))
    claimed = await store.claim_job(runner.job.id, "worker-a", 30, held=True)
    assert claimed is not None
    stale = dataclasses.replace(claimed.claim, fence=claimed.fence - 1)

    async def put(n: int) -> object:
        claim = claimed.claim if n == 0 else stale if n == 1 else None
        try:
            return await store.put_result(
                keys[n],
                op="op",
                scope="user",
                model="m",
                ref=ResultRef(json=f'{{"n":{n}}}'),
                ttl_s=60,
                claim=claim,
            )
        except LeaseLost as lost:
            return lost

    written = await asyncio.gather(*(put(n) for n in range(len(keys))))
    assert isinstance(written[1], LeaseLost) and written[1].job_id == claimed.id
    assert all(not isinstance(w, LeaseLost) for i, w in enumerate(written) if i != 1)
    found = await asyncio.gather(*(store.get_result(k) for k in [*keys, key("missing")]))
    assert found[-1] is None and found[1] is None
    assert [f.ref.json for f in found if f is not None] == [
        f'{{"n":{n}}}' for n in range(len(keys)) if n != 1
    ]
    # 20 concurrent writes and 21 concurrent lookups, far fewer statements.
    assert store.results.writes.batches < 10 and store.results.lookups.batches < 10


async def test_a_batch_claim_tells_which_executions_have_a_cached_result(
    make_store: Callable[..., Awaitable[Store]],
) -> None:
    store = await make_store("postgres")
    for name in ("cached", "fresh", "expired"):
        await store.join_or_create_active_job(NewJob("u", "op", "{}", dedupe_key=key(name)))
    await store.put_result(key("cached"), op="op", scope="user", model="m", ref=REF, ttl_s=60)
    await store.put_result(key("expired"), op="op", scope="user", model="m", ref=REF, ttl_s=0.01)
    await asyncio.sleep(0.05)
    for caps in (None, {0: 10}):
        claimed = await store.claim_batch("worker", 10, 30, caps)
        assert {job.dedupe_key: job.result_cached for job in claimed} == {
            key("cached"): True,
            key("fresh"): False,
            key("expired"): False,
        }
        for job in claimed:
            await store.fail_job(job.claim, JobError("UNAVAILABLE", "again"), retry_after_s=0)
    # Every other read leaves it unknown.
    assert (await store.get_job(claimed[0].id, None)).result_cached is None


async def blocked_by(watcher: asyncpg.Connection, pid: int) -> None:
    """Waits until another session waits for a lock the session `pid` holds (bounded)."""
    async with asyncio.timeout(HANG_S):
        while True:
            if await watcher.fetchval(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_activity"
                " WHERE $1 = ANY(pg_blocking_pids(pid)))",
                pid,
            ):
                return
            await asyncio.sleep(0.01)


async def test_a_capped_claim_counts_what_was_claimed_while_it_waited_its_turn(
    make_store: Callable[..., Awaitable[Store]], conn: asyncpg.Connection, database_url: str
) -> None:
    # A capped claim counts her running executions once it holds its turn (the claim lock),
    # as they are then: counted as they were when it began waiting (the snapshot of a
    # statement that takes the lock itself), a job she submitted and another replica claimed
    # meanwhile would be missed, and her cap exceeded.
    a, b = await make_store("postgres"), await make_store("postgres")
    assert isinstance(a, PostgresStore)
    queued = (
        await a.join_or_create_active_job(NewJob("alice", "op", "{}", dedupe_key=key("q")))
    ).job
    watcher = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            # Another replica's capped claim has the turn.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", a.jobs.claim_lock_key)
            claiming = asyncio.create_task(a.claim_batch("w-a", 10, 30, {0: 1}))
            await blocked_by(watcher, conn.get_server_pid())
            later = await b.join_or_create_active_job(
                NewJob("alice", "op", "{}", dedupe_key=key("new"))
            )
            assert await b.claim_job(later.job.id, "w-b", 30) is not None
        assert await claiming == []
    finally:
        await watcher.close()
    assert (await a.get_job(queued.id, None)).status is JobStatus.QUEUED


async def test_a_completion_mirrors_a_handle_added_while_it_waited_for_the_execution(
    make_store: Callable[..., Awaitable[Store]], conn: asyncpg.Connection, database_url: str
) -> None:
    # A user joining a shared execution holds it FOR SHARE until her handle is committed; a
    # completion waiting for that must mirror the handle it could not see when it began.
    store = await make_store("postgres")
    assert isinstance(store, PostgresStore)
    shared = NewJob("alice", "op", "{}", dedupe_key=key("shared"), shared=True)
    execution_id = (await store.join_or_create_active_job(shared)).job.execution_id
    claimed = await store.claim_job(execution_id, "w1", 30)
    assert claimed is not None
    q = store.queries
    watcher = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            # Bob joins, as join_or_create_active_job does.
            execution = await conn.fetchrow(*q("active_execution", dedupe_key=key("shared")))
            handle = await conn.fetchrow(
                *q(
                    "insert_handle",
                    job_id=uuid.uuid4(),
                    user_id="bob",
                    input_json="{}",
                    input_blobs=[],
                    idempotency_key=None,
                    request_hash=None,
                    priority=0,
                    execution_id=execution["id"],
                    coalesced=True,
                    traceparent=None,
                    tracestate=None,
                )
            )
            completing = asyncio.create_task(store.complete_job(claimed.claim, REF))
            await blocked_by(watcher, conn.get_server_pid())
        assert (await completing).status is JobStatus.SUCCEEDED
    finally:
        await watcher.close()
    assert (await store.get_job(str(handle["id"]), "bob")).status is JobStatus.SUCCEEDED


async def test_due_notifications_are_debounced_to_one_per_transaction(
    make_store: Callable[..., Awaitable[Store]], conn: asyncpg.Connection, pg_schema: str
) -> None:
    store = await make_store("postgres")
    payloads: asyncio.Queue[str] = asyncio.Queue()
    await conn.add_listener(channel_name(pg_schema), lambda *args: payloads.put_nowait(args[3]))
    jobs = [(await store.join_or_create_active_job(NewJob("u", "op", "{}"))).job for _ in range(3)]
    for job in jobs:
        assert await store.claim_job(job.id, "w1", 0.2) is not None
    # An execution held for its creator (an inline run) wakes no worker.
    await store.join_or_create_active_job(NewJob("u", "op", "{}", hold_s=30))
    await asyncio.sleep(0.3)

    assert await store.rescue_expired_leases(10) == 3  # one transaction queues all three again
    # Notifications are delivered in commit order: this marks the end of the rescue's.
    await conn.execute("SELECT pg_notify($1, 'end')", channel_name(pg_schema))

    received = []
    async with asyncio.timeout(HANG_S):
        while not received or received[-1] != "end":
            received.append(await payloads.get())
    # One per announced insert, then one for the whole rescue (job changes carry '<id>:<seq>').
    assert [p for p in received if ":" not in p] == ["due"] * 4 + ["end"]


async def test_a_session_left_idle_in_a_transaction_is_ended_after_a_store_calls_bound(
    pg_settings: PgSettings,
) -> None:
    # A replica paused mid-transaction must not hold its locks (the capped claims' lock among
    # them) for longer than any store call may take: PostgreSQL ends the session then.
    settings = pg_settings(connect_timeout_s=1.5, command_timeout_s=2.0)
    await run_migrations(settings)
    store = PostgresStore(settings)
    await store.start()
    try:
        shown = await store.pool.run(
            lambda c: c.fetchval("SHOW idle_in_transaction_session_timeout")
        )
    finally:
        await store.close()
    assert shown == "3500ms"
