"""`viewbait-gateway worker` as a real subprocess: it runs the jobs other replicas queue, with no
gRPC listener, and on SIGTERM hands its running job back to the queue and exits cleanly."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import main as cli_main
from gateway.emulator import EmulatorServer
from tests.fixtures.stores import DATABASE_URL

from .test_jobs import QUEUED, RUNNING, SUCCEEDED, Jobs, settings, store_settings, video

EXIT_TIMEOUT_S = 30.0


async def test_the_worker_mode_runs_jobs_and_hands_them_back_on_sigterm(
    # The schema first: fixtures end in reverse order, so it is dropped after the processes.
    pg_schema: str,
    start_gateway: Any,
    spawn_gateway: Any,
    emulator: EmulatorServer,
    tmp_path: Path,
) -> None:
    # The submit runs while a worker process starts up on the same cores: the store's time
    # limit is a generous one (the fixtures' 1 s is for calls on an otherwise idle machine).
    store = store_settings(pg_schema, migrate_on_start=True, command_timeout_s=10.0)
    # Submits only: the job can run nowhere but in a worker process.
    submitting = Jobs(await start_gateway(settings(emulator, tmp_path, store, workers=0)))
    env = {
        "VIEWBAIT_GEMINI__API_KEY": emulator.api_key,
        "VIEWBAIT_GEMINI__BASE_URL": emulator.base_url,
        "VIEWBAIT_STORE__DATABASE_URL": DATABASE_URL,
        "VIEWBAIT_STORE__SCHEMA": pg_schema,
        "VIEWBAIT_SERVER__LOG_LEVEL": "WARNING",
    }
    emulator.set_knobs(latency_s=20.0)
    first = spawn_gateway("worker", **env)
    assert first.port == 0  # no listener

    job_id = (await submitting.submit(video())).job.id
    async for event in submitting.watch(job_id):
        if event.job.status == RUNNING:
            break
    # Stop it mid-call: an attempt whose work started counts (one stopped before its work
    # starts is handed back uncounted).
    for _ in range(200):
        if emulator.stats().count() >= 1:
            break
        await asyncio.sleep(0.05)
    first.process.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(first.process.wait, EXIT_TIMEOUT_S)

    assert code == 0, first.log()
    handed_back = await submitting.get(job_id)
    assert (handed_back.status, handed_back.attempts) == (QUEUED, 1)

    emulator.set_knobs(latency_s=0.0)
    spawn_gateway("worker", **env)
    events = await submitting.watch_to_end(job_id)

    assert events[-1].job.status == SUCCEEDED and events[-1].job.analyze_video.summary
    assert events[-1].job.attempts == 2


def test_the_worker_mode_needs_a_database(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VIEWBAIT_STORE__DATABASE_URL", raising=False)

    assert cli_main(["worker"]) == 2
