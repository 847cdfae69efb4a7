"""Content-addressed blob storage: images, heatmaps and large result JSON, named by SHA-256.

One interface (`BlobStore`, see `base`), three homes: `PostgresBlobStore` (the database every
replica shares; the default whenever a database is configured), `S3BlobStore` (any
S3-compatible object store), `LocalBlobStore` (a directory: embedded mode, or a mount every
replica shares). `create_blob_store` picks the one the settings ask for; `gc` collects blobs
no row references. docs/storage.md describes the layout and the lifecycle.
"""

from __future__ import annotations

from gateway.config import StoreSettings
from gateway.store.base import Store
from gateway.store.blobs.base import (
    DIGEST_SIZE,
    BlobCorrupt,
    BlobError,
    BlobNotFound,
    BlobStore,
)
from gateway.store.blobs.local import LocalBlobStore


def create_blob_store(settings: StoreSettings, store: Store) -> BlobStore:
    """The blob store `settings` ask for (`store.blob_backend`); the postgres one shares
    `store`'s pool and circuit, so `store` must be the `PostgresStore` of the same settings."""
    # A put refreshes a blob older than half the grace period, so a blob a row is about to
    # reference always has at least half of it left.
    refresh_after_s = settings.blob_gc_grace_s / 2
    backend = settings.resolved_blob_backend
    if backend == "postgres":
        from gateway.store.blobs.postgres import PostgresBlobStore
        from gateway.store.postgres import PostgresStore

        if not isinstance(store, PostgresStore):
            raise TypeError("the postgres blob store needs the PostgreSQL store")
        return PostgresBlobStore(store, refresh_after_s=refresh_after_s)
    if backend == "s3":
        from gateway.store.blobs.s3 import S3BlobStore

        return S3BlobStore.from_settings(settings, refresh_after_s=refresh_after_s)
    return LocalBlobStore(settings.blob_dir, refresh_after_s=refresh_after_s)


__all__ = [
    "DIGEST_SIZE",
    "BlobCorrupt",
    "BlobError",
    "BlobNotFound",
    "BlobStore",
    "LocalBlobStore",
    "create_blob_store",
]
