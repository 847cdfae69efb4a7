"""Fencing with real worker processes on PostgreSQL: a worker paused (SIGSTOP) in the middle of
its upstream call, past its lease, loses the job to another worker; resumed (SIGCONT) while the
other one holds it, it writes nothing, its late answer is thrown away, and the ledger records
its attempt as abandoned, with what it cost.

Each worker calls the emulator through a recording proxy of its own (`upstream`), so the test
knows when the paused worker's call is in flight and when its answer is waiting for it; a
trigger records every version of the job row (`JobAudit`), so what each worker wrote is on
record with the database's clock.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

from gateway.emulator import EmulatorServer
from gateway.store.base import ABANDONED_OUTCOME, LEASE_EXPIRED_MESSAGE
from tests.fixtures.gateways import eventually

from .fault_tools import UpstreamRecorder, audited_schema, worker_env
from .test_jobs import SUCCEEDED, Jobs, settings, video

#: The workers' lease: the paused one loses it this long after its last heartbeat.
LEASE_S = 2.0
#: Every upstream call lasts this long: the paused worker is stopped in the middle of one, and
#: the worker that takes over still holds the job when the paused one resumes.
UPSTREAM_S = 4.0
VIDEO = "fencedvid01"


async def test_a_paused_worker_resumed_after_a_takeover_writes_nothing(
    # The schema first: fixtures end in reverse order, so it is dropped after the processes.
    pg_schema: str,
    emulator: EmulatorServer,
    upstream: UpstreamRecorder,
    start_gateway: Any,
    spawn_gateway: Any,
    tmp_path: Path,
) -> None:
    store, audit = await audited_schema(pg_schema)
    # Submits and watches only; the worker processes run the job.
    front = Jobs(await start_gateway(settings(emulator, tmp_path, store, workers=0)))
    env = worker_env(
        emulator.api_key,
        pg_schema,
        LEASE_S,
        VIEWBAIT_SERVER__LOG_LEVEL="INFO",
        VIEWBAIT_EXECUTION__RESCUE_INTERVAL_S="0.2",
        VIEWBAIT_JOBS__POLL_INTERVAL_S="0.2",
        VIEWBAIT_USAGE__FLUSH_INTERVAL_S="0.2",
    )
    emulator.set_knobs(latency_s=UPSTREAM_S)
    # The worker to pause runs this job alone and rescues nobody else's: busy with its one
    # upstream call, it is rarely inside a database transaction when it is stopped (one it is
    # stopped inside is ended by PostgreSQL, idle past a store call's bound).
    quiet = {**env, "VIEWBAIT_JOBS__WORKERS": "1", "VIEWBAIT_EXECUTION__RESCUE_INTERVAL_S": "60"}
    paused = await asyncio.to_thread(
        spawn_gateway, "worker", VIEWBAIT_GEMINI__BASE_URL=await upstream.proxy("paused"), **quiet
    )
    job_id = (await front.submit(video(VIDEO))).job.id
    await eventually(lambda: upstream.in_flight("paused") == 1, "the paused worker's call")

    paused.process.send_signal(signal.SIGSTOP)
    try:
        # Another worker rescues the job once the paused one's lease lapses, and runs it.
        other = await asyncio.to_thread(
            spawn_gateway, "worker", VIEWBAIT_GEMINI__BASE_URL=await upstream.proxy("other"), **env
        )
        await eventually(lambda: upstream.in_flight("other") == 1, "the other worker's call")
        # The paused worker's answer is ready and waits in its socket; the other worker's
        # call is still under way: it holds the job.
        await eventually(lambda: upstream.of(VIDEO)[0].end is not None, "the first answer")
        assert upstream.in_flight("other") == 1
    finally:
        paused.process.send_signal(signal.SIGCONT)
    events = await front.watch_to_end(job_id)
    tenures = (await audit.tenures())[job_id]
    ledger = await until_rows(front, job_id, 2)
    lines = [r for r in paused.log_records() if job_id in r.get("msg", "")]

    final = events[-1].job
    assert final.status == SUCCEEDED and final.attempts == 2 and final.analyze_video.summary
    # Two claims: the paused worker's, rescued after its lease lapsed, then the other's.
    first, second = tenures
    assert first.held_by(paused.process.pid) and first.rescued is not None
    assert second.held_by(other.process.pid)
    # Nothing the paused worker sent after it resumed was taken: no heartbeat extended its
    # lease past the takeover, and the job's history holds no other write of it.
    assert first.lease_end <= second.claimed
    assert [(e.attempt, e.error.message) for e in final.error_history] == [
        (1, LEASE_EXPIRED_MESSAGE)
    ]
    # Its late answer was thrown away, which it says once; the other's answer is the result.
    assert [(r["level"], "claim 2" in r["msg"]) for r in lines] == [("warning", True)], lines
    # Both calls are in the ledger: the paused worker's as abandoned, with its cost.
    by_fence = {e.record.labels.fence: e.record for e in ledger}
    assert sorted(by_fence) == [1, 2]
    assert by_fence[1].outcome == ABANDONED_OUTCOME and by_fence[2].outcome == "ok"
    assert by_fence[1].cost_usd == by_fence[2].cost_usd > 0  # the same answer, paid twice
    assert [c.status for c in upstream.of(VIDEO)] == [200, 200]


async def until_rows(front: Jobs, job_id: str, rows: int) -> list[Any]:
    """The job's ledger rows once there are `rows` (each worker writes its own in batches)."""
    store = front.running.server.store
    async with asyncio.timeout(30):
        while True:
            ledger = await store.list_usage(job_id)
            if len(ledger) >= rows:
                return ledger
            await asyncio.sleep(0.1)
