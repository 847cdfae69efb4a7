"""`run_job`, `follow_job` and `await_job` against real gateways: in-process `GatewayServer`s on
loopback calling one offline Gemini emulator, over the embedded store or a fresh PostgreSQL
schema (`GATEWAY_TEST_DATABASE_URL`, default postgresql://postgres@127.0.0.1:5432/test).

A gateway started with `workers=0` runs no jobs: what it queues stays queued until cancelled.
Needs the gateway package (this repository) installed next to the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from pydantic import SecretStr
from viewbait.ai.v1 import job_pb2, job_service_pb2, operations_pb2
from viewbait_gateway_client import (
    Backoff,
    GatewayClient,
    GatewayError,
    JobCancelledError,
    JobFailedError,
    final_job,
)

from gateway.config import (
    AuthSettings,
    GeminiSettings,
    JobSettings,
    ServerSettings,
    Settings,
    StoreSettings,
)
from gateway.emulator import EmulatorServer
from gateway.server import GatewayServer
from gateway.testing.postgres import free_port, fresh_schema

from .conftest import eventually

SERVICE_TOKEN = "client-jobs-service-token-0123456789"
DATABASE_URL = os.environ.get(
    "GATEWAY_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
QUEUED, RUNNING = job_pb2.JOB_STATUS_QUEUED, job_pb2.JOB_STATUS_RUNNING
SUCCEEDED, FAILED = job_pb2.JOB_STATUS_SUCCEEDED, job_pb2.JOB_STATUS_FAILED
CANCELLED = job_pb2.JOB_STATUS_CANCELLED
#: Where each status sits in a job's life (a job without retries never goes back).
LIFE = {QUEUED: 0, RUNNING: 1, SUCCEEDED: 2, FAILED: 2, CANCELLED: 2}
#: Quick reconnects, so a test spends its time on the gateway, not on waiting.
FAST = Backoff(initial_s=0.02, max_s=0.2)

StartGateway = Callable[..., Awaitable[GatewayServer]]


@pytest.fixture
async def emulator() -> AsyncIterator[EmulatorServer]:
    """The offline Gemini emulator every gateway of a test calls."""
    server = EmulatorServer(host="127.0.0.1", port=0)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def start_gateway(emulator: EmulatorServer, tmp_path: Path) -> AsyncIterator[StartGateway]:
    """`await start_gateway(port=0, workers=4, store=None, listen=True)`: a running gateway
    calling the test's emulator, its blobs in the test's directory when embedded (with a
    database, in PostgreSQL as deployed); stopped after the test."""
    running: list[GatewayServer] = []

    async def start(
        *,
        port: int = 0,
        workers: int = 4,
        store: StoreSettings | None = None,
        listen: bool = True,
    ) -> GatewayServer:
        store = store or StoreSettings()
        if store.database_url is None:
            store = store.model_copy(update={"blob_dir": str(tmp_path)})
        settings = Settings(
            server=ServerSettings(host="127.0.0.1", port=port, shutdown_grace_s=0.5),
            auth=AuthSettings(service_token=SecretStr(SERVICE_TOKEN)),
            gemini=GeminiSettings(
                api_key=SecretStr(emulator.api_key),
                base_url=emulator.base_url,
                backoff_initial_s=0.01,
                backoff_max_s=0.05,
            ),
            store=store,
            jobs=JobSettings(
                workers=workers, poll_interval_s=0.05, retry_initial_s=0.01, retry_max_s=0.05
            ),
        )
        server = GatewayServer(settings, listen=listen)
        running.append(server)
        await server.start()
        return server

    try:
        yield start
    finally:
        for server in reversed(running):
            await server.stop(grace=0)


@pytest.fixture
async def pg_store() -> AsyncIterator[StoreSettings]:
    """Store settings on a fresh PostgreSQL schema (migrated by the first gateway to start),
    dropped after the test."""
    async with fresh_schema(DATABASE_URL, "viewbait_client_test_") as schema:
        yield StoreSettings(
            database_url=SecretStr(DATABASE_URL), schema=schema, migrate_on_start=True
        )


def client_of(port: int) -> GatewayClient:
    """The backend's client, acting for one pro user."""
    return GatewayClient(f"127.0.0.1:{port}", token=SERVICE_TOKEN, user_id="user-jobs", tier="pro")


def record(errors: list[GatewayError]) -> Callable[[GatewayError, float], None]:
    """An `on_retry` hook that keeps each error it hears of."""

    def on_retry(error: GatewayError, delay_s: float) -> None:
        assert delay_s >= 0
        errors.append(error)

    return on_retry


def thumbnails(variations: int = 3) -> job_service_pb2.SubmitJobRequest:
    return job_service_pb2.SubmitJobRequest(
        generate_thumbnail=operations_pb2.GenerateThumbnailRequest(
            prompt="a treehouse at dusk", variations=variations
        )
    )


def analysis(video_id: str = "jobHelper01") -> job_service_pb2.SubmitJobRequest:
    return job_service_pb2.SubmitJobRequest(
        analyze_video=operations_pb2.AnalyzeVideoRequest(video_id=video_id)
    )


def assert_one_life(events: list[job_service_pb2.WatchJobResponse]) -> None:
    """Each event once, in order, with progress never going back, ending at the terminal state."""
    sequences = [event.sequence for event in events]
    assert sequences == sorted(set(sequences)), f"repeated or reordered events: {sequences}"
    stages = [LIFE[event.job.status] for event in events]
    assert stages == sorted(stages), [event.job.status for event in events]
    running = [event.job.progress.fraction for event in events if event.job.status == RUNNING]
    assert running == sorted(running)
    assert [LIFE[event.job.status] for event in events].count(2) == 1
    assert LIFE[events[-1].job.status] == 2


async def get(client: GatewayClient, job_id: str) -> job_pb2.Job:
    return (await client.get_job(job_service_pb2.GetJobRequest(job_id=job_id), timeout_s=10)).job


def test_backoff_draws_under_a_doubling_ceiling_and_honours_the_servers_delay() -> None:
    backoff = Backoff(initial_s=0.1, max_s=1.0)

    for failures, ceiling in [(0, 0.1), (1, 0.2), (2, 0.4), (3, 0.8), (4, 1.0), (60, 1.0)]:
        draws = [backoff.delay(failures) for _ in range(200)]
        assert all(0 <= draw <= ceiling for draw in draws)
        assert max(draws) > ceiling / 2  # jittered over the whole range, not pinned low
    assert backoff.delay(0, retry_after_s=3.0) == 3.0
    with pytest.raises(ValueError):
        Backoff(initial_s=2.0, max_s=1.0)


async def test_run_job_yields_progress_in_order_and_await_job_returns_the_result(
    start_gateway: StartGateway, emulator: EmulatorServer
) -> None:
    # Staggered images: each variation's "ready" is an event of its own.
    emulator.set_knobs(latency_s=0.1, latency_jitter_s=0.6, seed=3)
    gateway = await start_gateway()

    async with client_of(gateway.port) as client:
        events = [event async for event in client.run_job(thumbnails(3), timeout_s=30)]
        analyzed = await client.await_job(analysis(), timeout_s=30)

    assert_one_life(events)
    assert events[0].job.status in (QUEUED, RUNNING)
    progress = [e.job.progress.message for e in events if e.job.status == RUNNING]
    assert "1 of 3 images ready" in progress and "3 of 3 images ready" in progress
    final = events[-1].job
    assert final.status == SUCCEEDED
    assert len(final.generate_thumbnail.thumbnails) == 3
    assert analyzed.status == SUCCEEDED and analyzed.analyze_video.summary


async def test_following_a_finished_job_after_its_terminal_event_ends_at_once(
    start_gateway: StartGateway,
) -> None:
    gateway = await start_gateway()

    async with client_of(gateway.port) as client:
        events = [event async for event in client.run_job(analysis("jobResume01"), timeout_s=30)]
        last = events[-1]

        async def follow(after_sequence: int) -> list[int]:
            followed = client.follow_job(last.job.id, after_sequence=after_sequence, timeout_s=30)
            return [event.sequence async for event in followed]

        # A relay resuming with the id of the last event it passed on (Server-Sent Events'
        # Last-Event-ID) must end, not wait for events that will never come.
        assert await follow(last.sequence) == []
        assert await follow(last.sequence - 1) == [last.sequence]


async def test_a_failed_job_raises_its_error(
    start_gateway: StartGateway, emulator: EmulatorServer
) -> None:
    gateway = await start_gateway()
    emulator.inject("safety", count=1)  # not retryable: the job fails at its first attempt

    async with client_of(gateway.port) as client:
        with pytest.raises(JobFailedError) as caught:
            await client.await_job(analysis(), timeout_s=30)

    error = caught.value
    assert isinstance(error, GatewayError)
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == "SAFETY_BLOCKED"
    assert error.message == error.job.error.message and error.message
    assert error.job.status == FAILED and error.job.attempts == 1
    assert error.error_metadata == {"job_id": error.job.id}


async def test_a_job_cancelled_while_followed_raises_job_cancelled(
    start_gateway: StartGateway,
) -> None:
    gateway = await start_gateway(workers=0)

    async with client_of(gateway.port) as client:
        events = client.run_job(analysis(), timeout_s=30)
        first = await anext(events)
        await client.cancel_job(job_service_pb2.CancelJobRequest(job_id=first.job.id))
        with pytest.raises(JobCancelledError) as caught:
            await final_job(events)

    assert first.job.status == QUEUED
    assert caught.value.code is grpc.StatusCode.CANCELLED
    assert caught.value.job.id == first.job.id and caught.value.job.status == CANCELLED


async def test_leaving_early_cancels_the_job_only_when_asked(
    start_gateway: StartGateway,
) -> None:
    gateway = await start_gateway(workers=0)

    async with client_of(gateway.port) as client:
        # a plain break: the iterator is closed when collected, which cancels the job
        async for event in client.run_job(analysis("abandonBrk1"), cancel_on_abandon=True):
            broken_off = event
            break
        # the consuming task cancelled
        seen: asyncio.Future[job_service_pb2.WatchJobResponse] = asyncio.Future()

        async def consume() -> None:
            async for event in client.run_job(analysis("abandonTsk1"), cancel_on_abandon=True):
                seen.set_result(event)

        task = asyncio.create_task(consume())
        cancelled_task = await seen
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # leaving without the option
        async with contextlib.aclosing(client.run_job(analysis("abandonKep1"))) as events:
            kept = await anext(events)
        kept_job = await get(client, kept.job.id)

        async def cancelled(job_id: str) -> bool:
            return (await get(client, job_id)).status == CANCELLED

        await eventually(lambda: cancelled(broken_off.job.id), "the broken-off job's cancel")
        assert await cancelled(cancelled_task.job.id)  # the task ended after its cancel
    assert kept_job.status == QUEUED


async def test_the_overall_timeout_ends_the_wait_not_the_job(
    start_gateway: StartGateway,
) -> None:
    gateway = await start_gateway(workers=0)

    async with client_of(gateway.port) as client:
        with pytest.raises(GatewayError) as caught:
            await client.await_job(analysis(), timeout_s=0.5)
        job_id = caught.value.error_metadata["job_id"]
        job = await get(client, job_id)

    assert caught.value.code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert job.status == QUEUED


async def test_a_keyed_submit_is_retried_until_the_gateway_answers_and_joins_one_job(
    start_gateway: StartGateway,
) -> None:
    port = free_port()
    retries: list[GatewayError] = []

    async with client_of(port) as client:
        # Without a key a submit that failed is not repeated: it might have queued a job.
        with pytest.raises(GatewayError) as unkeyed:
            await client.await_job(analysis(), timeout_s=10, backoff=FAST, on_retry=record(retries))
        assert unkeyed.value.code is grpc.StatusCode.UNAVAILABLE and not retries

        first = asyncio.create_task(
            client.await_job(
                analysis(),
                idempotency_key="submit-once-1",
                timeout_s=30,
                backoff=FAST,
                on_retry=record(retries),
            )
        )
        await eventually(lambda: len(retries) >= 2, "the submit to be retried")
        await start_gateway(port=port)
        job = await first
        again = await client.await_job(analysis(), idempotency_key="submit-once-1", timeout_s=30)

    assert {error.code for error in retries} == {grpc.StatusCode.UNAVAILABLE}
    assert job.status == SUCCEEDED and job.idempotency_key == "submit-once-1"
    assert again.id == job.id


async def test_a_stream_broken_by_a_gateway_restart_resumes_after_the_last_event(
    start_gateway: StartGateway, emulator: EmulatorServer, pg_store: StoreSettings
) -> None:
    """The job runs on a worker-only replica; the listener the client watches through stops
    once the image is under way, and another starts on its port, over the same PostgreSQL
    store. The image takes 1.5 s, so the stream resumes before the job moves on (then the
    resumed stream must stay silent rather than repeat the last event seen) or, on a slow
    machine, after (then it starts with the newer state)."""
    emulator.set_knobs(latency_s=1.5)
    await start_gateway(workers=4, store=pg_store, listen=False)
    port = free_port()
    listener = await start_gateway(port=port, workers=0, store=pg_store)
    retries: list[GatewayError] = []
    events: list[job_service_pb2.WatchJobResponse] = []
    restarted_after = 0

    async with client_of(port) as client:
        async for event in client.run_job(
            thumbnails(1), timeout_s=30, backoff=FAST, on_retry=record(retries)
        ):
            events.append(event)
            if not restarted_after and event.job.progress.message == "generating image 1 of 1":
                restarted_after = event.sequence
                await listener.stop(grace=0)
                await start_gateway(port=port, workers=0, store=pg_store)
        # A fresh stream over the finished job: its one event is the terminal one.
        replay = [event async for event in client.follow_job(events[-1].job.id)]

    assert restarted_after, "the job was seen running before the restart"
    assert retries and retries[0].code is grpc.StatusCode.UNAVAILABLE
    assert_one_life(events)
    resumed = [event for event in events if event.sequence > restarted_after]
    assert any(event.job.progress.fraction > 0 for event in resumed)
    assert resumed[-1].job.status == SUCCEEDED
    assert len(resumed[-1].job.generate_thumbnail.thumbnails) == 1
    assert [event.sequence for event in replay] == [events[-1].sequence]
