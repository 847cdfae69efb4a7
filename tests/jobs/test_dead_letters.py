"""Dead letters over gRPC: a failed job's error history (GetJob), ListJobs by status and error
reason, and RetryJob (owner or service token, idempotent, watchers see the job come back),
against real in-process gateways with their worker pools and the emulator.

Subprocess gateways and the operators' command line: tests/jobs/test_jobs_cli.py.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from grpc import aio
from pydantic import SecretStr
from viewbait.ai.v1 import job_pb2, job_service_pb2

from gateway.config import AuthSettings, ExecutionSettings, Settings, StoreSettings
from gateway.emulator import EmulatorServer
from tests.fixtures.gateways import SERVICE_TOKEN, as_user
from tests.fixtures.stores import store_settings

from .test_jobs import CANCELLED, QUEUED, SUCCEEDED, TIMEOUT_S, Jobs, settings, status_code, video

FAILED = job_pb2.JOB_STATUS_FAILED
UNAVAILABLE = "UPSTREAM_UNAVAILABLE"
JWT_SECRET = "dead-letter-tests-jwt-secret-0123456789abcdef"


def two_attempts(
    emulator: EmulatorServer, tmp_path: Path, store: StoreSettings | None, **kw: Any
) -> Settings:
    """Gateway settings where a job has two attempts of one upstream call each, and users may
    also call with HS256 JWTs."""
    base = settings(
        emulator,
        tmp_path,
        store,
        gemini_attempts=1,
        execution=ExecutionSettings(max_attempts=2),
        **kw,
    )
    auth = AuthSettings(service_token=SecretStr(SERVICE_TOKEN), jwt_secret=SecretStr(JWT_SECRET))
    return base.model_copy(update={"auth": auth})


def as_jwt_user(user: str) -> tuple[tuple[str, str], ...]:
    """Metadata of `user` calling with her own token (not the trusted backend's)."""
    now = int(time.time())
    claims = {"sub": user, "aud": "authenticated", "iat": now, "exp": now + 600}
    return (("authorization", f"Bearer {jwt.encode(claims, JWT_SECRET, algorithm='HS256')}"),)


async def retry(
    jobs: Jobs, job_id: str, metadata: tuple[tuple[str, str], ...]
) -> job_service_pb2.RetryJobResponse:
    answer: job_service_pb2.RetryJobResponse = await jobs.stub.RetryJob(
        job_service_pb2.RetryJobRequest(job_id=job_id), metadata=metadata, timeout=TIMEOUT_S
    )
    return answer


async def failed_job(
    jobs: Jobs, emulator: EmulatorServer, video_id: str
) -> job_service_pb2.WatchJobResponse:
    """The last event of a job of user-a that failed both its attempts with an upstream 503."""
    emulator.inject("unavailable", count=2)
    job_id = (await jobs.submit(video(video_id))).job.id
    events = await jobs.watch_to_end(job_id)
    assert events[-1].job.status == FAILED
    return events[-1]


async def test_a_dead_letter_keeps_its_history_is_listed_by_reason_and_comes_back(
    # The schema first: fixtures end in reverse order, so it is dropped after the gateways.
    pg_schema: str,
    start_gateway: Any,
    emulator: EmulatorServer,
    tmp_path: Path,
) -> None:
    store = store_settings(pg_schema, migrate_on_start=True)
    # The front runs no jobs; the worker gateway does, while it runs.
    front = Jobs(await start_gateway(two_attempts(emulator, tmp_path / "front", store, workers=0)))
    worker = await start_gateway(two_attempts(emulator, tmp_path / "worker", store))
    last = await failed_job(front, emulator, "deadletter1")
    dead = last.job
    await worker.server.stop(grace=0.5)

    history = list(dead.error_history)
    got = await front.get(dead.id)
    by_reason = await front.list(statuses=[FAILED], error_reasons=[UNAVAILABLE])
    other_reason = await front.list(error_reasons=["SAFETY_BLOCKED"])
    retried = await retry(front, dead.id, as_jwt_user("user-a"))
    # A watcher resuming after the failure's event sees the job back (no worker runs now).
    resumed = aiter(front.watch(dead.id, after=last.sequence))
    back = await anext(resumed)
    again = await retry(front, dead.id, as_jwt_user("user-a"))
    await start_gateway(two_attempts(emulator, tmp_path / "worker-2", store))
    rest = [event async for event in resumed]

    assert [(h.attempt, h.error.reason) for h in history] == [(1, UNAVAILABLE), (2, UNAVAILABLE)]
    assert all(h.worker and h.HasField("time") for h in history)
    assert history[0].time.ToDatetime() <= history[1].time.ToDatetime()
    assert dead.error.reason == UNAVAILABLE
    assert dead.error.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert list(got.error_history) == history
    assert [j.id for j in by_reason.jobs] == [dead.id] and not other_reason.jobs
    assert retried.retried and retried.job.status == QUEUED
    assert (retried.job.attempts, retried.job.max_attempts) == (2, 4)
    assert list(retried.job.error_history) == history  # kept
    assert back.job.status == QUEUED and back.sequence == last.sequence + 1
    assert not again.retried and again.job.status == QUEUED  # idempotent
    assert rest[-1].job.status == SUCCEEDED and rest[-1].job.attempts == 3
    assert rest[-1].job.analyze_video.summary


async def test_retry_job_is_for_the_owner_or_the_service_token(
    start_gateway: Any, emulator: EmulatorServer, tmp_path: Path, store_for: Any
) -> None:
    jobs = Jobs(await start_gateway(two_attempts(emulator, tmp_path, store_for)))
    dead = (await failed_job(jobs, emulator, "deadletter2")).job

    stranger = await status_code(retry(jobs, dead.id, as_jwt_user("user-b")))
    owner = await retry(jobs, dead.id, as_jwt_user("user-a"))
    done = (await jobs.watch_to_end(dead.id))[-1].job
    # The trusted backend may re-drive any user's job, whoever it acts for.
    dead_again = (await failed_job(jobs, emulator, "deadletter3")).job
    backend = await retry(jobs, dead_again.id, as_user("user-b"))

    assert stranger == grpc.StatusCode.NOT_FOUND
    assert owner.retried and done.status == SUCCEEDED
    assert backend.retried and backend.job.id == dead_again.id


async def test_retry_job_answers_finished_work_as_it_is_and_refuses_a_cancel(
    start_gateway: Any, emulator: EmulatorServer, tmp_path: Path, store_for: Any
) -> None:
    jobs = Jobs(await start_gateway(two_attempts(emulator, tmp_path, store_for)))
    done = (await jobs.watch_to_end((await jobs.submit(video("finished001"))).job.id))[-1].job
    emulator.set_knobs(latency_s=30.0)
    cancelled = await jobs.cancel((await jobs.submit(video("cancelled01"))).job.id)

    succeeded = await retry(jobs, done.id, as_jwt_user("user-a"))
    refused = await status_code(retry(jobs, cancelled.id, as_jwt_user("user-a")))
    missing = await status_code(retry(jobs, "", as_jwt_user("user-a")))

    assert not succeeded.retried and succeeded.job.status == SUCCEEDED
    assert succeeded.job.analyze_video == done.analyze_video  # the result, as GetJob answers
    assert cancelled.status == CANCELLED
    assert refused == grpc.StatusCode.FAILED_PRECONDITION
    assert missing == grpc.StatusCode.INVALID_ARGUMENT


async def test_list_jobs_refuses_an_empty_error_reason(
    start_gateway: Any, emulator: EmulatorServer, tmp_path: Path
) -> None:
    jobs = Jobs(await start_gateway(two_attempts(emulator, tmp_path, None)))
    with pytest.raises(aio.AioRpcError) as refused:
        await jobs.list(error_reasons=[""])
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
