"""The lease rescue loop (`gateway.jobs.rescue`): it re-queues executions whose lease lapsed,
and reports through its callback whether the store answers (real PostgreSQL, cut off and
restored by a TCP proxy)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from gateway.jobs.rescue import rescue_leases
from gateway.store import JobStatus, MemoryStore, NewJob, Store
from gateway.store.blobs import LocalBlobStore
from gateway.store.postgres import PostgresStore, run_migrations
from tests.fixtures.gateways import eventually
from tests.fixtures.stores import TcpProxy, store_settings

LEASE_S = 0.05


@contextlib.asynccontextmanager
async def rescuing(
    store: Store,
    blob_dir: Path,
    report: Callable[[bool], None],
    rescued: Callable[[int], None] | None = None,
) -> AsyncIterator[None]:
    """The rescue loop over `store`, every few milliseconds, until the block ends."""
    loop = asyncio.create_task(
        rescue_leases(
            store,
            LocalBlobStore(blob_dir),
            batch=10,
            interval_s=0.02,
            report_health=report,
            rescued=rescued,
        )
    )
    try:
        yield
    finally:
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop


async def test_a_lapsed_lease_is_queued_again(tmp_path: Path) -> None:
    store = MemoryStore()
    await store.start()
    try:
        joined = await store.join_or_create_active_job(
            NewJob(user_id="user-a", op="analyze_video", input_json="{}", dedupe_key=b"k")
        )
        [claimed] = await store.claim_batch("dead-replica", 1, LEASE_S, {})
        assert claimed.id == joined.job.id
        await asyncio.sleep(LEASE_S + 0.1)  # its holder is gone: the lease lapses
        health: list[bool] = []
        rescued: list[int] = []
        async with rescuing(store, tmp_path / "blobs", health.append, rescued.append):
            await eventually(lambda: bool(health), "a round of the rescue loop")
        assert (await store.get_job(joined.job.id, "user-a")).status is JobStatus.QUEUED
        assert health[0] is True
        # What each statement rescued (the metrics' count): the one lapsed lease, once.
        assert rescued[0] == 1 and sum(rescued) == 1
    finally:
        await store.close()


async def test_the_store_is_reported_down_while_it_does_not_answer_and_up_again_after(
    pg_schema: str, tcp_proxy: TcpProxy, tmp_path: Path
) -> None:
    await run_migrations(store_settings(pg_schema))
    store = PostgresStore(store_settings(pg_schema, tcp_proxy.url))
    await store.start()
    health: list[bool] = []
    try:
        async with rescuing(store, tmp_path / "blobs", health.append):
            await eventually(lambda: health[-1:] == [True], "the store reported up")
            await tcp_proxy.cut()
            await eventually(lambda: health[-1:] == [False], "the store reported down")
            await tcp_proxy.restore()
            await eventually(lambda: health[-1:] == [True], "the store reported up again")
    finally:
        await store.close()
