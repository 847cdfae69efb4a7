"""Dead letters end to end with the real processes on PostgreSQL: a `viewbait-gateway serve`
process (no workers: it only answers), `viewbait-gateway worker` processes that run the jobs,
and the operators' `viewbait-gateway jobs` command run as a subprocess against the database.

Jobs fail (the emulator refuses them), the workers stop, the operator lists the dead letters,
shows one, and retries some by error reason and one by id; a watcher resuming after a failure
sees its job come back to QUEUED; a new worker runs them to success; the operator cancels and
purges. Every command's exit status is checked.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from typing import Any

import pytest
from grpc import aio
from viewbait.ai.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc

from gateway.config import ExecutionSettings
from gateway.emulator import EmulatorServer
from tests.fixtures.gateways import SERVICE_TOKEN, GatewayProcess, as_user
from tests.fixtures.stores import DATABASE_URL

from .test_jobs import TIMEOUT_S, video

QUEUED, FAILED = job_pb2.JOB_STATUS_QUEUED, job_pb2.JOB_STATUS_FAILED
SUCCEEDED, CANCELLED = job_pb2.JOB_STATUS_SUCCEEDED, job_pb2.JOB_STATUS_CANCELLED
EXIT_TIMEOUT_S = 60


def jobs_command(schema: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m gateway jobs <args>` against the test's schema, as an operator runs it."""
    database = {"VIEWBAIT_STORE__DATABASE_URL": DATABASE_URL, "VIEWBAIT_STORE__SCHEMA": schema}
    return gateway_jobs(database, *args)


def gateway_jobs(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m gateway jobs <args>` with `env` its only gateway variables."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("VIEWBAIT_")}
    environment.update(env)
    return subprocess.run(
        [sys.executable, "-m", "gateway", "jobs", *args],
        env=environment,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=EXIT_TIMEOUT_S,
    )


async def cli(schema: str, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(jobs_command, schema, *args)


def listed(result: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    """The jobs a `--json` command printed."""
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


class Front:
    """A JobService client for the serving process."""

    def __init__(self, process: GatewayProcess) -> None:
        self.channel = aio.insecure_channel(process.address)
        self.stub = job_service_pb2_grpc.JobServiceStub(self.channel)

    async def submit(self, video_id: str) -> str:
        answer = await self.stub.SubmitJob(video(video_id), metadata=as_user(), timeout=TIMEOUT_S)
        return str(answer.job.id)

    async def events(self, job_id: str, after: int = 0) -> list[job_service_pb2.WatchJobResponse]:
        request = job_service_pb2.WatchJobRequest(job_id=job_id, after_sequence=after)
        return [e async for e in self.stub.WatchJob(request, metadata=as_user(), timeout=60)]

    async def first_event(self, job_id: str, after: int) -> job_service_pb2.WatchJobResponse:
        request = job_service_pb2.WatchJobRequest(job_id=job_id, after_sequence=after)
        stream = self.stub.WatchJob(request, metadata=as_user(), timeout=TIMEOUT_S)
        async for event in stream:
            stream.cancel()
            return event
        raise AssertionError(f"the watch of job {job_id} ended without an event")


async def test_operators_list_show_retry_cancel_and_purge_dead_letters(
    # The schema first: fixtures end in reverse order, so it is dropped after the processes.
    pg_schema: str,
    spawn_gateway: Any,
    emulator: EmulatorServer,
) -> None:
    env = {
        "VIEWBAIT_GEMINI__API_KEY": emulator.api_key,
        "VIEWBAIT_GEMINI__BASE_URL": emulator.base_url,
        "VIEWBAIT_GEMINI__MAX_ATTEMPTS": "1",
        "VIEWBAIT_EXECUTION__MAX_ATTEMPTS": "1",
        "VIEWBAIT_STORE__DATABASE_URL": DATABASE_URL,
        "VIEWBAIT_STORE__SCHEMA": pg_schema,
        "VIEWBAIT_STORE__MIGRATE_ON_START": "true",
        "VIEWBAIT_AUTH__SERVICE_TOKEN": SERVICE_TOKEN,
        "VIEWBAIT_JOBS__POLL_INTERVAL_S": "0.2",
        "VIEWBAIT_SERVER__LOG_LEVEL": "WARNING",
    }
    served = await asyncio.to_thread(spawn_gateway, "serve", VIEWBAIT_JOBS__WORKERS="0", **env)
    front = Front(served)
    worker = await asyncio.to_thread(spawn_gateway, "worker", **env)
    # Two jobs refused on content grounds, one by an overloaded upstream (its only attempt).
    emulator.inject("safety", count=2)
    blocked = [await front.submit("blockedvid1"), await front.submit("blockedvid2")]
    ends = {job_id: (await front.events(job_id))[-1] for job_id in blocked}
    emulator.inject("unavailable", count=1)
    overloaded = await front.submit("overloaded1")
    ends[overloaded] = (await front.events(overloaded))[-1]
    worker.process.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(worker.process.wait, EXIT_TIMEOUT_S) == 0
    waiting = await front.submit("waitingvid1")  # no worker runs now: it stays queued

    dead = listed(await cli(pg_schema, "list", "--status", "failed", "--json"))
    by_reason = listed(await cli(pg_schema, "list", "--reason", "SAFETY_BLOCKED", "--json"))
    table = await cli(pg_schema, "list", "--status", "failed")
    shown = await cli(pg_schema, "show", blocked[0])
    retried = listed(await cli(pg_schema, "retry", "--reason", "SAFETY_BLOCKED", "--json"))
    again = listed(await cli(pg_schema, "retry", "--reason", "SAFETY_BLOCKED", "--json"))
    missing = "00000000-0000-4000-8000-000000000000"
    one_missing = await cli(pg_schema, "retry", overloaded, missing)
    nothing_chosen = await cli(pg_schema, "retry")
    # A watcher resuming after the failure's event sees the job come back (nobody runs it yet).
    back = await front.first_event(overloaded, ends[overloaded].sequence)
    cancelled = await cli(pg_schema, "cancel", waiting)

    assert {j["id"] for j in dead} == {*blocked, overloaded}
    assert all(j["status"] == "failed" and len(j["error_history"]) == 1 for j in dead), dead
    assert {j["id"] for j in by_reason} == set(blocked)
    assert table.returncode == 0 and table.stdout.splitlines()[0].startswith("ID\tSTATUS")
    assert all(job_id in table.stdout for job_id in (*blocked, overloaded))
    assert shown.returncode == 0, shown.stderr
    assert "status      failed" in shown.stdout and "error history" in shown.stdout
    assert "attempt 1 at" in shown.stdout and "SAFETY_BLOCKED" in shown.stdout
    assert {(j["id"], j["status"], j["retried"]) for j in retried} == {
        (job_id, "queued", True) for job_id in blocked
    }
    # A fresh budget: the operator's `execution.max_attempts` (the default here) more attempts.
    assert all(j["max_attempts"] == 1 + ExecutionSettings().max_attempts for j in retried)
    assert not again  # they are queued now: nothing failed is left with that reason
    assert one_missing.returncode == 3, one_missing.stderr
    assert f"{overloaded} retried: queued" in one_missing.stdout
    assert missing in one_missing.stderr
    assert nothing_chosen.returncode == 2 and "--all" in nothing_chosen.stderr
    assert back.job.status == QUEUED and back.sequence == ends[overloaded].sequence + 1
    assert cancelled.returncode == 0 and f"{waiting} cancelled" in cancelled.stdout

    await asyncio.to_thread(spawn_gateway, "worker", **env)
    finals = {job_id: (await front.events(job_id))[-1].job for job_id in (*blocked, overloaded)}
    assert all(job.status == SUCCEEDED for job in finals.values()), finals
    assert all(job.attempts == 2 and len(job.error_history) == 1 for job in finals.values())
    assert {e.job.status for e in await front.events(waiting)} == {CANCELLED}

    refused = await cli(pg_schema, "retry", waiting)
    purged = await cli(pg_schema, "purge", "--older-than", "0.001", "--status", "cancelled")
    rest = await cli(pg_schema, "purge", "--older-than", "0.001")
    left = listed(await cli(pg_schema, "list", "--json"))

    assert refused.returncode == 3 and "cancel is final" in refused.stderr
    assert purged.returncode == 0 and "purged 1 jobs" in purged.stdout, purged.stdout
    assert "(1 cancelled)" in purged.stdout
    assert rest.returncode == 0 and "purged 3 jobs" in rest.stdout and "3 succeeded" in rest.stdout
    assert left == []
    await front.channel.close()


def test_the_jobs_command_needs_a_database_and_says_so() -> None:
    result = gateway_jobs({}, "list")
    assert result.returncode == 2
    assert "VIEWBAIT_STORE__DATABASE_URL" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("age", ["0", "-3d", "ten", "3w"])
def test_purge_refuses_an_age_it_cannot_read(age: str, pg_schema: str) -> None:
    result = jobs_command(pg_schema, "purge", f"--older-than={age}")
    assert result.returncode == 2 and "is not an age" in result.stderr


def test_the_jobs_command_reports_an_unreachable_database() -> None:
    unreachable = {
        "VIEWBAIT_STORE__DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
        "VIEWBAIT_STORE__CONNECT_TIMEOUT_S": "0.5",
    }
    result = gateway_jobs(unreachable, "list")
    assert result.returncode == 1, result.stderr
    assert "unavailable" in result.stderr and "Traceback" not in result.stderr
