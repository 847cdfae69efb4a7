"""The usage ledger as a `gateway.model.UsageSink`: every upstream attempt and every savings
record, written to the store in the background.

Recording never touches the store on the request path: `record` stamps the record with the time
and queues it in memory. A background task writes the queue as multi-row inserts
(`UsageStore.insert_usage_entries`, at most `usage.batch_size` rows each) every
`usage.flush_interval_s`, and at once when a full batch is waiting.

**Folded savings.** A cache hit or a join is the cheapest answer the gateway gives, and a row
for each would have the ledger encode, send, index and keep a row per hit, on the event loop
that serves them (docs/storage.md). So the savings records outside jobs (outcome `CACHE_HIT`
or `COALESCED`, attempt 0, no job id) are folded as they are recorded: those of one user,
operation, model and outcome in one UTC second become one queued row, stamped with the start
of that second, with the number of records (`UsageEntry.events`), the sum of their `saved_usd`
(in whole 10^-12 dollars, the ledger's precision, so the sum is what their own rows would have
added up to), and an empty request id (each request's id is in its RPC log line). Reports
count the records, so they answer as if every record were a row of its own, except that a
range resolves savings to the second. A fold takes the records of its second until its row is
taken for a write; later ones start another row. Savings records of jobs stay one row each
(`list_usage` lists a job's), and so does every upstream attempt. Recording a savings record
whose row is queued already is a dictionary lookup and two additions.

So:

- a clean shutdown loses nothing: `aclose` (after the job workers and the listener have stopped,
  before the store closes) writes everything still queued;
- a crash loses at most the records not written yet: those of the last flush interval (or the
  last full batch being written), plus any held while the store was unavailable;
- while the store is unavailable the rows are kept and retried every interval, up to
  `usage.max_pending` of them (a folded row counts once); beyond that the oldest rows are
  dropped, their records counted in `dropped` and logged at ERROR (at most once per
  `DROP_LOG_INTERVAL_S`, with how many).

A record the store would refuse (labelled with a job id that is not one: a bug) is logged and
dropped at once, so it never blocks the records queued with it.

Observers (`add_observer`) see every record as it is recorded, one by one, before it is written
(folding is only how the ledger stores them): the seam for live counters (e.g. the money saved,
from the savings records' `saved_usd`). An observer must be quick and must not raise; one that
raises is logged, and the record is kept anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from gateway.config import UsageSettings
from gateway.errors import Unavailable
from gateway.model import SAVINGS_OUTCOMES, UsageRecord
from gateway.store.base import UsageEntry, UsageStore, usage_job_id

log = logging.getLogger(__name__)

#: Sees each record as it is recorded (see the module docstring).
UsageObserver = Callable[[UsageRecord], None]
#: Records dropped while the store is unavailable are reported at most this often.
DROP_LOG_INTERVAL_S = 10.0
#: An unavailable store is reported at most this often while its records wait.
RETRY_LOG_INTERVAL_S = 10.0
#: Folded `saved_usd` is summed in these units: the ledger's precision (numeric(20, 12)).
UNITS_PER_USD = 10**12
_SECOND = timedelta(seconds=1)
#: What savings records fold by within their second: user, operation, model, outcome.
FoldKey = tuple[str, str, str, str]


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


def folds(record: UsageRecord) -> bool:
    """Whether `record` is a savings record outside any job: the ledger folds those."""
    return record.attempt == 0 and not record.labels.job_id and record.outcome in SAVINGS_OUTCOMES


def usd_units(amount: float) -> int:
    """`amount` dollars in whole `UNITS_PER_USD`, as the ledger's column rounds it (exactly
    for amounts of at most 12 decimals below $4,000; beyond that, within one unit)."""
    return round(amount * UNITS_PER_USD)


class _Fold:
    """The savings records of one `FoldKey` in one UTC second, queued as one row until a write
    takes it: the first record, how many, and their `saved_usd` summed in `UNITS_PER_USD`."""

    __slots__ = ("events", "first", "key", "saved_units", "second")

    def __init__(self, key: FoldKey, first: UsageRecord, second: datetime, saved: int) -> None:
        self.key = key
        self.first = first
        self.second = second
        self.events = 1
        self.saved_units = saved

    def entry(self) -> UsageEntry:
        """The row to write."""
        first = self.first
        record = dataclasses.replace(
            first,
            labels=dataclasses.replace(first.labels, request_id=""),
            saved_usd=self.saved_units / UNITS_PER_USD,
        )
        return UsageEntry(record, self.second, self.events)


#: A queued row: one record, or a fold of savings records still taking more.
_Queued = UsageEntry | _Fold


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
        self._pending: deque[_Queued] = deque()
        #: The folds still taking records, of the second from `_second` to `_second_end`.
        self._open: dict[FoldKey, _Fold] = {}
        self._second = datetime.min.replace(tzinfo=UTC)
        self._second_end = self._second
        self._observers: list[UsageObserver] = []
        #: Set when a full batch waits: the writer goes at once.
        self._full = asyncio.Event()
        #: One write at a time, so rows reach the store in the order they were queued (a fold
        #: where its first record was).
        self._writing = asyncio.Lock()
        self._writer: asyncio.Task[None] | None = None
        self._closed = False
        self._dropped_unreported = 0
        self._last_drop_log = -DROP_LOG_INTERVAL_S
        self._last_retry_log = -RETRY_LOG_INTERVAL_S
        #: Records dropped: refused labels, or those of the oldest rows beyond `max_pending`
        #: (for metrics).
        self.dropped = 0
        #: Records written, the rows that held them (fewer when savings were folded), and the
        #: inserts that wrote those (for metrics and tests).
        self.written = 0
        self.rows_written = 0
        self.batches = 0

    @property
    def pending(self) -> int:
        """Rows queued and not written yet (a fold of savings records counts once)."""
        return len(self._pending)

    def add_observer(self, observer: UsageObserver) -> None:
        """Calls `observer` with every record from now on, as it is recorded."""
        self._observers.append(observer)

    async def record(self, record: UsageRecord) -> None:
        """Queues one record (see `UsageSink.record`), folded with the savings records like it
        of its second (module docstring); never waits for the store."""
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
        now = self._now()
        if folds(record):
            if not self._second <= now < self._second_end:
                # A new second: the folds of the last one take no more records.
                self._open.clear()
                self._second = now.replace(microsecond=0)
                self._second_end = self._second + _SECOND
            labels = record.labels
            key = (labels.user_id, labels.operation, record.model, record.outcome)
            fold = self._open.get(key)
            if fold is not None:
                fold.events += 1
                fold.saved_units += usd_units(record.saved_usd)
                return
            fold = _Fold(key, record, self._second, usd_units(record.saved_usd))
            self._open[key] = fold
            self._pending.append(fold)
        else:
            self._pending.append(UsageEntry(record, now))
        self._bound()
        if len(self._pending) >= self._settings.batch_size:
            self._full.set()

    def start(self) -> None:
        """Starts the background writer."""
        if self._writer is None and not self._closed:
            self._writer = asyncio.create_task(self._write_forever(), name="viewbait-usage-ledger")

    async def flush(self) -> bool:
        """Writes every row queued now, batch by batch; False when the store is unavailable
        (what is left stays queued for the next try). Rows queued while it writes wait for
        the next flush: under steady traffic a writer that wrote until the queue was empty
        would insert the few records of each insert's round trip, one insert after another,
        never waiting its interval."""
        async with self._writing:
            left = len(self._pending)
            while left > 0 and self._pending:
                size = min(self._settings.batch_size, left, len(self._pending))
                if not await self._write_batch(size):
                    return False
                left -= size
            return True

    async def aclose(self) -> None:
        """Stops the writer and writes what is left; what the store cannot take now is lost,
        and logged at ERROR with how many records."""
        self._closed = True
        writer, self._writer = self._writer, None
        if writer is not None:
            # Not cancelled: a write under way finishes (a cancelled insert may or may not
            # have been committed), then the writer stops.
            self._full.set()
            await writer
        while self._pending and await self.flush():
            pass
        if self._pending:
            lost = sum(queued.events for queued in self._pending)
            self.dropped += lost
            self._pending.clear()
            self._open.clear()
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

    def _take(self) -> UsageEntry:
        """The oldest queued row, out of the queue; a fold takes no more records from now on."""
        queued = self._pending.popleft()
        if isinstance(queued, UsageEntry):
            return queued
        if self._open.get(queued.key) is queued:
            del self._open[queued.key]
        return queued.entry()

    async def _write_batch(self, size: int) -> bool:
        """Writes the oldest `size` rows as one insert; on failure puts them back in front
        (oldest dropped beyond the bound). Returns whether they were written."""
        batch = [self._take() for _ in range(size)]
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
                    "usage records wait for the store (%d rows queued, retried every %g s): %s",
                    len(self._pending),
                    self._settings.flush_interval_s,
                    exc.message,
                )
            return False
        except ValueError as exc:
            # Labels were checked when recorded: a store that still refuses is a bug. Losing
            # this batch beats blocking every later record behind it.
            lost = sum(entry.events for entry in batch)
            self.dropped += lost
            log.error("the usage ledger dropped %d record(s) the store refused: %s", lost, exc)
            return True
        self.written += sum(entry.events for entry in batch)
        self.rows_written += size
        self.batches += 1
        return True

    def _bound(self) -> None:
        """Drops the oldest rows beyond `max_pending`, their records counted and reported."""
        excess = len(self._pending) - self._settings.max_pending
        if excess <= 0:
            return
        oldest = _record(self._pending[0])
        lost = 0
        for _ in range(excess):
            lost += self._take().events
        self.dropped += lost
        self._dropped_unreported += lost
        now = time.monotonic()
        if now - self._last_drop_log >= DROP_LOG_INTERVAL_S:
            self._last_drop_log = now
            log.error(
                "the usage ledger dropped %d record(s) (more than %d rows waited for the "
                "store); the oldest: %s",
                self._dropped_unreported,
                self._settings.max_pending,
                _describe(oldest),
            )
            self._dropped_unreported = 0


def _record(queued: _Queued) -> UsageRecord:
    return queued.record if isinstance(queued, UsageEntry) else queued.first
