"""JobService and the job workers end to end: real `GatewayServer`s on 127.0.0.1:0 with their
worker pools, real channels, the emulator behind the real Gemini adapter, and each store (the
embedded one and PostgreSQL on a fresh schema).

A gateway started with `workers=0` runs no jobs, so a submitted job stays queued for as long as
a test needs it to (cancel, watch, list); another gateway on the same database runs it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio
from viewbait.ai.v1 import (
    common_pb2,
    job_pb2,
    job_service_pb2,
    job_service_pb2_grpc,
    operations_pb2,
)

from gateway import backoff
from gateway.config import (
    ExecutionSettings,
    GeminiSettings,
    JobSettings,
    RateLimit,
    RouteLimits,
    Settings,
    StoreSettings,
    Tier,
)
from gateway.emulator import EmulatorServer
from gateway.errors import RateLimited
from tests.fixtures.gateways import as_user, encode_png, eventually, gateway_settings
from tests.fixtures.stores import store_settings

TIMEOUT_S = 30
QUEUED, RUNNING = job_pb2.JOB_STATUS_QUEUED, job_pb2.JOB_STATUS_RUNNING
SUCCEEDED, CANCELLED = job_pb2.JOB_STATUS_SUCCEEDED, job_pb2.JOB_STATUS_CANCELLED
TERMINAL = {SUCCEEDED, job_pb2.JOB_STATUS_FAILED, CANCELLED}


def video(video_id: str = "dQw4w9WgXcQ") -> job_service_pb2.SubmitJobRequest:
    return job_service_pb2.SubmitJobRequest(
        analyze_video=operations_pb2.AnalyzeVideoRequest(video_id=video_id, title="A treehouse")
    )


def heatmap() -> job_service_pb2.SubmitJobRequest:
    image = common_pb2.Image(data=encode_png((320, 180), (10, 200, 30)))
    return job_service_pb2.SubmitJobRequest(
        compute_attention_heatmap=operations_pb2.ComputeAttentionHeatmapRequest(image=image)
    )


class Jobs:
    """A JobService client for one gateway."""

    def __init__(self, running: Any) -> None:
        self.running = running
        self.stub = job_service_pb2_grpc.JobServiceStub(running.channel)

    async def submit(
        self, request: job_service_pb2.SubmitJobRequest, user: str = "user-a", key: str = ""
    ) -> job_service_pb2.SubmitJobResponse:
        request.idempotency_key = key
        answer: job_service_pb2.SubmitJobResponse = await self.stub.SubmitJob(
            request, metadata=as_user(user), timeout=TIMEOUT_S
        )
        return answer

    async def get(self, job_id: str, user: str = "user-a") -> job_pb2.Job:
        answer = await self.stub.GetJob(
            job_service_pb2.GetJobRequest(job_id=job_id), metadata=as_user(user), timeout=TIMEOUT_S
        )
        return answer.job

    async def cancel(self, job_id: str, user: str = "user-a") -> job_pb2.Job:
        answer = await self.stub.CancelJob(
            job_service_pb2.CancelJobRequest(job_id=job_id),
            metadata=as_user(user),
            timeout=TIMEOUT_S,
        )
        return answer.job

    def watch(
        self, job_id: str, after: int = 0, user: str = "user-a"
    ) -> aio.UnaryStreamCall[Any, Any]:
        return self.stub.WatchJob(
            job_service_pb2.WatchJobRequest(job_id=job_id, after_sequence=after),
            metadata=as_user(user),
            timeout=TIMEOUT_S,
        )

    async def watch_to_end(self, job_id: str, after: int = 0, user: str = "user-a") -> list[Any]:
        return [event async for event in self.watch(job_id, after, user)]

    async def list(self, user: str = "user-a", **fields: Any) -> job_service_pb2.ListJobsResponse:
        answer: job_service_pb2.ListJobsResponse = await self.stub.ListJobs(
            job_service_pb2.ListJobsRequest(**fields), metadata=as_user(user), timeout=TIMEOUT_S
        )
        return answer


def settings(
    emulator: EmulatorServer,
    tmp_path: Path,
    store: StoreSettings | None = None,
    *,
    workers: int = 4,
    gemini_attempts: int = 4,
    jobs: JobSettings | None = None,
    **sections: Any,
) -> Settings:
    base = gateway_settings(
        emulator,
        tmp_path,
        store=store,
        jobs=jobs
        or JobSettings(
            workers=workers, poll_interval_s=0.05, retry_initial_s=0.01, retry_max_s=0.05
        ),
        **sections,
    )
    gemini: GeminiSettings = base.gemini.model_copy(update={"max_attempts": gemini_attempts})
    return base.model_copy(update={"gemini": gemini})


async def status_code(call: Any) -> grpc.StatusCode:
    with pytest.raises(aio.AioRpcError) as failure:
        await call
    code: grpc.StatusCode = failure.value.code()
    return code


async def test_a_submitted_job_runs_on_a_worker_and_get_job_shows_the_result(
    start_gateway: Any, emulator: EmulatorServer, tmp_path: Path, store_for: Any
) -> None:
    jobs = Jobs(await start_gateway(settings(emulator, tmp_path, store_for)))

    submitted = await jobs.submit(video())
    events = await jobs.watch_to_end(submitted.job.id)
    job = await jobs.get(submitted.job.id)

    assert submitted.job.status == QUEUED and not submitted.existing
    assert submitted.job.operation == common_pb2.OPERATION_ANALYZE_VIDEO
    assert [e.job.status for e in events][-1] == SUCCEEDED
    assert [e.sequence for e in events] == sorted({e.sequence for e in events})
    assert events[-1].job.analyze_video.summary  # the terminal event carries the result
    assert job.status == SUCCEEDED and job.attempts == 1
    assert job.analyze_video == events[-1].job.analyze_video
    assert job.metadata.model and job.HasField("end_time") and job.HasField("start_time")
    assert emulator.stats().requests == 1
    # The result was cached like a unary answer: the same request answers from the cache.
    unary = await jobs.running.stub.AnalyzeVideo(
        video().analyze_video, metadata=as_user("user-a"), timeout=TIMEOUT_S
    )
    assert unary.metadata.cached and unary.result == job.analyze_video


async def test_users_submitting_one_global_request_share_one_execution(
    start_gateway: Any, emulator: EmulatorServer, tmp_path: Path, store_for: Any
) -> None:
    # With PostgreSQL, the submitting replica runs no jobs: another replica's workers do (the
    # replicas keep blobs in PostgreSQL, each by its own settings, as deployed replicas do).
    shared_db = store_for is not None
    gateway = await start_gateway(
        settings(emulator, tmp_path, store_for, workers=0 if shared_db else 4)
    )
    jobs = runner = Jobs(gateway)
    users = ("user-a", "user-b")
    handles = [await jobs.submit(heatmap(), user=user) for user in users]
    if shared_db:
        runner = Jobs(await start_gateway(settings(emulator, tmp_path, store_for)))

    finals = [
        (await jobs.watch_to_end(h.job.id, user=user))[-1].job
        for h, user in zip(handles, users, strict=True)
    ]

    assert handles[0].job.id != handles[1].job.id
    assert [f.status for f in finals] == [SUCCEEDED, SUCCEEDED]
    assert finals[0].compute_attention_heatmap == finals[1].compute_attention_heatmap
    assert emulator.stats().requests == 1
    assert runner.running.server.workers.started >= 1


async def test_an_idempotency_key_returns_the_first_job(
    start_gateway: Any, emulator: EmulatorServer, tmp_path: Path
) -> None:
    jobs = Jobs(await start_gateway(settings(emulator, tmp_path, workers=0)))

    first = await jobs.submit(video(), key="order-1")
    again = await jobs.submit(video(), key="order-1")
    other_user = await jobs.submit(video(), user="user-b", key="order-1")
    reused = jobs.submit(video("aaaaaaaaaaa"), key="order-1")
    thumbnail = job_service_pb2.SubmitJobRequest(
        generate_thumbnail=operations_pb2.GenerateThumbnailRequest(
            prompt="a treehouse", idempotency_key="inner"
        )
    )

    assert again.job.id == first.job.id and again.existing and not first.existing
    assert again.job.idempotency_key == "order-1"
    assert other_user.job.id != first.job.id  # keys are per user
    assert await status_code(reused) is grpc.StatusCode.ALREADY_EXISTS
    assert await status_code(jobs.submit(thumbnail, key="outer")) is (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    assert (await jobs.submit(thumbnail)).job.idempotency_key == "inner"


async def test_submit_applies_the_tier_rules(
    start_gateway: Any, emulator: EmulatorServer, tmp_path: Path
) -> None:
    jobs = Jobs(await start_gateway(settings(emulator, tmp_path, workers=0)))

    denied = jobs.stub.SubmitJob(video(), metadata=as_user("user-a", Tier.FREE), timeout=TIMEOUT_S)

    assert await status_code(denied) is grpc.StatusCode.PERMISSION_DENIED


async def test_another_users_job_is_not_found(
    start_gateway: Any, emulator: EmulatorServer, tmp_path: Path, store_for: Any
) -> None:
    jobs = Jobs(await start_gateway(settings(emulator, tmp_path, store_for, workers=0)))
    job_id = (await jobs.submit(video())).job.id

    assert await status_code(jobs.get(job_id, "user-b")) is grpc.StatusCode.NOT_FOUND
    assert await status_code(jobs.cancel(job_id, "user-b")) is grpc.StatusCode.NOT_FOUND
    assert await status_code(jobs.watch_to_end(job_id, user="user-b")) is grpc.StatusCode.NOT_FOUND
    assert (await jobs.list("user-b")).jobs == []
    assert (await jobs.get(job_id)).status == QUEUED


async def test_a_queued_job_is_cancelled_at_once_and_never_runs(
    start_gateway: Any, emulator: EmulatorServer, tmp_path: Path, store_for: Any
) -> None:
    jobs = Jobs(await start_gateway(settings(emulator, tmp_path, store_for, workers=0)))
    job_id = (await jobs.submit(video())).job.id

    cancelled = await jobs.cancel(job_id)
    again = await jobs.cancel(job_id)

    assert cancelled.status == CANCELLED and cancelled.HasField("end_time")
    assert again == cancelled  # cancelling a finished job changes nothing
    assert (await jobs.get(job_id)).status == CANCELLED
    if store_for is not None:
        # A replica with workers runs a later job (claims go oldest first), never this one.
        runner = Jobs(await start_gateway(settings(emulator, tmp_path, store_for)))
        follow_up = await runner.submit(video("aaaaaaaaaaa"))
        assert (await runner.watch_to_end(follow_up.job.id))[-1].job.status == SUCCEEDED
        assert emulator.stats().requests == 1
    assert (await jobs.get(job_id)).status == CANCELLED


async def test_watch_starts_with_the_current_state_and_resumes_after_a_sequence(
    start_gateway: Any, emulator: EmulatorServer, tmp_path: Path, store_for: Any
) -> None:
    jobs = Jobs(await start_gateway(settings(emulator, tmp_path, store_for, workers=0)))
    job_id = (await jobs.submit(video())).job.id

    stream = aiter(jobs.watch(job_id))
    first = await anext(stream)
    await jobs.cancel(job_id)
    rest = [event async for event in stream]
    resumed = await jobs.watch_to_end(job_id, after=first.sequence)
    caught_up = await jobs.watch_to_end(job_id, after=rest[-1].sequence)

    assert first.job.status == QUEUED
    assert [e.job.status for e in rest] == [CANCELLED]
    assert rest[-1].sequence > first.sequence
    assert resumed == rest
    assert caught_up == []


async def test_list_jobs_filters_and_pages_newest_first(
    start_gateway: Any, emulator: EmulatorServer, tmp_path: Path, store_for: Any
) -> None:
    jobs = Jobs(await start_gateway(settings(emulator, tmp_path, store_for, workers=0)))
    ids = [(await jobs.submit(video(f"video{i:06d}"))).job.id for i in range(5)]
    ids.append((await jobs.submit(heatmap())).job.id)
    await jobs.cancel(ids[1])
    await jobs.submit(video(), user="user-b")

    pages: list[list[str]] = []
    token = ""
    while True:
        page = await jobs.list(page_size=2, page_token=token)
        pages.append([j.id for j in page.jobs])
        token = page.next_page_token
        if not token:
            break
    cancelled = await jobs.list(statuses=[CANCELLED])
    heatmaps = await jobs.list(operations=[common_pb2.OPERATION_COMPUTE_ATTENTION_HEATMAP])
    queued_videos = await jobs.list(
        statuses=[QUEUED], operations=[common_pb2.OPERATION_ANALYZE_VIDEO]
    )

    assert pages == [ids[5:3:-1], ids[3:1:-1], ids[1::-1]]
    assert [j.id for j in cancelled.jobs] == [ids[1]]
    assert [j.id for j in heatmaps.jobs] == [ids[5]]
    assert [j.id for j in queued_videos.jobs] == [ids[4], ids[3], ids[2], ids[0]]
    for bad in (
        {"page_token": "not-a-token"},
        # Well-formed tokens of the right shape that this service never gave out: a cursor whose
        # job id is no UUID, one whose time has no zone, one that is not a pair.
        {"page_token": forged_page_token(["2026-01-01T00:00:00+00:00", "not-a-job-id"])},
        {"page_token": forged_page_token(["2026-01-01T00:00:00", str(uuid.uuid4())])},
        {"page_token": forged_page_token({"created": 1})},
        {"page_size": 101},
        {"statuses": [job_pb2.JOB_STATUS_UNSPECIFIED]},
    ):
        assert await status_code(jobs.list(**bad)) is grpc.StatusCode.INVALID_ARGUMENT


def forged_page_token(value: object) -> str:
    """A page token spelled the way the service spells its own, around `value`."""
    text = json.dumps(value, separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


class _JitterAtCeiling:
    """In place of `random` in `gateway.backoff`: every jittered delay drawn at its ceiling."""

    @staticmethod
    def uniform(low: float, high: float) -> float:
        return high


async def test_an_upstream_503_is_retried_with_backoff(
    start_gateway: Any,
    emulator: EmulatorServer,
    tmp_path: Path,
    store_for: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The retry waits its whole first backoff (1 s, the jitter drawn at its ceiling), so the
    # watch reads the job queued again with its error however busy the machine is (a draw near
    # 0 s could have the job claimed again before the watch reads it).
    monkeypatch.setattr(backoff, "random", _JitterAtCeiling())
    retrying = JobSettings(workers=4, poll_interval_s=0.05, retry_initial_s=1.0, retry_max_s=1.0)
    # One adapter attempt per job attempt, so the injected 503 fails the first job attempt.
    jobs = Jobs(
        await start_gateway(
            settings(emulator, tmp_path, store_for, gemini_attempts=1, jobs=retrying)
        )
    )
    emulator.inject("unavailable", count=1)

    submitted = await jobs.submit(video())
    events = await jobs.watch_to_end(submitted.job.id)
    job = await jobs.get(submitted.job.id)

    assert job.status == SUCCEEDED and job.attempts == 2
    assert job.analyze_video.summary
    assert emulator.stats().requests == 2
    # The stream saw the failed attempt queued again with its error, then the retry.
    retried = [e.job for e in events if e.job.status == QUEUED and e.job.HasField("error")]
    assert retried and retried[0].error.reason == "UPSTREAM_UNAVAILABLE"
    assert retried[0].error.code == grpc.StatusCode.UNAVAILABLE.value[0]


async def test_a_non_retryable_failure_fails_the_job_at_once(
    start_gateway: Any, emulator: EmulatorServer, tmp_path: Path
) -> None:
    jobs = Jobs(await start_gateway(settings(emulator, tmp_path)))
    emulator.inject("safety", count=1)

    submitted = await jobs.submit(video())
    final = (await jobs.watch_to_end(submitted.job.id))[-1].job

    assert final.status == job_pb2.JOB_STATUS_FAILED and final.attempts == 1
    assert final.error.reason == "SAFETY_BLOCKED" and final.error.message
    assert emulator.stats().requests == 1


async def test_a_running_job_is_cancelled_and_its_worker_stops(
    start_gateway: Any, emulator: EmulatorServer, tmp_path: Path, store_for: Any
) -> None:
    # A short lease: the worker heartbeats every 0.1 s and learns of the cancel then.
    gateway = await start_gateway(
        settings(emulator, tmp_path, store_for, execution=ExecutionSettings(lease_s=0.3))
    )
    jobs = Jobs(gateway)
    emulator.set_knobs(latency_s=20.0)
    job_id = (await jobs.submit(video())).job.id
    async for event in jobs.watch(job_id):
        if event.job.status == RUNNING:
            break

    cancelled = await jobs.cancel(job_id)
    await eventually(lambda: gateway.server.workers.busy == 0, "the worker to stop")

    assert cancelled.status == CANCELLED
    final = await jobs.get(job_id)
    assert final.status == CANCELLED and final.attempts == 1  # never retried


async def test_an_upstream_rate_limit_denial_delays_the_job_without_failing_it(
    start_gateway: Any, emulator: EmulatorServer, tmp_path: Path, store_for: Any
) -> None:
    policies = dict(Settings().policies)
    one_call = RouteLimits(upstream=RateLimit(rate=1, period_s=3600, burst=1))
    policies["analyze_video"] = policies["analyze_video"].model_copy(
        update={"limits": {Tier.PRO: one_call}}
    )
    jobs = Jobs(await start_gateway(settings(emulator, tmp_path, store_for, policies=policies)))

    first = await jobs.submit(video())
    assert (await jobs.watch_to_end(first.job.id))[-1].job.status == SUCCEEDED
    second = await jobs.submit(video("aaaaaaaaaaa"))
    async for event in jobs.watch(second.job.id):
        if event.job.status == QUEUED and event.job.HasField("error"):
            delayed = event.job
            break

    assert delayed.error.reason == "RATE_LIMITED"
    assert delayed.attempts == 0 and delayed.max_attempts > 0
    assert delayed.run_after_time.ToDatetime() > delayed.create_time.ToDatetime()
    assert emulator.stats().requests == 1


async def test_watchers_see_the_progress_of_a_thumbnail_job(
    start_gateway: Any, emulator: EmulatorServer, tmp_path: Path, store_for: Any
) -> None:
    jobs = Jobs(await start_gateway(settings(emulator, tmp_path, store_for)))
    request = job_service_pb2.SubmitJobRequest(
        generate_thumbnail=operations_pb2.GenerateThumbnailRequest(
            prompt="a treehouse at dusk", variations=2
        )
    )

    events = await jobs.watch_to_end((await jobs.submit(request)).job.id)

    # A watcher sees the latest state at each wake-up, so steps may merge; their order holds.
    running = [e.job.progress.fraction for e in events if e.job.status == RUNNING]
    assert running == sorted(running)
    final = events[-1].job
    assert final.status == SUCCEEDED and len(final.generate_thumbnail.thumbnails) == 2
    assert (final.progress.fraction, final.progress.message) == (1.0, "2 of 2 images ready")


async def test_a_replica_stopping_mid_job_hands_it_to_another(
    start_gateway: Any, emulator: EmulatorServer, tmp_path: Path, pg_schema: str
) -> None:
    store = store_settings(pg_schema, migrate_on_start=True)
    first = await start_gateway(settings(emulator, tmp_path, store))
    jobs = Jobs(first)
    emulator.set_knobs(latency_s=20.0)
    job_id = (await jobs.submit(video())).job.id
    async for event in jobs.watch(job_id):
        if event.job.status == RUNNING:
            break
    # Stop it mid-call: an attempt whose work started counts (one stopped between its claim
    # and its work is handed back uncounted).
    await eventually(lambda: emulator.stats().count() >= 1, "the upstream call under way")

    await first.server.stop(grace=0.1)
    emulator.set_knobs(latency_s=0.0)
    other = Jobs(await start_gateway(settings(emulator, tmp_path, store)))
    events = await other.watch_to_end(job_id)

    final = events[-1].job
    assert final.status == SUCCEEDED and final.attempts == 2
    assert final.analyze_video.summary


async def test_a_job_submitted_on_one_replica_wakes_the_workers_of_another(
    start_gateway: Any, emulator: EmulatorServer, tmp_path: Path, pg_schema: str
) -> None:
    store = store_settings(pg_schema, migrate_on_start=True)
    # The workers' replica polls only every minute, longer than the watch below waits: only the
    # store's due notification can make it claim the job in time.
    slow_poll = JobSettings(workers=4, poll_interval_s=60)
    worker_replica = await start_gateway(settings(emulator, tmp_path, store, jobs=slow_poll))
    pool, replica_store = worker_replica.server.workers, worker_replica.server.store
    await eventually(
        lambda: replica_store.listening and pool.idle, "the idle workers' replica listening"
    )
    submitting = Jobs(await start_gateway(settings(emulator, tmp_path, store, workers=0)))

    job_id = (await submitting.submit(video())).job.id
    events = await submitting.watch_to_end(job_id)

    assert events[-1].job.status == SUCCEEDED
    assert pool.started == 1


async def test_a_draining_replica_ends_its_watch_streams_at_once(
    start_gateway: Any, emulator: EmulatorServer, tmp_path: Path
) -> None:
    # No workers: the job stays queued, so only the drain can end its watch stream.
    running = await start_gateway(settings(emulator, tmp_path, workers=0))
    jobs = Jobs(running)
    job_id = (await jobs.submit(video())).job.id
    stream = jobs.watch(job_id)
    first = await stream.read()
    assert first.job.status == QUEUED

    # A grace far longer than the bound below: the stream must not hold the drain.
    stopping = asyncio.ensure_future(running.server.stop(grace=120))
    with pytest.raises(aio.AioRpcError) as ended:
        async with asyncio.timeout(30):
            await stream.read()

    assert ended.value.code() is grpc.StatusCode.UNAVAILABLE
    assert f"after sequence {first.sequence}" in (ended.value.details() or "")
    async with asyncio.timeout(30):
        await stopping


async def test_a_shared_execution_is_charged_to_the_user_who_started_it(
    start_gateway: Any, emulator: EmulatorServer, tmp_path: Path, store_for: Any
) -> None:
    # One heatmap call per minute per user: whoever pays for the shared execution has none left.
    policies = Settings().policies
    heatmap_policy = policies["compute_attention_heatmap"]
    one_call = RouteLimits(upstream=RateLimit(rate=1, period_s=60, burst=1))
    policies["compute_attention_heatmap"] = heatmap_policy.model_copy(
        update={"limits": {tier: one_call for tier in Tier}}
    )
    gateway = await start_gateway(settings(emulator, tmp_path, store_for, policies=policies))
    jobs = Jobs(gateway)
    started = await jobs.submit(heatmap(), user="user-a")
    joined = await jobs.submit(heatmap(), user="user-b")
    finals = [
        (await jobs.watch_to_end(started.job.id, user="user-a"))[-1].job,
        (await jobs.watch_to_end(joined.job.id, user="user-b"))[-1].job,
    ]
    assert [f.status for f in finals] == [SUCCEEDED, SUCCEEDED]
    assert emulator.stats().requests == 1

    limiter = gateway.server.limiter
    model = Settings().gemini.text_model
    # The starter paid for the one upstream call; the user who joined paid nothing.
    with pytest.raises(RateLimited):
        await limiter.check_upstream("compute_attention_heatmap", "user-a", Tier.PRO, model)
    await limiter.check_upstream("compute_attention_heatmap", "user-b", Tier.PRO, model)
    await limiter.check_upstream("compute_attention_heatmap", "shared", Tier.PRO, model)
