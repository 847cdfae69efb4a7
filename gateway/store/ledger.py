"""The usage ledger as a `gateway.model.UsageSink`: every upstream attempt and every savings
record, written to the store in the background.

Recording never touches the store on the request path: `record` stamps the record with the time
and queues it in memory. A background task writes the queue as multi-row inserts
(`UsageStore.insert_usage_entries`, at most `usage.batch_size` rows each) every
`usage.flush_interval_s`, and at once when a full batch is waiting. So:

- a clean shutdown loses nothing: `aclose` (after the job workers and the listener have stopped,
  before the store closes) writes everything still queued;
- a crash loses at most the records not written yet: those of the last flush interval (or the
  last full batch being written), plus any held while the store was unavailable;
- while the store is unavailable the records are kept and retried every interval, up to
  `usage.max_pending` of them; beyond that the oldest are dropped, counted in `dropped` and
  logged at ERROR (at most once per `DROP_LOG_INTERVAL_S`, with how many).

A record the store would refuse (labelled with a job id that is not one: a bug) is logged and
dropped at once, so it never blocks the records queued with it.

Observers (`add_observer`) see every record as it is recorded, before it is written: the seam
for live counters (e.g. the money saved, from the savings records' `saved_usd`). An observer
must be quick and must not raise; one that raises is logged, and the record is kept anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime

from gateway.config import UsageSettings
from gateway.errors import Unavailable
from gateway.model import UsageRecord
from gateway.store.base import UsageEntry, UsageStore, usage_job_id

log = logging.getLogger(__name__)

#: Sees each record as it is recorded (see the module docstring).
UsageObserver = Callable[[UsageRecord], None]
#: Records dropped while the store is unavailable are reported at most this often.
DROP_LOG_INTERVAL_S = 10.0
#: An unavailable store is reported at most this often while its records wait.
RETRY_LOG_INTERVAL_S = 10.0


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _describe(record: UsageRecord) -> str:
    """A record for a log line, without secrets: labels, model, tokens, cost."""
    return (
        f"operation={record.labels.operation} user={record.labels.user_id} "
        f"job={record.labels.job_id} model={record.model} attempt={record.attempt} "
        f"outcome={record.outcome} tokens={record.usage.total_tokens} "
        f"cost_usd={record.cost_usd:.6f} saved_usd={record.saved_usd:.6f}"
    )


class StoreUsageSink:
    """Queues usage records and writes them to a `UsageStore` in batches (module docstring).

    `start` starts the background writer (without it, records wait for `flush`); `aclose`
    stops it and writes what is left.
    """

    def __init__(
        self,
        store: UsageStore,
        settings: UsageSettings,
        *,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self._store = store
        self._settings = settings
        self._now = clock
        self._pending: deque[UsageEntry] = deque()
        self._observers: list[UsageObserver] = []
        #: Set when a full batch waits: the writer goes at once.
        self._full = asyncio.Event()
        #: One write at a time, so records reach the store in the order they were recorded.
        self._writing = asyncio.Lock()
        self._writer: asyncio.Task[None] | None = None
        self._closed = False
        self._dropped_unreported = 0
        self._last_drop_log = -DROP_LOG_INTERVAL_S
        self._last_retry_log = -RETRY_LOG_INTERVAL_S
        #: Records dropped: refused labels, or the oldest beyond `max_pending` (for metrics).
        self.dropped = 0
        #: Records written, and the inserts that wrote them (for metrics and tests).
        self.written = 0
        self.batches = 0

    @property
    def pending(self) -> int:
        """Records recorded and not written yet."""
        return len(self._pending)

    def add_observer(self, observer: UsageObserver) -> None:
        """Calls `observer` with every record from now on, as it is recorded."""
        self._observers.append(observer)

    async def record(self, record: UsageRecord) -> None:
        """Queues one record (see `UsageSink.record`); never waits for the store."""
        try:
            usage_job_id(record)
        except ValueError as exc:
            self.dropped += 1
            log.error("usage record dropped (%s): %s", exc, _describe(record))
            return
        for observer in self._observers:
            try:
                observer(record)
            except Exception:
                log.exception("a usage observer failed on %s", _describe(record))
        self._pending.append(UsageEntry(record, self._now()))
        self._bound()
        if len(self._pending) >= self._settings.batch_size:
            self._full.set()

    def start(self) -> None:
        """Starts the background writer."""
        if self._writer is None and not self._closed:
            self._writer = asyncio.create_task(self._write_forever(), name="viewbait-usage-ledger")

    async def flush(self) -> bool:
        """Writes every record queued now, batch by batch; False when the store is unavailable
        (what is left stays queued for the next try)."""
        async with self._writing:
            while self._pending:
                if not await self._write_batch():
                    return False
            return True

    async def aclose(self) -> None:
        """Stops the writer and writes what is left; what the store cannot take now is lost,
        and logged at ERROR with how many."""
        self._closed = True
        writer, self._writer = self._writer, None
        if writer is not None:
            # Not cancelled: a write under way finishes (a cancelled insert may or may not
            # have been committed), then the writer stops.
            self._full.set()
            await writer
        if not await self.flush():
            lost = len(self._pending)
            self.dropped += lost
            self._pending.clear()
            log.error(
                "the usage ledger lost %d record(s) at shutdown: the store is unavailable", lost
            )

    async def _write_forever(self) -> None:
        while not self._closed:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._settings.flush_interval_s):
                    await self._full.wait()
            self._full.clear()
            await self.flush()

    async def _write_batch(self) -> bool:
        """Writes the oldest batch; on failure puts it back in front (oldest dropped beyond the
        bound). Returns whether it was written."""
        size = min(self._settings.batch_size, len(self._pending))
        batch = [self._pending.popleft() for _ in range(size)]
        try:
            await self._store.insert_usage_entries(batch)
        except asyncio.CancelledError:
            self._pending.extendleft(reversed(batch))
            raise
        except Unavailable as exc:
            self._pending.extendleft(reversed(batch))
            self._bound()
            now = time.monotonic()
            if now - self._last_retry_log >= RETRY_LOG_INTERVAL_S:
                self._last_retry_log = now
                log.warning(
                    "usage records wait for the store (%d queued, retried every %g s): %s",
                    len(self._pending),
                    self._settings.flush_interval_s,
                    exc.message,
                )
            return False
        except ValueError as exc:
            # Labels were checked when recorded: a store that still refuses is a bug. Losing
            # this batch beats blocking every later record behind it.
            self.dropped += len(batch)
            log.error("the usage ledger dropped %d record(s) the store refused: %s", size, exc)
            return True
        self.written += size
        self.batches += 1
        return True

    def _bound(self) -> None:
        """Drops the oldest records beyond `max_pending`, counted and reported."""
        excess = len(self._pending) - self._settings.max_pending
        if excess <= 0:
            return
        oldest = self._pending[0].record
        for _ in range(excess):
            self._pending.popleft()
        self.dropped += excess
        self._dropped_unreported += excess
        now = time.monotonic()
        if now - self._last_drop_log >= DROP_LOG_INTERVAL_S:
            self._last_drop_log = now
            log.error(
                "the usage ledger dropped %d record(s) (more than %d waited for the store); "
                "the oldest: %s",
                self._dropped_unreported,
                self._settings.max_pending,
                _describe(oldest),
            )
            self._dropped_unreported = 0
