"""The usage ledger's writer (`StoreUsageSink`): records queued in memory, written in batches
in the background, everything written on a clean shutdown, kept (bounded) while the store is
unavailable; and the embedded store's bounded ledger."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from gateway.config import UsageSettings
from gateway.model import CACHE_HIT, COALESCED, CallLabels, Usage, UsageRecord
from gateway.store import MemoryStore, NewJob, Store
from gateway.store.base import UsageDay, UsageEntry, UsageTotals
from gateway.store.ledger import StoreUsageSink
from gateway.store.postgres import PostgresStore
from gateway.usage_report import savings_by_operation
from tests.fixtures.gateways import eventually
from tests.fixtures.stores import MakeStore, TcpProxy
from tests.fixtures.usage import written

#: Far beyond any test: a writer with this interval writes only full batches and on demand.
NEVER_S = 60.0


def settings(**fields: object) -> UsageSettings:
    values: dict[str, object] = {"flush_interval_s": NEVER_S}
    values.update(fields)
    return UsageSettings(**values)  # type: ignore[arg-type]


async def a_job_id(store: Store) -> str:
    return (await store.join_or_create_active_job(NewJob("u", "analyze_video", "{}"))).job.id


def record(job_id: str = "", n: int = 1, outcome: str = "ok") -> UsageRecord:
    return UsageRecord(
        CallLabels("analyze_video", "u", job_id, f"req-{n}"),
        "gemini-test",
        n,
        outcome,
        0.2,
        Usage(prompt_tokens=n, total_tokens=2 * n),
        cost_usd=n / 1000,
    )


async def ledger(store: Store, job_id: str) -> list[UsageRecord]:
    return [entry.record for entry in await store.list_usage(job_id)]


async def test_records_wait_in_memory_and_a_full_batch_is_one_insert(store: Store) -> None:
    job_id = await a_job_id(store)
    sink = StoreUsageSink(store, settings(batch_size=3))
    sink.start()
    try:
        records = [record(job_id, n) for n in range(1, 4)]
        await sink.record(records[0])
        await sink.record(records[1])
        assert sink.pending == 2
        assert await ledger(store, job_id) == []  # recording never touches the store

        await sink.record(records[2])  # a full batch goes at once
        await eventually(lambda: sink.written == 3, "the full batch written")

        assert sink.batches == 1
        assert await ledger(store, job_id) == records
    finally:
        await sink.aclose()


async def test_a_partial_batch_is_written_after_the_interval(store: Store) -> None:
    job_id = await a_job_id(store)
    sink = StoreUsageSink(store, settings(flush_interval_s=0.05))
    sink.start()
    try:
        await sink.record(record(job_id))
        await eventually(lambda: sink.written == 1, "the interval's write")
        assert await ledger(store, job_id) == [record(job_id)]
    finally:
        await sink.aclose()


async def test_a_clean_shutdown_writes_everything_in_order(store: Store) -> None:
    job_id = await a_job_id(store)
    sink = StoreUsageSink(store, settings(batch_size=4))
    sink.start()
    records = [record(job_id, n) for n in range(1, 11)]
    for each in records:
        await sink.record(each)

    await sink.aclose()

    assert sink.pending == 0 and sink.dropped == 0
    assert await ledger(store, job_id) == records


async def test_entries_keep_the_time_they_were_recorded(store: Store) -> None:
    job_id = await a_job_id(store)
    at = datetime(2031, 5, 17, 23, 59, 58, tzinfo=UTC)
    sink = StoreUsageSink(store, settings(), clock=lambda: at)
    await sink.record(record(job_id))
    await written(sink)
    (entry,) = await store.list_usage(job_id)
    assert entry.created_at == at


async def test_a_record_the_store_would_refuse_is_dropped_alone(store: Store) -> None:
    job_id = await a_job_id(store)
    sink = StoreUsageSink(store, settings())
    await sink.record(record("job-7"))  # not a job id: a bug, logged and dropped
    await sink.record(record(job_id))
    await written(sink)
    assert sink.dropped == 1
    assert await ledger(store, job_id) == [record(job_id)]


async def test_observers_see_each_record_when_it_is_recorded(store: Store) -> None:
    job_id = await a_job_id(store)
    sink = StoreUsageSink(store, settings())
    seen: list[UsageRecord] = []
    saving = record(job_id, outcome=CACHE_HIT)

    def broken(_: UsageRecord) -> None:
        raise RuntimeError("observer bug")

    sink.add_observer(seen.append)
    sink.add_observer(broken)
    await sink.record(saving)

    assert seen == [saving] and sink.pending == 1  # seen before it is written
    await written(sink)
    assert await ledger(store, job_id) == [saving]


async def test_records_wait_for_an_unavailable_store_and_the_oldest_go_beyond_the_bound(
    make_store: MakeStore, tcp_proxy: TcpProxy, caplog: pytest.LogCaptureFixture
) -> None:
    store = await make_store("postgres", database_url=tcp_proxy.url)
    job_id = await a_job_id(store)
    sink = StoreUsageSink(store, settings(batch_size=2, max_pending=3))
    records = [record(job_id, n) for n in range(1, 6)]
    await tcp_proxy.cut()

    with caplog.at_level(logging.ERROR, "gateway.store.ledger"):
        for each in records[:3]:
            await sink.record(each)
        assert not await sink.flush()  # kept, in order, for the next try
        assert sink.pending == 3 and sink.dropped == 0
        for each in records[3:]:
            await sink.record(each)

    assert sink.dropped == 2 and sink.pending == 3
    # Reported at once (and then at most every few seconds), naming the oldest dropped.
    assert "usage ledger dropped 1 record(s)" in caplog.text
    assert "attempt=1 " in caplog.text
    await tcp_proxy.restore()
    await written(sink)
    assert await ledger(store, job_id) == records[2:]


async def test_a_shutdown_with_the_store_down_says_what_it_lost(
    pg_settings: object, closed_port_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = PostgresStore(pg_settings(closed_port_url))  # type: ignore[operator]
    try:
        sink = StoreUsageSink(store, settings())
        sink.start()
        await sink.record(record())
        with caplog.at_level(logging.ERROR, "gateway.store.ledger"):
            await sink.aclose()
        assert sink.dropped == 1
        assert "lost 1 record(s) at shutdown" in caplog.text
    finally:
        await store.close()


async def test_the_embedded_ledger_folds_its_oldest_rows_into_daily_totals() -> None:
    store = MemoryStore(usage_rows_kept=3)
    old, new = [await a_job_id(store) for _ in "ab"]
    day = datetime(2031, 5, 17, 12, tzinfo=UTC)
    records = [record(job_id, n) for n, job_id in enumerate((old, old, new, new, new), 1)]
    await store.insert_usage_entries([UsageEntry(r, day) for r in records])

    assert [e.record for e in store.usage_entries()] == records[2:]
    # The older job's calls left the raw ledger, but they still count in the totals.
    assert await store.list_usage(old) == []
    assert await ledger(store, new) == records[2:]
    (total,) = await store.usage_by_day(None, day, day.replace(hour=13))
    assert total.totals.upstream_calls == 5
    assert total.totals.usage.prompt_tokens == sum(r.usage.prompt_tokens for r in records)
    assert total.totals == sum((UsageTotals.of(r) for r in records), UsageTotals())
    with pytest.raises(ValueError, match="usage_rows_kept"):
        MemoryStore(usage_rows_kept=0)


# -- folded savings ----------------------------------------------------------------------------

#: Two seconds before a UTC midnight: the mix below crosses it, and several second boundaries.
EVE = datetime(2031, 5, 17, 23, 59, 58, tzinfo=UTC)
#: The folded copy of the mix is recorded this much later than the raw one, so both share a
#: store (and a schema) and a report of one is a report of the other, its days shifted.
LATER = timedelta(days=7)
DAY_S = timedelta(days=1)
HALF_S = timedelta(seconds=0.5)
ALICE, BOB = "user-alice", "user-bob"


def hit(
    user: str = ALICE,
    op: str = "analyze_video",
    saved: float = 0.0015,
    outcome: str = CACHE_HIT,
    request_id: str = "req-hit",
    job_id: str = "",
) -> UsageRecord:
    return UsageRecord(
        CallLabels(op, user, job_id, request_id), "gemini-test", 0, outcome, 0.0, saved_usd=saved
    )


def upstream(user: str = ALICE, n: int = 1) -> UsageRecord:
    return UsageRecord(
        CallLabels("analyze_video", user, "", f"req-call-{n}"),
        "gemini-test",
        1,
        "ok",
        0.4,
        Usage(prompt_tokens=100 * n, output_tokens=n, total_tokens=101 * n),
        cost_usd=0.0123 * n,
    )


def mix(job_id: str) -> list[tuple[float, UsageRecord]]:
    """Hits, joins and upstream attempts of two users, by seconds after `EVE`."""
    return [
        (0.1, hit(request_id="r1")),
        (0.2, upstream(n=1)),
        (0.4, hit(request_id="r2", saved=0.0123)),
        (0.5, hit(outcome=COALESCED, saved=0.000375)),
        (0.6, hit(BOB)),
        (0.7, hit(op="generate_thumbnail", saved=0.04)),
        (0.9, hit(request_id="r3", saved=0.000375)),
        (0.95, hit(job_id=job_id, request_id="r-job")),  # a job's saving: a row of its own
        (1.0, hit(saved=0.0015)),  # the next second
        (1.3, hit(outcome=COALESCED, saved=0.002)),
        (1.999, hit(BOB, saved=0.0007)),
        (2.0, hit(saved=0.0015)),  # midnight: the next UTC day
        (2.2, upstream(BOB, n=2)),
        (2.5, hit(saved=0.0031)),
        (3.25, hit(outcome=COALESCED)),
    ]


def at_clock() -> tuple[list[datetime], Callable[[], datetime]]:
    now = [EVE]
    return now, lambda: now[0]


async def record_mix(store: Store, job_id: str, start: datetime) -> StoreUsageSink:
    """The mix recorded through a ledger writer from `start` (folded), and written."""
    now, clock = at_clock()
    sink = StoreUsageSink(store, settings(), clock=clock)
    for offset, each in mix(job_id):
        now[0] = start + timedelta(seconds=offset)
        await sink.record(each)
    await written(sink)
    return sink


def answer(days: list[UsageDay], shift: timedelta = timedelta()) -> object:
    """What a report says of `days` (by day, operation and model; savings by operation; the
    total), days moved by `shift` and dollars to the ledger's 12 decimals."""

    def exact(totals: UsageTotals) -> tuple[object, ...]:
        return (
            totals.upstream_calls,
            totals.usage,
            round(totals.cost_usd, 12),
            totals.cache_hits,
            totals.joins,
            round(totals.saved_usd, 12),
        )

    return (
        [(d.day + shift, d.op, d.model, exact(d.totals)) for d in days],
        [(s.op, s.cache_hits, s.joins, round(s.saved_usd, 12)) for s in savings_by_operation(days)],
        exact(sum((d.totals for d in days), UsageTotals())),
    )


def savings(days: list[UsageDay]) -> tuple[int, int]:
    """The hits and joins of `days`."""
    return sum(d.totals.cache_hits for d in days), sum(d.totals.joins for d in days)


async def test_savings_are_folded_per_second_user_operation_model_and_outcome() -> None:
    store = MemoryStore()
    job_id = await a_job_id(store)
    seen: list[UsageRecord] = []
    now, clock = at_clock()
    sink = StoreUsageSink(store, settings(), clock=clock)
    sink.add_observer(seen.append)
    for offset, each in mix(job_id):
        now[0] = EVE + timedelta(seconds=offset)
        await sink.record(each)

    # Observers see every record as it came; the queue holds one row per fold.
    assert seen == [each for _, each in mix(job_id)]
    assert sink.pending == 12
    await written(sink)
    assert (sink.written, sink.rows_written) == (15, 12)

    rows = [
        (e.created_at - EVE, e.record.labels.user_id, e.record.labels.operation, e.record.outcome,
         e.record.labels.request_id, e.events, e.record.saved_usd)
        for e in store.usage_entries()
    ]  # fmt: skip
    s = timedelta(seconds=1)
    va, gt = "analyze_video", "generate_thumbnail"
    assert rows == [
        # In the order each row was first queued; a fold has its second's start, no request id,
        # and its records' savings summed.
        (0 * s, ALICE, va, CACHE_HIT, "", 3, 0.014175),
        (timedelta(seconds=0.2), ALICE, va, "ok", "req-call-1", 1, 0.0),
        (0 * s, ALICE, va, COALESCED, "", 1, 0.000375),
        (0 * s, BOB, va, CACHE_HIT, "", 1, 0.0015),
        (0 * s, ALICE, gt, CACHE_HIT, "", 1, 0.04),
        (timedelta(seconds=0.95), ALICE, va, CACHE_HIT, "r-job", 1, 0.0015),
        (1 * s, ALICE, va, CACHE_HIT, "", 1, 0.0015),
        (1 * s, ALICE, va, COALESCED, "", 1, 0.002),
        (1 * s, BOB, va, CACHE_HIT, "", 1, 0.0007),
        (2 * s, ALICE, va, CACHE_HIT, "", 2, 0.0046),
        (timedelta(seconds=2.2), BOB, va, "ok", "req-call-2", 1, 0.0),
        (3 * s, ALICE, va, COALESCED, "", 1, 0.0015),
    ]
    # A job's savings stay one row each, with their request id: the job's usage lists them.
    (job_row,) = await store.list_usage(job_id)
    assert (job_row.record.labels.request_id, job_row.events) == ("r-job", 1)


async def test_reports_of_folded_savings_answer_as_one_row_per_record_did(store: Store) -> None:
    job_id = await a_job_id(store)
    raw_start, folded_start = EVE, EVE + LATER
    # The mix as it was written before savings were folded: a row per record, at its time.
    await store.insert_usage_entries(
        [UsageEntry(each, raw_start + timedelta(seconds=at)) for at, each in mix(job_id)]
    )
    sink = await record_mix(store, job_id, folded_start)
    assert (sink.written, sink.rows_written) == (15, 12)

    async def both(user: str | None, start: float, end: float) -> tuple[object, object]:
        """The raw and the folded copy's report of one range (seconds after the copy's start)."""
        since, until = timedelta(seconds=start), timedelta(seconds=end)
        raw = await store.usage_by_day(user, raw_start + since, raw_start + until)
        folded = await store.usage_by_day(user, folded_start + since, folded_start + until)
        return answer(raw, LATER), answer(folded)

    # Ranges of whole seconds: across the midnight, and ending or starting at each second.
    ranges = [(-3600, 3600), (-60, 1), (0, 1), (0, 2), (1, 2), (1, 3), (2, 4), (2, 60), (3, 4)]
    for user in (ALICE, BOB, None):
        for start, end in ranges:
            raw, folded = await both(user, start, end)
            assert raw == folded, (user, start, end)
    days = await store.usage_by_day(None, folded_start - timedelta(hours=1), folded_start + DAY_S)
    assert sorted({d.day for d in days}) == [folded_start.date(), (folded_start + DAY_S).date()]
    whole = sum((d.totals for d in days), UsageTotals())
    assert (whole.upstream_calls, whole.cache_hits, whole.joins) == (2, 10, 3)
    assert round(whole.saved_usd, 12) == round(sum(r.saved_usd for _, r in mix(job_id)), 12)

    # Inside a second, savings count by the second's start (upstream attempts by their time).
    raw_half = await store.usage_by_day(ALICE, raw_start + HALF_S, raw_start + 2 * HALF_S)
    folded_half = await store.usage_by_day(ALICE, folded_start + HALF_S, folded_start + 2 * HALF_S)
    assert savings(raw_half) == (3, 1)
    assert savings(folded_half) == (1, 0)  # the job's hit

    # Rolled up into daily totals, the copies still agree: the totals sum the records.
    assert await store.roll_up_usage(folded_start.date() + timedelta(days=2), 1000) == 15 + 12
    for user in (ALICE, BOB, None):
        raw, folded = await both(user, -3600, 3600)
        assert raw == folded, user
    rolled = await store.usage_by_day(None, folded_start, folded_start + DAY_S)
    whole = sum((d.totals for d in rolled), UsageTotals())
    assert (whole.upstream_calls, whole.cache_hits, whole.joins) == (2, 10, 3)


async def test_a_fold_being_written_takes_no_more_records(store: Store) -> None:
    now, clock = at_clock()
    sink = StoreUsageSink(store, settings(), clock=clock)
    await sink.record(hit(saved=0.001))
    await written(sink)
    now[0] = EVE + timedelta(seconds=0.5)  # the same second
    await sink.record(hit(saved=0.002))
    await sink.record(hit(saved=0.004))
    await written(sink)

    assert (sink.written, sink.rows_written) == (3, 2)
    (day,) = await store.usage_by_day(ALICE, EVE, EVE + timedelta(seconds=1))
    assert day.totals.cache_hits == 3 and round(day.totals.saved_usd, 12) == 0.007


async def test_steady_traffic_is_written_once_an_interval_not_insert_after_insert(
    store: Store,
) -> None:
    # Savings recorded without a pause, as cache hits under load are: each insert's round
    # trip sees a few new records. They wait for the next interval, not for the next insert.
    interval_s, records = 0.2, 0
    started = datetime.now(UTC)
    sink = StoreUsageSink(store, settings(flush_interval_s=interval_s))
    sink.start()
    loop = asyncio.get_running_loop()
    until = loop.time() + 5 * interval_s
    while loop.time() < until:
        for _ in range(5):
            await sink.record(hit(saved=0.001))
            records += 1
        await asyncio.sleep(0.0005)
    await sink.aclose()

    assert sink.written == records
    # One write an interval (the rows of one user's second or two each), and the last at close.
    assert sink.batches <= 5 + 3, f"{sink.batches} inserts for {records} records"
    # Stamped with the real time: the run may straddle a UTC midnight.
    days = await store.usage_by_day(ALICE, started - timedelta(minutes=1), datetime.now(UTC))
    assert sum(day.totals.cache_hits for day in days) == records


async def test_the_bound_counts_folded_rows_and_drops_their_records(
    make_store: MakeStore, tcp_proxy: TcpProxy, caplog: pytest.LogCaptureFixture
) -> None:
    store = await make_store("postgres", database_url=tcp_proxy.url)
    _, clock = at_clock()
    sink = StoreUsageSink(store, settings(batch_size=2, max_pending=3), clock=clock)
    await tcp_proxy.cut()

    with caplog.at_level(logging.ERROR, "gateway.store.ledger"):
        for _ in range(10):
            await sink.record(hit())  # one row
        await sink.record(upstream(n=1))
        await sink.record(hit(BOB))
        assert not await sink.flush()
        assert sink.pending == 3 and sink.dropped == 0
        await sink.record(upstream(n=2))  # past the bound: the fold of ten goes
        assert sink.pending == 3 and sink.dropped == 10
        await sink.record(hit())  # a new row, not the dropped one
        assert sink.pending == 3 and sink.dropped == 11

    assert "usage ledger dropped 10 record(s)" in caplog.text
    await tcp_proxy.restore()
    await written(sink)
    (day,) = await store.usage_by_day(None, EVE, EVE + timedelta(seconds=1))
    # Kept: BOB's hit, the second upstream attempt and the last hit.
    assert (day.totals.upstream_calls, day.totals.cache_hits) == (1, 2)
    assert sink.written == 3


async def test_a_clean_shutdown_writes_the_folds_still_taking_records(store: Store) -> None:
    _, clock = at_clock()
    sink = StoreUsageSink(store, settings(), clock=clock)
    sink.start()
    for saved in (0.001, 0.002, 0.004):
        await sink.record(hit(saved=saved))
    await sink.record(hit(outcome=COALESCED))

    await sink.aclose()

    assert (sink.written, sink.rows_written, sink.dropped) == (4, 2, 0)
    (day,) = await store.usage_by_day(ALICE, EVE, EVE + timedelta(seconds=1))
    assert (day.totals.cache_hits, day.totals.joins) == (3, 1)
    assert round(day.totals.saved_usd, 12) == 0.0085
