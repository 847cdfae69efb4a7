"""The periodic cleanup: expired cache entries and finished jobs past their retention.

Deletes run in small batches (`cleanup_batch_size` rows per statement, `SKIP LOCKED`), so they
hold locks briefly, never block requests, and several replicas can run them at once.
"""

from __future__ import annotations

import asyncio
import logging

from gateway.config import StoreSettings
from gateway.errors import Unavailable
from gateway.store.base import Store

log = logging.getLogger(__name__)


async def purge_expired(store: Store, batch_size: int) -> tuple[int, int]:
    """Deletes every expired cache entry and finished job past retention, batch by batch.

    Returns (cache entries, jobs) deleted.
    """
    results = jobs = 0
    while (deleted := await store.purge_expired_results(batch_size)) > 0:
        results += deleted
    while (deleted := await store.purge_finished_jobs(batch_size)) > 0:
        jobs += deleted
    return results, jobs


async def run_cleanup(store: Store, settings: StoreSettings) -> None:
    """Runs `purge_expired` every `cleanup_interval_s` until cancelled.

    A database outage skips a round (logged); the next round catches up.
    """
    while True:
        await asyncio.sleep(settings.cleanup_interval_s)
        try:
            results, jobs = await purge_expired(store, settings.cleanup_batch_size)
        except Unavailable as exc:
            log.warning("store cleanup skipped: %s", exc.message)
            continue
        if results or jobs:
            log.info("store cleanup deleted %d cache entries and %d jobs", results, jobs)
