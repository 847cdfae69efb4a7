"""Durable jobs under faults, with real processes and real databases.

- A `viewbait-gateway worker` process killed with SIGKILL in the middle of its jobs: every job
  still succeeds, taken over by another replica only once the dead one's lease has lapsed, and
  no replica calls Gemini for a job while another replica's lease on it is valid.
- PostgreSQL restarted under running jobs (a throwaway server of the test's own, never the
  shared one): the replicas reconnect, their listener too, every job submitted before, during
  and after the outage finishes, and watchers either keep following or fail with UNAVAILABLE.
- A storm of Gemini 429s: jobs back off as long as Gemini's RetryInfo asks (no hot loop), within
  their attempts, and all succeed once it ends.

Who called Gemini when comes from recording proxies in front of the emulator (one per replica,
`fault_tools.UpstreamRecorder`); who held which lease when, from a trigger that records every
version of the job rows (`fault_tools.JobAudit`); the usage ledger (`ai_usage`) backs both up.

Fixtures are listed in the order they must start: pytest stops them in reverse, so replicas
stop before the proxies, the emulator and the database they use.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from collections.abc import AsyncIterator, Iterable
from itertools import pairwise
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio
from viewbait.ai.v1 import job_pb2

from gateway.config import ExecutionSettings, JobSettings, Settings, StoreSettings, Tier
from gateway.emulator import EmulatorServer
from gateway.store import Store, UsageEntry
from gateway.testing.postgres import (
    BIN_DIR_ENV,
    NOT_DURABLE,
    PostgresCluster,
    postgres_bin_dir,
    throwaway_postgres,
)
from tests.fixtures.gateways import eventually
from tests.fixtures.stores import store_settings
from tests.fixtures.usage import written

from .fault_tools import (
    Tenure,
    UpstreamCall,
    UpstreamRecorder,
    audited_schema,
    worker_env,
)
from .test_jobs import SUCCEEDED, TERMINAL, Jobs, settings, video

#: How long a test waits for its jobs to finish before failing (they take seconds).
SETTLE_S = 60.0
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


@pytest.fixture
async def cluster() -> AsyncIterator[PostgresCluster]:
    """A PostgreSQL server of the test's own, which it may stop and start."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        pytest.skip(
            f"PostgreSQL server binaries (initdb, pg_ctl) not found: set {BIN_DIR_ENV} "
            "or install the server package (Debian: postgresql)"
        )
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        pytest.skip("running as root needs setpriv (util-linux) to start PostgreSQL unprivileged")
    async with throwaway_postgres(bin_dir, NOT_DURABLE) as server:
        yield server


async def settle(jobs: Jobs, job_ids: Iterable[str]) -> dict[str, job_pb2.Job]:
    """Every job's final state, read with GetJob until all are terminal (fails after
    `SETTLE_S`, naming the jobs still active)."""
    pending = set(job_ids)
    finals: dict[str, job_pb2.Job] = {}
    give_up = time.monotonic() + SETTLE_S
    while True:
        for job_id in sorted(pending):
            job = await jobs.get(job_id)
            if job.status in TERMINAL:
                finals[job_id] = job
                pending.discard(job_id)
        if not pending:
            return finals
        if time.monotonic() > give_up:
            raise AssertionError(f"jobs still active after {SETTLE_S:g} s: {sorted(pending)}")
        await asyncio.sleep(0.2)


def with_gemini_url(base: Settings, url: str) -> Settings:
    """`base` calling Gemini at `url` (a recording proxy)."""
    return base.model_copy(update={"gemini": base.gemini.model_copy(update={"base_url": url})})


# -- kill -9 -------------------------------------------------------------------------------

#: Short leases, so a dead replica's jobs are taken over within seconds (heartbeat: a third).
KILL_LEASE_S = 4.0
KILL_JOBS = 20
#: The replicas, each a `viewbait-gateway worker` process; the first one is killed.
REPLICAS = ("doomed", "second", "third")
DOOMED = REPLICAS[0]


async def answered_calls(store: Store, job_ids: Iterable[str]) -> dict[str, list[UsageEntry]]:
    """The upstream attempts in the ledger of each job (savings rows left out: a run that found
    its result cached, after a kill, records one), once each holds its answered call: the
    worker processes write their ledger in the background, within a flush interval of the
    call."""
    async with asyncio.timeout(SETTLE_S):
        while True:
            ledger = {
                j: [e for e in await store.list_usage(j) if e.record.upstream] for j in job_ids
            }
            if all(any(e.record.outcome == "ok" for e in rows) for rows in ledger.values()):
                return ledger
            await asyncio.sleep(0.1)


async def test_a_killed_worker_loses_its_jobs_to_the_others_only_once_its_leases_lapse(
    pg_schema: str,
    emulator: EmulatorServer,
    upstream: UpstreamRecorder,
    start_gateway: Any,
    spawn_gateway: Any,
    tmp_path: Path,
) -> None:
    # Fixtures in this order: the replicas stop before the proxies, the emulator and the schema.
    store, audit = await audited_schema(pg_schema)
    # Submits only; the worker processes run everything.
    # `settle` polls every job's GetJob far faster than a client would: no read limits.
    front = Jobs(
        await start_gateway(settings(emulator, tmp_path, store, workers=0, read_limits={}))
    )
    env = worker_env(
        emulator.api_key,
        pg_schema,
        KILL_LEASE_S,
        VIEWBAIT_SERVER__LOG_LEVEL="WARNING",
        VIEWBAIT_EXECUTION__RESCUE_INTERVAL_S="0.5",
        VIEWBAIT_JOBS__WORKERS="4",
        VIEWBAIT_JOBS__POLL_INTERVAL_S="0.5",
        # Uncapped (the table merges over the defaults: each tier is lifted by name).
        VIEWBAIT_JOBS__RUNNING_CAPS=json.dumps(dict.fromkeys(tier.value for tier in Tier)),
    )
    pids = {}
    for name in REPLICAS:
        url = await upstream.proxy(name)
        replica = await asyncio.to_thread(
            spawn_gateway, "worker", VIEWBAIT_GEMINI__BASE_URL=url, **env
        )
        pids[name] = replica.process.pid
        if name == DOOMED:
            doomed = replica.process
    # Every call lasts long enough to be cut in the middle.
    emulator.set_knobs(latency_s=1.5)
    videos = [f"kill{i:07d}" for i in range(KILL_JOBS)]
    job_of = {v: (await front.submit(video(v))).job.id for v in videos}

    await eventually(lambda: upstream.in_flight(DOOMED) >= 2, "the doomed worker mid-call twice")
    killed = time.time()
    doomed.kill()
    await asyncio.to_thread(doomed.wait, 15)
    died = time.time()
    finals = await settle(front, job_of.values())
    tenures = await audit.tenures()
    ledger = await answered_calls(front.running.server.store, job_of.values())

    assert all(job.status == SUCCEEDED for job in finals.values()), finals
    assert all(job.analyze_video.summary for job in finals.values())
    cut = {
        job_of[c.video_id or ""]
        for c in upstream.calls
        if c.via == DOOMED and ended(c, died) > killed
    }
    taken_over = {
        j for j, held in tenures.items() if any(t.held_by(pids[DOOMED]) and t.rescued for t in held)
    }
    assert len(cut) >= 2 and cut <= taken_over, (cut, taken_over)  # the kill cut calls short
    for v in videos:
        job_id, calls, held = job_of[v], upstream.of(v), tenures[job_of[v]]
        story = timeline(v, calls, held, pids, died)
        # Each claim counted an attempt, within the bound.
        assert finals[job_id].attempts == len(held) <= ExecutionSettings().max_attempts, story
        assert 1 <= len(calls) <= len(held) and calls[-1].status == 200, story
        # A job changed hands only after its lease lapsed: the rescue, and the next claim,
        # came after the last lease end the previous holder had.
        for before, after in pairwise(held):
            assert before.rescued is not None and before.rescued >= before.lease_end, story
            assert after.claimed >= before.lease_end, story
        for call in calls:
            # A replica called Gemini for a job only after claiming it...
            mine = [t for t in held if t.held_by(pids[call.via]) and t.claimed <= call.start]
            assert mine, story
            # ...and no other replica's call overlapped it while that lease was valid.
            for other in calls:
                if other.via != call.via and call.start <= other.start < ended(call, died):
                    assert other.start >= mine[-1].lease_end, story
        # The ledger holds the answered calls: one successful at least, none it did not see.
        assert any(e.record.outcome == "ok" for e in ledger[job_id]), story
        assert len(ledger[job_id]) <= len(calls), story
    # Everything went through the proxies; a job was paid at most once per claim.
    assert emulator.stats().requests == len(upstream.calls)
    assert len(upstream.calls) <= sum(len(t) for t in tenures.values())


def ended(call: UpstreamCall, died: float) -> float:
    """When `call` stopped running: its answer, or the death of the doomed replica that made
    it; `died` too for a call still in flight."""
    end = call.end if call.end is not None else died
    return min(end, died) if call.via == DOOMED else end


def timeline(
    video_id: str,
    calls: list[UpstreamCall],
    tenures: list[Tenure],
    pids: dict[str, int],
    died: float,
) -> str:
    """One job's calls and tenures relative to the kill (for assertion messages)."""
    names = {pid: name for name, pid in pids.items()}

    def holder(tenure: Tenure) -> str:
        return next((n for p, n in names.items() if tenure.held_by(p)), tenure.holder)

    lines = [f"video {video_id}, times in seconds after the kill:"]
    lines += [
        f"  call by {c.via}: {c.start - died:+.3f} .. {ended(c, died) - died:+.3f} -> {c.status}"
        for c in calls
    ]
    lines += [
        f"  lease of {holder(t)}: claimed {t.claimed - died:+.3f}, lease end "
        f"{t.lease_end - died:+.3f}, rescued "
        + ("no" if t.rescued is None else f"{t.rescued - died:+.3f}")
        for t in tenures
    ]
    return "\n".join(lines)


# -- PostgreSQL restart ----------------------------------------------------------------------

#: How long the database stays down: longer than an upstream call and than a lease, so results
#: of calls finished meanwhile cannot be written and their leases lapse.
OUTAGE_S = 2.5
RESTART_LEASE_S = 3.0
#: Room for a lease lost to a stalled test process on top of the attempt the outage costs.
RESTART_MAX_ATTEMPTS = 5


async def follow(jobs: Jobs, job_id: str) -> tuple[job_pb2.Job | None, list[grpc.StatusCode]]:
    """Watches a job to its end, resuming after the last event seen when the stream fails with
    UNAVAILABLE; returns its last state and the codes the streams failed with."""
    seen, last = 0, None
    failures: list[grpc.StatusCode] = []
    while True:
        try:
            async for event in jobs.watch(job_id, after=seen):
                seen, last = event.sequence, event.job
            return last, failures
        except aio.AioRpcError as exc:
            failures.append(exc.code())
            if exc.code() is not UNAVAILABLE:
                return last, failures
        await asyncio.sleep(0.5)


async def submit_until_accepted(jobs: Jobs, video_id: str) -> tuple[str, list[grpc.StatusCode]]:
    """Submits (with an idempotency key, so a retry never makes a second job) until accepted;
    returns the job id and the codes of the refused attempts."""
    refused: list[grpc.StatusCode] = []
    while True:
        try:
            answer = await jobs.submit(video(video_id), key=f"submit-{video_id}")
            return answer.job.id, refused
        except aio.AioRpcError as exc:
            refused.append(exc.code())
            if exc.code() is not UNAVAILABLE or len(refused) > 60:
                raise
        await asyncio.sleep(0.5)


async def test_jobs_and_watchers_survive_a_database_restart(
    cluster: PostgresCluster, emulator: EmulatorServer, start_gateway: Any, tmp_path: Path
) -> None:
    store: StoreSettings = store_settings("viewbait_restart", cluster.url, migrate_on_start=True)
    execution = ExecutionSettings(
        lease_s=RESTART_LEASE_S, rescue_interval_s=0.5, max_attempts=RESTART_MAX_ATTEMPTS
    )
    running = JobSettings(
        workers=4, poll_interval_s=0.5, retry_initial_s=0.01, retry_max_s=0.05, running_caps={}
    )
    worker = await start_gateway(
        settings(emulator, tmp_path, store, jobs=running, execution=execution)
    )
    front = Jobs(
        await start_gateway(settings(emulator, tmp_path, store, workers=0, execution=execution))
    )
    stores = [worker.server.store, front.running.server.store]
    await eventually(lambda: all(s.listening for s in stores), "both replicas listening")
    emulator.set_knobs(latency_s=1.0)

    before = [(await submit_until_accepted(front, f"pgrsa{i:06d}"))[0] for i in range(4)]
    watchers = [asyncio.create_task(follow(front, job_id)) for job_id in before]
    await eventually(lambda: emulator.stats().requests >= 2, "jobs running upstream")

    await cluster.stop("fast")
    during = [asyncio.create_task(submit_until_accepted(front, f"pgrsb{i:06d}")) for i in range(4)]
    await asyncio.sleep(OUTAGE_S)
    await cluster.start()
    await eventually(lambda: all(s.listening for s in stores), "both listeners reconnected")
    heard = worker.server.store.notifications_received
    started = worker.server.workers.started
    after = [(await submit_until_accepted(front, f"pgrsc{i:06d}"))[0] for i in range(4)]

    accepted = [await task for task in during]
    outcomes = [
        *[await task for task in watchers],
        *[await follow(front, job_id) for job_id in (*(a[0] for a in accepted), *after)],
    ]
    for last, failures in outcomes:
        assert last is not None and last.status == SUCCEEDED, (last, failures)
        assert last.analyze_video.summary and last.attempts <= execution.max_attempts
        assert set(failures) <= {UNAVAILABLE}, failures
    # The calls the outage caught could not store their results: those jobs ran again.
    assert worker.executor.stats.write_failures >= 1
    assert any(last is not None and last.attempts >= 2 for last, _ in outcomes[: len(before)])
    # Submits during the outage were refused cleanly, then accepted once, never twice.
    assert all(refused and set(refused) == {UNAVAILABLE} for _, refused in accepted), accepted
    listed = await front.list(page_size=100)
    assert sorted(j.id for j in listed.jobs) == sorted([*before, *(a[0] for a in accepted), *after])
    assert all(j.status == SUCCEEDED for j in listed.jobs)
    # The worker replica kept claiming after the restart, woken through its new listener.
    assert worker.server.workers.started > started
    assert worker.server.store.notifications_received > heard


# -- a storm of Gemini 429s -------------------------------------------------------------------

#: Gemini's RetryInfo delay during the storm.
STORM_RETRY_S = 1.0
STORM_JOBS = 8
#: Calls per job attempt (the adapter's retries) and attempts per job.
STORM_CALLS_PER_ATTEMPT = 2
STORM_MAX_ATTEMPTS = 10
#: Clock granularity allowed on "waited at least the RetryInfo delay".
CLOCK_SLACK_S = 0.01


async def test_jobs_back_off_through_a_429_storm_and_finish_after_it(
    pg_schema: str,
    emulator: EmulatorServer,
    upstream: UpstreamRecorder,
    start_gateway: Any,
    tmp_path: Path,
) -> None:
    store = store_settings(pg_schema, migrate_on_start=True)
    base = settings(
        emulator,
        tmp_path,
        store,
        gemini_attempts=STORM_CALLS_PER_ATTEMPT,
        jobs=JobSettings(
            workers=STORM_JOBS,
            poll_interval_s=0.05,
            retry_initial_s=0.01,
            retry_max_s=0.05,
            running_caps={},
        ),
        execution=ExecutionSettings(max_attempts=STORM_MAX_ATTEMPTS),
        read_limits={},  # `settle` polls GetJob far faster than a client would
    )
    gateway = await start_gateway(with_gemini_url(base, await upstream.proxy("gateway")))
    jobs = Jobs(gateway)
    videos = [f"storm{i:06d}" for i in range(STORM_JOBS)]

    storm_began = time.time()
    emulator.inject("rate_limited", count=None, rate=1.0, retry_delay_s=STORM_RETRY_S)
    job_of = {v: (await jobs.submit(video(v))).job.id for v in videos}

    def refusals(v: str) -> int:
        return sum(1 for c in upstream.of(v) if c.status == 429)

    # Long enough for every job to fail a whole attempt and be refused again on its retry.
    await eventually(
        lambda: all(refusals(v) > STORM_CALLS_PER_ATTEMPT for v in videos),
        "every job refused on two attempts",
        patience_s=SETTLE_S,
    )
    emulator.set_knobs(faults=[])
    storm_ended = time.time()
    finals = await settle(jobs, job_of.values())

    storm_s = storm_ended - storm_began
    refused = [c for c in upstream.calls if c.status == 429]
    assert emulator.stats().count(outcome="rate_limited") == len(refused)
    for v in videos:
        final, calls = finals[job_of[v]], upstream.of(v)
        assert final.status == SUCCEEDED and final.analyze_video.summary, final
        # Retried as a job (not only inside one attempt), within its attempts.
        assert 2 <= final.attempts <= STORM_MAX_ATTEMPTS, final
        assert [c.status for c in calls].count(200) == 1 and calls[-1].status == 200, calls
        # Every retry after a 429 waited at least Gemini's RetryInfo delay...
        for earlier, later in pairwise(calls):
            if earlier.status == 429:
                assert earlier.end is not None
                assert later.start - earlier.end >= STORM_RETRY_S - CLOCK_SLACK_S, calls
        # ...so a job was refused at most once per delay while the storm lasted: no hot loop.
        assert refusals(v) <= storm_s / STORM_RETRY_S + 1, (storm_s, calls)
        # The ledger holds each call, and no attempt made more calls than the adapter allows.
        await written(gateway.server.usage)
        ledger = [e for e in await gateway.server.store.list_usage(job_of[v]) if e.record.upstream]
        assert len(ledger) == len(calls), (ledger, calls)
        assert all(e.record.attempt <= STORM_CALLS_PER_ATTEMPT for e in ledger), ledger
        assert [e.record.outcome for e in ledger].count("ok") == 1, ledger
