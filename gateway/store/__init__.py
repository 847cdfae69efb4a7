"""Results, jobs and the usage ledger: embedded in process, or shared in PostgreSQL.

`create_store(settings)` picks the implementation: `MemoryStore` when `store.database_url` is
unset, `PostgresStore` otherwise. Both implement `Store`, the union of `ResultStore`,
`JobStore`, `BatchStore` and `UsageStore` (see `gateway.store.base` for the job model), with
the same semantics. Blobs live in `gateway.store.blobs`; the request path
(`gateway.execution.result_cache`) stores a typed operation result across the two. Schema,
coalescing protocol and migrations: docs/storage.md; the PostgreSQL store's statements:
`gateway/store/postgres/sql/queries.sql`.
"""

from __future__ import annotations

from gateway.config import StoreSettings
from gateway.store.base import (
    ACTIVE_STATUSES,
    AttemptError,
    Batch,
    BatchLost,
    BatchStore,
    CachedResult,
    Claim,
    Delivery,
    Job,
    JobError,
    JobProgress,
    JobSpend,
    JobStatus,
    JobStore,
    JoinOutcome,
    LeaseLost,
    NewJob,
    Redrive,
    ResultRef,
    ResultStore,
    Store,
    UsageDay,
    UsageEntry,
    UsageStore,
    UsageTotals,
)
from gateway.store.memory import MemoryStore


def create_store(settings: StoreSettings) -> Store:
    """The store the settings ask for (not started yet: call `start()`)."""
    if settings.database_url is None:
        return MemoryStore(
            job_retention_s=settings.job_retention_s,
            failed_job_retention_s=settings.failed_job_retention_s,
            cancelled_job_retention_s=settings.cancelled_job_retention_s,
            usage_rows_kept=settings.embedded_usage_max_rows,
            results_max_bytes=settings.embedded_cache_max_bytes,
        )
    from gateway.store.postgres import PostgresStore

    return PostgresStore(settings)


__all__ = [
    "ACTIVE_STATUSES",
    "AttemptError",
    "Batch",
    "BatchLost",
    "BatchStore",
    "CachedResult",
    "Claim",
    "Delivery",
    "Job",
    "JobError",
    "JobProgress",
    "JobSpend",
    "JobStatus",
    "JobStore",
    "JoinOutcome",
    "LeaseLost",
    "MemoryStore",
    "NewJob",
    "Redrive",
    "ResultRef",
    "ResultStore",
    "Store",
    "UsageDay",
    "UsageEntry",
    "UsageStore",
    "UsageTotals",
    "create_store",
]
