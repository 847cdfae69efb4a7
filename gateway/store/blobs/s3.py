"""`BlobStore` on an S3-compatible object store: AWS S3, Google Cloud Storage's XML API,
Supabase Storage, MinIO, and any other server speaking the S3 protocol.

The client is obstore (Python bindings of the Rust `object_store` crate of the Apache Arrow
project): natively async (no thread per request), typed, with its own connect and request
timeouts and retries, and one small dependency, where aiobotocore pins exact botocore versions
and costs a Python-level signing path per request.

Objects are named `<prefix>/<ab>/<digest hex>` (the first byte as a directory, so listings and
an object store's partitions spread). A blob's age is its object's last-modified time; a `put`
of a blob stored longer ago than `refresh_after_s` uploads it again, which refreshes that
time (object stores cannot "touch" an object). Every failure other than "not found" raises
`gateway.errors.Unavailable`, and every call is bounded by `timeout_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, TypeVar

import obstore
from obstore.exceptions import BaseError
from obstore.store import S3Store

from gateway.errors import Unavailable
from gateway.store.blobs.base import BlobCorrupt, BlobNotFound, check_digest, digest_of, verified

if TYPE_CHECKING:
    from pydantic import SecretStr

    from gateway.config import StoreSettings

T = TypeVar("T")

log = logging.getLogger(__name__)

#: What obstore raises for a missing object (not its own `NotFoundError`).
NotFoundError = FileNotFoundError

#: Deletions of the collector in flight at once.
_DELETE_CONCURRENCY = 16


def object_key(digest: bytes) -> str:
    """The object key of a blob, below the store's prefix."""
    check_digest(digest)
    name = digest.hex()
    return f"{name[:2]}/{name}"


def _digest_of_key(path: str) -> bytes | None:
    name = path.rsplit("/", 1)[-1]
    if len(name) != 64:
        return None
    try:
        return bytes.fromhex(name)
    except ValueError:
        return None


def _secret(value: SecretStr | None) -> str | None:
    return None if value is None else value.get_secret_value()


class S3BlobStore:
    """`BlobStore` in one bucket (under an optional prefix) of an S3-compatible server."""

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        endpoint: str | None = None,
        region: str = "us-east-1",
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        timeout_s: float = 10.0,
        connect_timeout_s: float = 2.0,
        refresh_after_s: float = 1800.0,
    ) -> None:
        config: dict[str, str] = {"region": region}
        if endpoint:
            config["endpoint"] = endpoint
        if access_key_id is not None and secret_access_key is not None:
            config["access_key_id"] = access_key_id
            config["secret_access_key"] = secret_access_key
        self.bucket = bucket
        self._where = f"s3://{bucket}/{prefix.strip('/')}"
        self._timeout_s = timeout_s
        self._refresh_after_s = refresh_after_s
        self._store = S3Store(
            bucket,
            prefix=prefix.strip("/") or None,
            config=config,  # type: ignore[arg-type]
            client_options={
                "timeout": timedelta(seconds=timeout_s),
                "connect_timeout": timedelta(seconds=connect_timeout_s),
                "allow_http": bool(endpoint and endpoint.startswith("http://")),
            },
            # A few quick retries of transient failures, always within the call's bound.
            retry_config={
                "max_retries": 2,
                "retry_timeout": timedelta(seconds=timeout_s),
                "backoff": {
                    "init_backoff": timedelta(milliseconds=50),
                    "max_backoff": timedelta(seconds=1),
                    "base": 2,
                },
            },
        )

    @classmethod
    def from_settings(cls, settings: StoreSettings, *, refresh_after_s: float) -> S3BlobStore:
        """The store `store.s3_*` describes."""
        if not settings.s3_bucket:
            raise ValueError("store.s3_bucket is required for the s3 blob backend")
        return cls(
            settings.s3_bucket,
            prefix=settings.s3_prefix,
            endpoint=settings.s3_endpoint,
            region=settings.s3_region,
            access_key_id=_secret(settings.s3_access_key_id),
            secret_access_key=_secret(settings.s3_secret_access_key),
            timeout_s=settings.s3_timeout_s,
            connect_timeout_s=settings.s3_connect_timeout_s,
            refresh_after_s=refresh_after_s,
        )

    async def _call(self, what: str, call: Awaitable[T]) -> T:
        """`call`, bounded by the timeout; backend failures become `Unavailable`."""
        try:
            async with asyncio.timeout(self._timeout_s):
                return await call
        except NotFoundError:
            raise
        except TimeoutError:
            raise self._unavailable(what, f"no answer within {self._timeout_s:g} s") from None
        except BaseError as exc:
            raise self._unavailable(what, type(exc).__name__, _first_line(exc)) from None

    def _unavailable(self, what: str, why: str, detail: str = "") -> Unavailable:
        # Where the store is and what the backend said are the operator's (the log); the
        # caller reads what failed and why in a word.
        log.warning("the blob store at %s cannot %s (%s) %s", self._where, what, why, detail)
        return Unavailable(
            f"the blob store cannot {what} ({why}); retry shortly", retry_after_s=1.0
        )

    async def put(self, data: bytes, digest: bytes | None = None) -> bytes:
        """See `BlobStore.put`: uploads unless the same blob is stored and young."""
        digest = digest_of(data, digest)
        key = object_key(digest)
        try:
            meta = await self._call("read", obstore.head_async(self._store, key))
        except NotFoundError:
            pass
        else:
            age = datetime.now(UTC) - meta["last_modified"]
            if meta["size"] == len(data) and age.total_seconds() < self._refresh_after_s:
                return digest
        # Same name, same bytes: concurrent uploads of one blob all leave it correct.
        await self._call("write", obstore.put_async(self._store, key, data))
        return digest

    async def get(self, digest: bytes) -> bytes:
        """See `BlobStore.get`."""
        key = object_key(digest)
        try:
            result = await self._call("read", obstore.get_async(self._store, key))
            data = bytes(await self._call("read", result.bytes_async()))
        except NotFoundError:
            raise BlobNotFound(digest, "is not in the blob store") from None
        if verified(digest, data):
            return data
        # Object stores have no "delete if still these bytes": a good copy uploaded in this
        # instant would go too, which a reader sees as a miss, never as bad bytes.
        with contextlib.suppress(NotFoundError):
            await self._call("delete", obstore.delete_async(self._store, key))
        raise BlobCorrupt(digest, "was corrupt and has been removed")

    async def exists(self, digest: bytes) -> bool:
        """See `BlobStore.exists`."""
        try:
            await self._call("read", obstore.head_async(self._store, object_key(digest)))
        except NotFoundError:
            return False
        return True

    async def stale(self, grace_s: float, batch_size: int) -> AsyncIterator[list[bytes]]:
        """See `BlobStore.stale` (one listing page at a time)."""
        cutoff = datetime.now(UTC) - timedelta(seconds=grace_s)
        stream = obstore.list(self._store, chunk_size=batch_size)
        while True:
            try:
                page = await self._call("list", anext(stream))
            except StopAsyncIteration:
                return
            except NotFoundError:
                return
            batch = []
            for meta in page:
                digest = _digest_of_key(meta["path"])
                if digest is not None and meta["last_modified"] < cutoff:
                    batch.append(digest)
            if batch:
                yield batch

    async def delete_stale(self, digests: Sequence[bytes], grace_s: float) -> int:
        """See `BlobStore.delete_stale` (each blob's age is read again just before it goes)."""
        cutoff = datetime.now(UTC) - timedelta(seconds=grace_s)
        limit = asyncio.Semaphore(_DELETE_CONCURRENCY)

        async def delete(digest: bytes) -> int:
            key = object_key(digest)
            async with limit:
                try:
                    meta = await self._call("read", obstore.head_async(self._store, key))
                    if meta["last_modified"] >= cutoff:
                        return 0
                    await self._call("delete", obstore.delete_async(self._store, key))
                except NotFoundError:
                    return 0
            return 1

        return sum(await asyncio.gather(*(delete(d) for d in digests)))

    async def ping(self) -> None:
        """See `BlobStore.ping`: the bucket answers a listing."""
        try:
            await self._call("list", obstore.list_with_delimiter_async(self._store, "00/"))
        except NotFoundError:
            raise self._unavailable("list", "the bucket does not exist") from None

    async def aclose(self) -> None:
        """Nothing to release (connections close with the client)."""


def _first_line(exc: BaseException) -> str:
    # obstore's messages carry the whole error chain over several lines; the first says what.
    return str(exc).strip().splitlines()[0] if str(exc).strip() else "no detail"
