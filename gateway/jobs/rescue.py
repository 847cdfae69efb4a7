"""The lease rescue every replica runs: executions whose lease lapsed (their replica died or
lost the database) are queued again, or failed after their last attempt, so no job is lost.

The same loop is the store's health probe: each round tells whether the job store and the blob
store answer, through a callback (the server's health service).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from gateway.errors import Unavailable
from gateway.store.base import JobStore
from gateway.store.blobs import BlobStore

log = logging.getLogger(__name__)


async def rescue_leases(
    store: JobStore,
    blobs: BlobStore,
    *,
    batch: int,
    interval_s: float,
    report_health: Callable[[bool], None],
    rescued: Callable[[int], None] | None = None,
) -> None:
    """Every `interval_s`: rescues lapsed leases (`batch` rows per statement, until none are
    left; `rescued(count)` after each statement), then pings the blob store;
    `report_health(healthy)` after each round. Runs until cancelled."""
    serving = True
    while True:
        try:
            while True:
                count = await store.rescue_expired_leases(batch)
                if rescued is not None:
                    rescued(count)
                if count < batch:
                    break
            await blobs.ping()
            healthy = True
        except Unavailable as exc:
            healthy = False
            if serving:
                log.warning("store unavailable: %s", exc.message)
        if healthy and not serving:
            log.info("store available again")
        serving = healthy
        report_health(healthy)
        await asyncio.sleep(interval_s)
