"""The periodic cleanup: expired cache entries, finished jobs past their retention, the usage
ledger's roll-up and retention, and then the blobs no row references any more
(`gateway.store.blobs.gc`).

Deletes run in small batches (`cleanup_batch_size` rows per statement, `SKIP LOCKED`), so they
hold locks briefly, never block requests, and several replicas can run them at once.

The usage ledger keeps a row per upstream call, cache hit and join for `usage.raw_retention_days`
full UTC days (and today); older rows are moved into the daily totals (per UTC day, user,
operation and model), each batch in one statement, so a row is always counted exactly once.
Daily totals older than `usage.daily_retention_days` are deleted.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta

from gateway.config import StoreSettings, UsageSettings
from gateway.errors import Unavailable
from gateway.store.base import JobStatus, Store, UsageStore
from gateway.store.blobs import BlobStore
from gateway.store.blobs.gc import collect_garbage

log = logging.getLogger(__name__)


def _utcnow() -> datetime:
    return datetime.now(UTC)


async def purge_expired(store: Store, batch_size: int) -> tuple[int, dict[JobStatus, int]]:
    """Deletes every expired cache entry and finished job past retention (the retention of
    its status: dead letters are kept longest by default), batch by batch.

    Returns the cache entries deleted, and the jobs deleted by status.
    """
    results = 0
    while (deleted := await store.purge_expired_results(batch_size)) > 0:
        results += deleted
    jobs: Counter[JobStatus] = Counter()
    while purged := await store.purge_finished_jobs(batch_size):
        jobs.update(purged)
    return results, dict(jobs)


async def roll_up_usage(
    store: UsageStore, settings: UsageSettings, today: date, batch_size: int
) -> tuple[int, int]:
    """Moves the ledger rows of days before the last `raw_retention_days` (UTC, counted back
    from `today`) into the daily totals, and deletes the daily totals of days before the last
    `daily_retention_days`, batch by batch.

    Returns (raw rows rolled up, daily totals deleted).
    """
    rolled = purged = 0
    raw_before = today - timedelta(days=settings.raw_retention_days)
    while (moved := await store.roll_up_usage(raw_before, batch_size)) > 0:
        rolled += moved
    daily_before = today - timedelta(days=settings.daily_retention_days)
    while (deleted := await store.purge_usage_days(daily_before, batch_size)) > 0:
        purged += deleted
    return rolled, purged


async def run_cleanup(
    store: Store,
    blobs: BlobStore,
    settings: StoreSettings,
    usage: UsageSettings,
    *,
    clock: Callable[[], datetime] = _utcnow,
) -> None:
    """Runs `purge_expired`, `roll_up_usage`, then the blob collector, every
    `cleanup_interval_s` until cancelled.

    An outage skips a round (logged); the next round catches up.
    """
    while True:
        await asyncio.sleep(settings.cleanup_interval_s)
        try:
            results, jobs = await purge_expired(store, settings.cleanup_batch_size)
            today = clock().astimezone(UTC).date()
            rolled, days = await roll_up_usage(store, usage, today, settings.cleanup_batch_size)
            # After the rows: blobs only they referenced go in the same round.
            collected = await collect_garbage(
                blobs,
                store,
                grace_s=settings.blob_gc_grace_s,
                batch_size=settings.cleanup_batch_size,
            )
        except Unavailable as exc:
            log.warning("store cleanup skipped: %s", exc.message)
            continue
        if results or jobs or collected.deleted:
            log.info(
                "store cleanup deleted %d cache entries, %d jobs (%s) and %d blobs",
                results,
                sum(jobs.values()),
                ", ".join(f"{n} {status.value}" for status, n in sorted(jobs.items())) or "none",
                collected.deleted,
            )
        if rolled or days:
            log.info(
                "usage ledger: %d rows rolled up into daily totals, %d daily totals deleted",
                rolled,
                days,
                extra={"usage_rows_rolled_up": rolled, "usage_days_deleted": days},
            )
