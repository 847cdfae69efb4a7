"""The usage ledger's writer (`StoreUsageSink`): records queued in memory, written in batches
in the background, everything written on a clean shutdown, kept (bounded) while the store is
unavailable; and the embedded store's bounded ledger."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest

from gateway.config import UsageSettings
from gateway.model import CACHE_HIT, CallLabels, Usage, UsageRecord
from gateway.store import MemoryStore, NewJob, Store
from gateway.store.base import UsageEntry, UsageTotals
from gateway.store.ledger import StoreUsageSink
from gateway.store.postgres import PostgresStore
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
