"""The blob collector: deletes blobs that no row references, once their grace period is over.

Mark and sweep in batches: the blob store lists blobs neither written nor refreshed for
`grace_s` seconds, the result and job store says which of them a cache row or a job still
references, and the rest are deleted if they are still stale at that moment. A writer always
stores a blob before the row that references it, and a `put` of a stored blob refreshes its
age once it is older than half the grace period, so a blob a row is about to reference is never
collected. Several replicas may collect at once: deletions are idempotent.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from gateway.store.base import Store
from gateway.store.blobs.base import BlobStore


@dataclass(slots=True)
class Collected:
    """What one collection did."""

    #: Blobs past the grace period that were looked at.
    examined: int = 0
    #: Of those, blobs a row still references (kept).
    referenced: int = 0
    deleted: int = 0
    seconds: float = 0.0


async def collect_garbage(
    blobs: BlobStore, store: Store, *, grace_s: float, batch_size: int
) -> Collected:
    """Deletes every stale blob no row references, `batch_size` at a time.

    Raises `Unavailable` when either store cannot answer (what was deleted stays deleted).
    """
    started = time.monotonic()
    done = Collected()
    async for batch in blobs.stale(grace_s, batch_size):
        used = await store.referenced_blobs(batch)
        done.examined += len(batch)
        done.referenced += len(used)
        done.deleted += await blobs.delete_stale([d for d in batch if d not in used], grace_s)
    done.seconds = time.monotonic() - started
    return done
