"""Typed operation results in and out of storage: rows hold JSON and references, blobs the bytes.

An operation spec already separates a result into JSON and blobs (`result_to_json`,
`result_blobs`, `result_from_json`). `save_result` writes the blobs first, then returns the
`ResultRef` a row stores (the JSON inline when small, else as a blob of its own), so a row never
points at a blob that is not there. `load_result` reverses it, verifying every blob.

`ResultCache` is the cache-aside helper over a `Store` and a `BlobStore`: a hit is a result that
loads completely; anything else (absent, expired, another operation's entry, a lost or corrupt
blob, JSON the current result type cannot decode) is a miss, so a damaged entry costs one
recomputation and never a wrong answer.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from gateway.operations.base import OperationSpec
from gateway.operations.codec import DecodeError
from gateway.store.base import CachedResult, ResultRef, Store
from gateway.store.blobs import BlobError, BlobStore

log = logging.getLogger(__name__)

ResultT = TypeVar("ResultT")


async def save_result(
    spec: OperationSpec[Any, ResultT], result: ResultT, blobs: BlobStore, inline_max_bytes: int
) -> ResultRef:
    """Stores a result's blobs (and its JSON, when larger than `inline_max_bytes`); returns the
    reference a row keeps."""
    text = spec.result_to_json(result)
    parts = spec.result_blobs(result)
    # The images were hashed when they were made or verified: their digests name them.
    await asyncio.gather(*(blobs.put(data, digest) for digest, data in parts.items()))
    referenced = tuple(sorted(parts))
    encoded = text.encode()
    if len(encoded) <= inline_max_bytes:
        return ResultRef(json=text, blobs=referenced)
    return ResultRef(json_blob=await blobs.put(encoded), blobs=referenced)


async def load_result(
    spec: OperationSpec[Any, ResultT], ref: ResultRef, blobs: BlobStore
) -> ResultT:
    """The result a reference names.

    Raises `BlobError` for a missing or corrupt blob and `DecodeError` for JSON that does not fit
    the spec's result type.
    """
    digests = list(ref.blobs)
    if ref.json_blob is not None:
        digests.append(ref.json_blob)
    contents = dict(
        zip(digests, await asyncio.gather(*(blobs.get(d) for d in digests)), strict=True)
    )
    if ref.json is not None:
        text = ref.json
    else:
        assert ref.json_blob is not None  # ResultRef holds one of the two
        try:
            text = contents[ref.json_blob].decode()
        except UnicodeDecodeError:
            raise DecodeError("$", "stored result JSON is not UTF-8") from None
    return spec.result_from_json(text, contents)


@dataclass(frozen=True, slots=True)
class CacheHit(Generic[ResultT]):
    """A result served from the cache, with its entry (model, age) for response metadata."""

    result: ResultT
    entry: CachedResult


class ResultCache:
    """Cache-aside for operation results over a store and a blob store."""

    def __init__(self, store: Store, blobs: BlobStore, *, inline_max_bytes: int) -> None:
        self.store = store
        self.blobs = blobs
        self.inline_max_bytes = inline_max_bytes

    async def get(self, spec: OperationSpec[Any, ResultT], key: bytes) -> CacheHit[ResultT] | None:
        """The cached result under `key`, or None on any kind of miss (see the module docstring).

        Raises `Unavailable` when the store or blob store cannot answer.
        """
        entry = await self.store.get_result(key)
        if entry is None:
            return None
        if entry.op != spec.name:
            log.warning("cache entry %s belongs to %s, not %s", key.hex(), entry.op, spec.name)
            return None
        try:
            result = await load_result(spec, entry.ref, self.blobs)
        except (BlobError, DecodeError) as exc:
            log.warning(
                "cache entry %s of %s is unusable, recomputing: %s", key.hex(), spec.name, exc
            )
            return None
        return CacheHit(result, entry)

    async def put(
        self,
        spec: OperationSpec[Any, ResultT],
        key: bytes,
        result: ResultT,
        *,
        scope: str,
        model: str,
        ttl_s: float,
    ) -> ResultRef:
        """Stores a successful result under `key` for `ttl_s` seconds; returns its reference
        (which a completed job keeps too). Raises `Unavailable` when storage cannot take it."""
        ref = await save_result(spec, result, self.blobs, self.inline_max_bytes)
        await self.store.put_result(
            key, op=spec.name, scope=scope, model=model, ref=ref, ttl_s=ttl_s
        )
        return ref
