"""Group commit in the application: concurrent writes of one kind gathered into one statement.

Every job change a watcher should see sends a NOTIFY, and PostgreSQL serializes the commits of
notifying transactions (one queue lock, held through the commit's WAL flush). One transaction
per finished job would cap a whole fleet at one flush per job, a few hundred a second on an
ordinary disk. A `Batcher` turns the writes that arrive while one is in flight into the next
single statement and transaction: an idle store writes each at once (no added latency), a busy
one amortizes a flush over everything that queued meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class Batcher(Generic[Item, Result]):
    """Runs `write` over batches of the items submitted concurrently.

    `write` gets at most `max_batch` items and answers one result or exception per item, in
    order; if it raises, every caller of that batch gets the exception. Items with the same
    `key` never share a batch (the second waits for the next), so a write can match its answers
    to rows by key. A write that has started goes on when its caller stops waiting: the store
    owns it, as it owns any statement already sent.
    """

    def __init__(
        self,
        write: Callable[[Sequence[Item]], Awaitable[Sequence[Result | BaseException]]],
        *,
        max_batch: int,
        key: Callable[[Item], Hashable],
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._write = write
        self._max_batch = max_batch
        self._key = key
        self._pending: list[tuple[Item, asyncio.Future[Result]]] = []
        self._flusher: asyncio.Task[None] | None = None
        #: Batches written (for metrics and tests).
        self.batches = 0

    async def submit(self, item: Item) -> Result:
        """Writes `item` with whatever else is waiting; its answer."""
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush(), name="viewbait-store-batch")
        return await future

    async def aclose(self) -> None:
        """Stops writing: callers still waiting get `CancelledError`."""
        flusher, self._flusher = self._flusher, None
        if flusher is not None:
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
        pending, self._pending = self._pending, []
        for _, future in pending:
            future.cancel()

    def _take(self) -> list[tuple[Item, asyncio.Future[Result]]]:
        batch: list[tuple[Item, asyncio.Future[Result]]] = []
        keys: set[Hashable] = set()
        rest: list[tuple[Item, asyncio.Future[Result]]] = []
        for entry in self._pending:
            key = self._key(entry[0])
            if len(batch) < self._max_batch and key not in keys:
                keys.add(key)
                batch.append(entry)
            else:
                rest.append(entry)
        self._pending = rest
        return batch

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch = self._take()
                try:
                    answers = await self._write([item for item, _ in batch])
                except asyncio.CancelledError:
                    for _, future in batch:
                        future.cancel()
                    raise
                except Exception as exc:
                    answers = [exc] * len(batch)  # every caller of the batch gets it
                self.batches += 1
                if len(answers) != len(batch):
                    bug = AssertionError(f"a batch write answered {len(answers)} of {len(batch)}")
                    answers = [bug] * len(batch)
                for (_, future), answer in zip(batch, answers, strict=True):
                    if future.done():
                        continue  # its caller stopped waiting
                    if isinstance(answer, BaseException):
                        future.set_exception(answer)
                    else:
                        future.set_result(answer)
        finally:
            if self._flusher is asyncio.current_task():
                self._flusher = None
