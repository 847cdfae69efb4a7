"""Cache key derivation: SHA-256 over an unambiguous encoding of named fields.

Each field is written as its name, a one-byte type tag and its value, names and values each
prefixed with their length, so no two different field lists share an encoding (``("ab", "c")``
and ``("a", "bc")`` differ, and so do the string ``"1"`` and the integer ``1``). The same fields
give the same key in every process and on every replica; nothing here depends on hash seeds,
dict order or the platform.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from gateway import native

#: A key field's value: text, raw bytes (usually a digest) or an integer.
KeyValue = str | bytes | int
#: Ordered (name, value) pairs that identify one result.
KeyFields = Sequence[tuple[str, KeyValue]]

# Bumping this changes every key at once (a new encoding must never collide with the old one).
_DOMAIN = b"viewbait.cache-key.v1\x00"


def _encode_value(value: KeyValue) -> tuple[bytes, bytes]:
    # bool is an int subclass; a True that slipped in is a bug, not the key field 1.
    if isinstance(value, bool):
        raise TypeError("booleans are not key values; encode them explicitly")
    if isinstance(value, bytes):
        return b"b", value
    if isinstance(value, str):
        return b"s", value.encode("utf-8")
    if isinstance(value, int):
        return b"i", str(value).encode("ascii")
    raise TypeError(f"unsupported key value type {type(value).__name__}")


def _encode_each(fields: KeyFields) -> bytes:
    parts = []
    for name, value in fields:
        raw_name = name.encode("utf-8")
        tag, raw = _encode_value(value)
        parts.append(
            b"".join(
                (len(raw_name).to_bytes(4, "big"), raw_name, tag, len(raw).to_bytes(8, "big"), raw)
            )
        )
    return b"".join(parts)


def encode_fields(fields: KeyFields) -> bytes:
    """The unambiguous byte encoding of `fields` that `derive_key` hashes."""
    return _DOMAIN + _encode_each(fields)


@functools.lru_cache(maxsize=4096)
def _encoded_prefix(fields: tuple[tuple[str, KeyValue], ...]) -> bytes:
    return encode_fields(fields)


def derive_key(fields: KeyFields, *, common: tuple[tuple[str, KeyValue], ...] = ()) -> bytes:
    """The 32-byte cache key of `common` followed by `fields` (native SHA-256 of
    `encode_fields`). `common` are leading fields many keys share (operation, versions, model,
    scope, user): their encoding is computed once and remembered, as every cache hit derives
    its key."""
    return native.sha256(_encoded_prefix(common) + _encode_each(fields))


def multiset_digest(digests: Sequence[bytes]) -> bytes:
    """One digest for a collection of digests that ignores their order (duplicates count).

    Sorting first makes `refs_hash` the same whichever order a caller lists reference images in.
    """
    # Fixed-length items keep the concatenation unambiguous without length prefixes.
    if any(len(digest) != 32 for digest in digests):
        raise ValueError("multiset_digest takes SHA-256 digests (32 bytes each)")
    return native.sha256(b"".join(sorted(digests)))
