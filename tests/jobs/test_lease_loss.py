"""A worker that loses its lease stops at once and says so once: real in-process gateways with
their worker pools, the emulator behind the real Gemini adapter, each store.

The lease here is an hour (a heartbeat every twenty minutes), so a worker that stops within a
test's patience learned of the cancel from the job's change notification, not from its
heartbeat timer.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from viewbait.ai.v1 import job_service_pb2, operations_pb2

from gateway.config import ExecutionSettings
from gateway.emulator import EmulatorServer
from gateway.store.base import ABANDONED_OUTCOME
from tests.fixtures.gateways import eventually
from tests.fixtures.usage import written

from .test_jobs import CANCELLED, RUNNING, Jobs, settings

#: Longer than any test waits: an upstream call still running after it would show.
UPSTREAM_LATENCY_S = 60.0
VARIATIONS = 4


def thumbnails() -> job_service_pb2.SubmitJobRequest:
    return job_service_pb2.SubmitJobRequest(
        generate_thumbnail=operations_pb2.GenerateThumbnailRequest(
            prompt="a treehouse at dusk", variations=VARIATIONS
        )
    )


async def test_a_cancelled_job_stops_its_upstream_calls_at_once_and_logs_one_line(
    start_gateway: Any,
    emulator: EmulatorServer,
    tmp_path: Path,
    store_for: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    gateway = await start_gateway(
        settings(emulator, tmp_path, store_for, execution=ExecutionSettings(lease_s=3600))
    )
    jobs = Jobs(gateway)
    emulator.set_knobs(latency_s=UPSTREAM_LATENCY_S)
    job_id = (await jobs.submit(thumbnails())).job.id
    async for event in jobs.watch(job_id):
        # Every variation has started (and recorded its progress): all its calls are in flight.
        if event.job.status == RUNNING and event.job.progress.message.endswith(f"{VARIATIONS}"):
            break
    await eventually(lambda: emulator.stats().requests == VARIATIONS, "every upstream call")
    caplog.clear()
    caplog.set_level(logging.INFO, logger="gateway")

    cancelled = await jobs.cancel(job_id)
    await eventually(lambda: gateway.server.workers.busy == 0, "the worker to stop")

    assert cancelled.status == CANCELLED
    assert (await jobs.get(job_id)).attempts == 1
    about_it = [r for r in caplog.records if job_id in r.getMessage()]
    assert [(r.levelno, r.getMessage()) for r in about_it] == [
        (logging.INFO, f"job {job_id} was cancelled; its attempt here stopped")
    ], caplog.text
    # Every cut call is in the ledger, as the attempt of a claim that is no longer current.
    await written(gateway.server.usage)
    ledger = await gateway.server.store.list_usage(job_id)
    assert [e.record.outcome for e in ledger] == [ABANDONED_OUTCOME] * VARIATIONS
    assert all(e.record.labels.fence == 1 for e in ledger)
