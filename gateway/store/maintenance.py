"""The periodic cleanup: expired cache entries, finished jobs past their retention, and then
the blobs no row references any more (`gateway.store.blobs.gc`).

Deletes run in small batches (`cleanup_batch_size` rows per statement, `SKIP LOCKED`), so they
hold locks briefly, never block requests, and several replicas can run them at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

from gateway.config import StoreSettings
from gateway.errors import Unavailable
from gateway.store.base import JobStatus, Store
from gateway.store.blobs import BlobStore
from gateway.store.blobs.gc import collect_garbage

log = logging.getLogger(__name__)


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


async def run_cleanup(store: Store, blobs: BlobStore, settings: StoreSettings) -> None:
    """Runs `purge_expired`, then the blob collector, every `cleanup_interval_s` until
    cancelled.

    An outage skips a round (logged); the next round catches up.
    """
    while True:
        await asyncio.sleep(settings.cleanup_interval_s)
        try:
            results, jobs = await purge_expired(store, settings.cleanup_batch_size)
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
