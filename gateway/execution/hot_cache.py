"""The hot copy: an in-process LRU of result-cache entries in front of the store's."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class _HotEntry:
    result: Any
    model: str
    #: `time.monotonic()` instant it expires, the store row's expiry.
    expires: float
    size: int
    #: What the upstream work that produced it cost (what a hit saves).
    cost_usd: float = 0.0
    views: dict[Any, Any] = field(default_factory=dict)


class HotResults:
    """An in-process LRU copy of cache entries, bounded by entries and bytes.

    Same keys as the store, and each entry expires when its row does, so it never serves what
    the store would not.
    """

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.size = 0
        self._entries: OrderedDict[bytes, _HotEntry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> _HotEntry | None:
        """The live entry under `key`, if any."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires <= time.monotonic():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry

    def put(
        self,
        key: bytes,
        result: Any,
        model: str,
        *,
        expires: float,
        size: int,
        cost_usd: float = 0.0,
    ) -> None:
        """Keeps `result` (which cost `cost_usd` to produce) until `expires` (monotonic),
        evicting the least recently used."""
        if self.max_entries == 0 or size > self.max_bytes or expires <= time.monotonic():
            return
        self._drop(key)
        self._entries[key] = _HotEntry(result, model, expires, size, cost_usd)
        self.size += size
        while len(self._entries) > self.max_entries or self.size > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def discard(self, key: bytes) -> None:
        """Forgets the entry under `key`, if any (a result that must not be served from here:
        its run lost its claim before the result was stored)."""
        self._drop(key)

    def _drop(self, key: bytes) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.size -= entry.size
