"""Typed operation results in and out of storage: rows hold JSON and references, blobs the bytes.

An operation spec separates a result into JSON and blobs (`result_to_json`, `result_blobs`,
`result_from_json`). A result is encoded once, when its run ends (`EncodedResult.of`); that one
encoded form sizes it for the hot copy and is what `save_result` stores: the blobs first, then
the `ResultRef` a row keeps (the JSON inline when small, else as a blob of its own), so a row
never points at a blob that is not there. `fetch_result` reads the encoded form back, verifying
every blob, and `EncodedResult.decode` rebuilds the result.

`ResultCache` is the cache-aside helper over a `ResultStore` and a `BlobStore`: a hit is a
result that loads completely; anything else (absent, expired, another operation's entry, a lost
or corrupt blob, JSON the current result type cannot decode) is a miss, so a damaged entry costs
one recomputation and never a wrong answer.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from gateway.operations.base import OperationSpec
from gateway.operations.codec import DecodeError
from gateway.store.base import CachedResult, Claim, ResultRef, ResultStore
from gateway.store.blobs import BlobError, BlobStore

log = logging.getLogger(__name__)

ResultT = TypeVar("ResultT")


@dataclass(frozen=True, slots=True)
class EncodedResult:
    """A result in the form it is sized and stored in: its JSON (images as references) and the
    bytes those references name, by SHA-256 digest."""

    json: str
    blobs: dict[bytes, bytes]

    @classmethod
    def of(cls, spec: OperationSpec[Any, ResultT], result: ResultT) -> EncodedResult:
        """`result` encoded by its spec."""
        return cls(spec.result_to_json(result), spec.result_blobs(result))

    @property
    def size(self) -> int:
        """What the result holds: its JSON and its images (what the hot copy is bounded by)."""
        return len(self.json) + sum(len(data) for data in self.blobs.values())

    def decode(self, spec: OperationSpec[Any, ResultT]) -> ResultT:
        """The result again. Raises `DecodeError` for JSON that does not fit the spec's result
        type or a blob that does not match its reference."""
        return spec.result_from_json(self.json, self.blobs)


async def save_result(encoded: EncodedResult, blobs: BlobStore, inline_max_bytes: int) -> ResultRef:
    """Stores a result's blobs (and its JSON, when larger than `inline_max_bytes`); returns the
    reference a row keeps."""
    # The images were hashed when they were made or verified: their digests name them.
    await asyncio.gather(*(blobs.put(data, digest) for digest, data in encoded.blobs.items()))
    referenced = tuple(sorted(encoded.blobs))
    data = encoded.json.encode()
    if len(data) <= inline_max_bytes:
        return ResultRef(json=encoded.json, blobs=referenced)
    return ResultRef(json_blob=await blobs.put(data), blobs=referenced)


async def fetch_result(ref: ResultRef, blobs: BlobStore) -> EncodedResult:
    """The encoded result a reference names.

    Raises `BlobError` for a missing or corrupt blob and `DecodeError` for stored JSON that is
    not UTF-8.
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
    return EncodedResult(text, {digest: contents[digest] for digest in ref.blobs})


async def load_result(
    spec: OperationSpec[Any, ResultT], ref: ResultRef, blobs: BlobStore
) -> ResultT:
    """The result a reference names.

    Raises `BlobError` for a missing or corrupt blob and `DecodeError` for JSON that does not fit
    the spec's result type.
    """
    return (await fetch_result(ref, blobs)).decode(spec)


@dataclass(frozen=True, slots=True)
class CacheHit(Generic[ResultT]):
    """A result served from the cache, with its entry (model, age) for response metadata and
    the encoded form it was read from."""

    result: ResultT
    entry: CachedResult
    encoded: EncodedResult


class ResultCache:
    """Cache-aside for operation results over a store and a blob store."""

    def __init__(self, store: ResultStore, blobs: BlobStore, *, inline_max_bytes: int) -> None:
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
            encoded = await fetch_result(entry.ref, self.blobs)
            result = encoded.decode(spec)
        except (BlobError, DecodeError) as exc:
            log.warning(
                "cache entry %s of %s is unusable, recomputing: %s", key.hex(), spec.name, exc
            )
            return None
        return CacheHit(result, entry, encoded)

    async def put(
        self,
        spec: OperationSpec[Any, Any],
        key: bytes,
        encoded: EncodedResult,
        *,
        scope: str,
        model: str,
        ttl_s: float,
        cost_usd: float = 0.0,
        claim: Claim | None = None,
    ) -> ResultRef:
        """Stores an encoded successful result under `key` for `ttl_s` seconds, with what the
        upstream work that produced it cost; returns its reference (which a completed job keeps
        too). Raises `Unavailable` when storage cannot take it; with `claim` (the run of an
        execution), `LeaseLost` when that claim is no longer current (the row is not written;
        its blobs, referenced by nothing, are collected)."""
        ref = await save_result(encoded, self.blobs, self.inline_max_bytes)
        await self.store.put_result(
            key,
            op=spec.name,
            scope=scope,
            model=model,
            ref=ref,
            ttl_s=ttl_s,
            cost_usd=cost_usd,
            claim=claim,
        )
        return ref
