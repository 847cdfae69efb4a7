"""Durable jobs: queue throughput against procrastinate, and WatchJob fan-out.

(a) Throughput of no-op jobs on this machine's PostgreSQL, end to end: `--jobs` (20,000) jobs
    submitted in batches of `--batch` (500, `join_or_create_active_jobs`) while they are claimed and
    completed by one replica's worker pool (`--workers` 1,000 at once, `--claim-batch` 500 per
    claim). The job store, `WorkerPool` and claims are the gateway's own (`PostgresStore`, with
    every NOTIFY a real watcher would get); only the work is a no-op runner that completes each job
    at once. Anchor, in the same run on the same database: procrastinate (PyPI) with
    `batch_defer_async` in the same batches and one worker of `--procrastinate-concurrency`
    (50) running an empty async task, until its queue is empty. Target: >= 5,000 jobs/s.
    Both connect without TLS (loopback). Per-user running caps are off for the main figure
    (procrastinate has none); the same run is repeated with jobs spread over 1,000 users capped
    by tier, for what the caps cost.
(b) WatchJob latency across replicas, and (c) 1,000 concurrent WatchJob streams' memory, from
    `bench/jobs_watch.py` (run with `--watch`).

    python bench/jobs.py [--jobs 20000] [--database-url URL] [--skip-procrastinate] [--watch]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import multiprocessing
import os
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
from pydantic import SecretStr

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import report
from _rpc_harness import DEFAULT_DATABASE_URL, fresh_schema

from gateway.config import JobSettings, StoreSettings, Tier
from gateway.jobs import WorkerPool
from gateway.store import Claim, Job, NewJob, ResultRef, Store
from gateway.store.postgres import PostgresStore, run_migrations

TARGET_JOBS_PER_S = 5_000.0
#: The result every no-op job completes with.
EMPTY = ResultRef(json="{}")


class NoopRunner:
    """A `JobRunner` whose work is nothing: each claimed job is completed at once."""

    def __init__(self, store: Store) -> None:
        self._store = store

    @property
    def store(self) -> Store:
        return self._store

    @property
    def worker_id(self) -> str:
        return f"bench-worker-{os.getpid()}"

    @property
    def lease_s(self) -> float:
        return 60.0

    async def run(self, job: Job) -> None:
        await self._store.complete_job(job.claim, EMPTY)

    def hand_back(self, claim: Claim) -> None:
        pass  # stopped only once every job has completed


def new_jobs(count: int, *, users: int) -> list[NewJob]:
    """`count` distinct jobs (no coalescing), round robin over `users` users at the top tier."""
    return [
        NewJob(
            user_id=f"user-{n % users}",
            op="analyze_video",
            input_json=f'{{"n":{n}}}',
            dedupe_key=uuid.uuid4().bytes + uuid.uuid4().bytes,
            model="noop",
            priority=3,
        )
        for n in range(count)
    ]


async def submit_in_batches(store: Store, jobs: list[NewJob], batch: int) -> None:
    """Submits `batch` jobs at a time (`join_or_create_active_jobs`: one statement for a batch
    of new jobs), two batches in flight."""
    in_flight = asyncio.Semaphore(2)

    async def submit(chunk: list[NewJob]) -> None:
        async with in_flight:
            outcomes = await store.join_or_create_active_jobs(chunk)
        assert all(o.created for o in outcomes)

    await asyncio.gather(
        *(submit(jobs[start : start + batch]) for start in range(0, len(jobs), batch))
    )


async def ours(
    database_url: str, count: int, args: argparse.Namespace, *, capped: bool
) -> tuple[float, float, float]:
    """(submit s, rest s, end-to-end jobs/s) of the gateway's own queue: the seconds until
    every job was submitted, the seconds from then until every job completed, and the rate."""
    async with fresh_schema(database_url) as schema:
        settings = store_settings(database_url, schema)
        await run_migrations(settings)
        store = PostgresStore(settings)
        await store.start()
        caps = {Tier.PRO: 8} if capped else {}
        jobs = new_jobs(count, users=1_000 if capped else 1)
        succeeded = f"SELECT count(*) FROM \"{schema}\".ai_jobs WHERE status = 'succeeded'"
        try:
            # Workers run while jobs are submitted, as in production.
            with worker_processes(
                args.processes, _gateway_worker, database_url, schema, args, caps
            ):
                start = time.perf_counter()
                await submit_in_batches(store, jobs, args.batch)
                submitted = time.perf_counter()
                await wait_for_count(database_url, succeeded, count)
                done = time.perf_counter()
        finally:
            await store.close()
    return submitted - start, done - submitted, count / (done - start)


def store_settings(database_url: str, schema: str) -> StoreSettings:
    return StoreSettings(
        database_url=SecretStr(database_url),
        schema=schema,
        pool_min_size=4,
        pool_max_size=10,
        command_timeout_s=30,
    )


def _gateway_worker(
    ready: Any,
    stop: Any,
    database_url: str,
    schema: str,
    args: argparse.Namespace,
    caps: dict[Tier, int],
) -> None:
    """A worker replica: a `WorkerPool` with the no-op runner on the benchmark's schema."""

    async def work() -> None:
        store = PostgresStore(store_settings(database_url, schema))
        await store.start()
        pool = WorkerPool(
            JobSettings(
                workers=args.workers,
                claim_batch=args.claim_batch,
                poll_interval_s=0.5,
                running_caps=caps,
            ),
            NoopRunner(store),
        )
        pool.start()
        ready.set()
        await asyncio.to_thread(stop.wait)
        await pool.stop()
        await store.close()

    logging.basicConfig(level=logging.WARNING)
    asyncio.run(work())


@contextlib.contextmanager
def worker_processes(count: int, target: Any, *args: Any) -> Iterator[None]:
    """`count` processes running `target(ready, stop, *args)`, all ready before the block."""
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    readies = [context.Event() for _ in range(count)]
    processes = [
        context.Process(target=target, args=(ready, stop, *args), daemon=True) for ready in readies
    ]
    for process in processes:
        process.start()
    try:
        for ready, process in zip(readies, processes, strict=True):
            while not ready.wait(0.1):
                if not process.is_alive():
                    raise RuntimeError(f"a worker process exited with {process.exitcode}")
        yield
    finally:
        stop.set()
        for process in processes:
            process.join(30)
            if process.is_alive():
                process.kill()


async def wait_for_count(database_url: str, sql: str, count: int) -> None:
    """Until `sql` (a count) reaches `count`, reading it every 10 ms."""
    conn = await asyncpg.connect(database_url)
    try:
        for _ in range(60_000):
            if int(await conn.fetchval(sql)) >= count:
                return
            await asyncio.sleep(0.01)
        raise TimeoutError(f"fewer than {count} jobs succeeded within 10 minutes")
    finally:
        await conn.close()


def _procrastinate_app(database_url: str, schema: str) -> Any:
    import procrastinate  # a benchmark-only dependency (the `bench` extra)

    connector = procrastinate.PsycopgConnector(
        conninfo=database_url, kwargs={"options": f"-c search_path={schema}"}
    )
    app = procrastinate.App(connector=connector)

    @app.task(name="noop")
    async def noop() -> None:
        pass

    return app


def _procrastinate_worker(
    ready: Any, stop: Any, database_url: str, schema: str, concurrency: int
) -> None:
    """A procrastinate worker process with `concurrency` jobs at once."""

    async def work() -> None:
        app = _procrastinate_app(database_url, schema)
        async with app.open_async():
            worker = asyncio.create_task(
                app.run_worker_async(concurrency=concurrency, install_signal_handlers=False)
            )
            ready.set()
            await asyncio.to_thread(stop.wait)
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker

    logging.basicConfig(level=logging.WARNING)
    asyncio.run(work())


async def procrastinate_run(
    database_url: str, count: int, args: argparse.Namespace
) -> tuple[float, float, float]:
    """(defer s, rest s, end-to-end jobs/s) of procrastinate on its own fresh schema, its
    workers running while jobs are deferred."""
    async with fresh_schema(database_url) as schema:
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(f'CREATE SCHEMA "{schema}"')
        finally:
            await conn.close()
        app = _procrastinate_app(database_url, schema)
        succeeded = (
            f"SELECT count(*) FROM \"{schema}\".procrastinate_jobs WHERE status = 'succeeded'"
        )
        async with app.open_async():
            await app.schema_manager.apply_schema_async()
            with worker_processes(
                args.processes,
                _procrastinate_worker,
                database_url,
                schema,
                args.procrastinate_concurrency,
            ):
                start = time.perf_counter()
                noop = app.configure_task(name="noop")
                for first in range(0, count, args.batch):
                    await noop.batch_defer_async(
                        *({} for _ in range(min(args.batch, count - first)))
                    )
                submitted = time.perf_counter()
                await wait_for_count(database_url, succeeded, count)
                finished = time.perf_counter()
    return submitted - start, finished - submitted, count / (finished - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--procrastinate-jobs", type=int, default=2_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--workers", type=int, default=1000)
    parser.add_argument("--claim-batch", type=int, default=500)
    parser.add_argument("--procrastinate-concurrency", type=int, default=50)
    parser.add_argument(
        "--processes", type=int, default=2, help="worker processes (replicas) of each queue"
    )
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL)
    parser.add_argument("--skip-procrastinate", action="store_true")
    parser.add_argument("--skip-capped", action="store_true")
    parser.add_argument("--watch", action="store_true", help="also run bench/jobs_watch.py")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    # Loopback on one machine: TLS would only add CPU to both queues (an explicit sslmode in
    # the URL is kept).
    url = args.database_url
    if "sslmode=" not in url:
        url += ("&" if "?" in url else "?") + "sslmode=disable"

    async def run() -> None:
        print(f"(a) throughput of no-op jobs, {args.jobs:,} jobs, batches of {args.batch}")
        submit_s, drain_s, rate = await ours(url, args.jobs, args, capped=False)
        print(
            f"    gateway queue: all submitted after {submit_s:.2f} s, all completed "
            f"{drain_s:.2f} s later: end to end {rate:,.0f} jobs/s"
        )
        if not args.skip_capped:
            c_submit, c_drain, c_rate = await ours(url, args.jobs, args, capped=True)
            print(
                f"    with per-user caps (1,000 users, cap 8): submitted after {c_submit:.2f} s, "
                f"completed {c_drain:.2f} s later: end to end {c_rate:,.0f} jobs/s"
            )
        if not args.skip_procrastinate:
            p_count = args.procrastinate_jobs
            p_submit, p_drain, p_rate = await procrastinate_run(url, p_count, args)
            print(
                f"    procrastinate ({p_count:,} jobs, concurrency "
                f"{args.procrastinate_concurrency}): deferred after {p_submit:.2f} s, run "
                f"{p_drain:.2f} s later: end to end {p_rate:,.0f} jobs/s"
            )
            report("no-op jobs end to end", rate, p_rate, "jobs/s", "procrastinate")
        met = rate >= TARGET_JOBS_PER_S
        print(
            f"    target >= {TARGET_JOBS_PER_S:,.0f} jobs/s: {'met' if met else 'MISSED'} "
            f"({rate:,.0f})"
        )
        if args.watch:
            import jobs_watch

            await jobs_watch.run_all(url)

    asyncio.run(run())


if __name__ == "__main__":
    main()
