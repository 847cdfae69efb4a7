"""The usage ledger's cost per cache hit: savings records folded per second vs a row per record.

    python bench/ledger.py [--records 100000] [--rate 2000] [--users 16] [--rounds 3]
        [--database-url URL]

What runs: one process, a fresh schema on the shared PostgreSQL, and `--records` savings
records (cache hits of `--users` users, one operation and model) stamped by a simulated clock
at `--rate` records a second, written once every simulated second (the writer's default
interval), on both sides:

- anchor, a row per record: each record queued as its own `UsageEntry` and written as the
  ledger wrote savings before folding, `insert_usage_entries` in batches of `usage.batch_size`;
- folded: the same records through `StoreUsageSink.record` (a fold per user, operation, model
  and outcome per second) and its `flush`.

Both build the same `UsageRecord`s the executor builds, and the same store writes them; the
rounds alternate so machine load hits both alike. Printed per side, best round: this process's
CPU time per record (user + system: recording, encoding, the driver), wall time per record
(includes waiting for PostgreSQL, whose own CPU is not in the first figure), and the rows that
reached `ai_usage`; then the ratios. The load average is printed before and after: figures from
a busy machine are noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
from pydantic import SecretStr

from gateway.config import StoreSettings, UsageSettings
from gateway.model import CACHE_HIT, CallLabels, UsageRecord
from gateway.store.base import UsageEntry
from gateway.store.ledger import StoreUsageSink
from gateway.store.migrate import migrate, quote_ident
from gateway.store.postgres import PostgresStore

DEFAULT_DATABASE_URL = os.environ.get(
    "GATEWAY_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
START = datetime(2031, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Run:
    cpu_s: float
    wall_s: float
    rows: int


def load_average() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def hit(user: str, n: int) -> UsageRecord:
    """The savings record the executor builds for a cache hit."""
    return UsageRecord(
        labels=CallLabels("analyze_video", user, "", f"req-{n}"),
        model="gemini-bench",
        attempt=0,
        outcome=CACHE_HIT,
        duration_s=0.0,
        saved_usd=0.001234,
    )


#: Records one hit at a simulated time; `flush` writes what is queued.
Recorder = tuple[Callable[[UsageRecord, datetime], Awaitable[None]], Callable[[], Awaitable[None]]]


def row_per_record(store: PostgresStore, settings: UsageSettings) -> Recorder:
    queued: list[UsageEntry] = []

    async def record(each: UsageRecord, at: datetime) -> None:
        queued.append(UsageEntry(each, at))

    async def flush() -> None:
        for start in range(0, len(queued), settings.batch_size):
            await store.insert_usage_entries(queued[start : start + settings.batch_size])
        queued.clear()

    return record, flush


def folded(store: PostgresStore, settings: UsageSettings) -> Recorder:
    now = [START]
    sink = StoreUsageSink(store, settings, clock=lambda: now[0])

    async def record(each: UsageRecord, at: datetime) -> None:
        now[0] = at
        await sink.record(each)

    async def flush() -> None:
        assert await sink.flush()

    return record, flush


async def run(
    make: Callable[[PostgresStore, UsageSettings], Recorder],
    database_url: str,
    args: argparse.Namespace,
) -> Run:
    schema = f"bench_ledger_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(database_url)
    store = PostgresStore(StoreSettings(database_url=SecretStr(database_url), schema=schema))
    try:
        await migrate(conn, schema)
        await store.start()
        settings = UsageSettings(flush_interval_s=60.0)
        record, flush = make(store, settings)
        users = [f"user-{i}" for i in range(args.users)]
        records = [hit(users[n % len(users)], n) for n in range(args.records)]
        step = timedelta(seconds=1 / args.rate)
        per_second = max(1, round(args.rate))
        cpu, wall = time.process_time(), time.perf_counter()
        for n, each in enumerate(records):
            await record(each, START + n * step)
            if n % per_second == per_second - 1:
                await flush()
        await flush()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        rows = await conn.fetchval(f"SELECT count(*) FROM {quote_ident(schema)}.ai_usage")
        return Run(cpu, wall, int(rows))
    finally:
        await store.close()
        await conn.execute(f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE")
        await conn.close()


async def main(args: argparse.Namespace) -> None:
    print(
        f"usage ledger, {args.records:,} cache-hit records of {args.users} users at a simulated "
        f"{args.rate:,.0f}/s, written every simulated second, {args.rounds} alternating rounds; "
        f"{load_average()}"
    )
    sides = {"a row per record (anchor)": row_per_record, "folded per second": folded}
    best: dict[str, Run] = {}
    for _ in range(args.rounds):
        for name, make in sides.items():
            got = await run(make, args.database_url, args)
            if name not in best or got.cpu_s < best[name].cpu_s:
                best[name] = got
    for name, got in best.items():
        print(
            f"  {name}: CPU {got.cpu_s / args.records * 1e6:.2f} µs/record, "
            f"wall {got.wall_s / args.records * 1e6:.2f} µs/record, {got.rows:,} rows"
        )
    anchor, fold = best["a row per record (anchor)"], best["folded per second"]
    print(
        f"  folded / anchor: CPU {fold.cpu_s / anchor.cpu_s:.2f}x, "
        f"wall {fold.wall_s / anchor.wall_s:.2f}x, rows {fold.rows / anchor.rows:.4f}x"
    )
    print(f"  ({load_average()})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=2000.0)
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL)
    asyncio.run(main(parser.parse_args()))
