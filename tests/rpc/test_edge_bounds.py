"""The bounds at the edge, each hit against a real `python -m gateway serve` process configured
by environment variables, as an operator would:

- authentication is decided from the metadata before grpc reads the request: a request over
  the receive limit without credentials is UNAUTHENTICATED (its message was never read), with
  credentials the receive limit refuses it (RESOURCE_EXHAUSTED);
- the replica-wide cap on RPCs in flight sheds the next one (OVERLOADED) and frees a slot
  when an RPC ends; health checks are neither counted nor shed;
- the per-user caps on RPCs in flight (TOO_MANY_CONCURRENT_RPCS) and on open WatchJob and
  GenerateThumbnail streams (TOO_MANY_STREAMS) refuse that user only;
- GetJob, ListJobs, WatchJob and CancelJob each have a per-user rate limit (RATE_LIMITED,
  limit `read`);
- the pipeline refuses cheapest first: tier, then the sizes the message states, then the
  admission limit, then validation that reads the images.

Every refusal is RESOURCE_EXHAUSTED (or its own code) with ErrorInfo, RetryInfo and the
`retry-after-ms` trailer where documented.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from viewbait.ai.v1 import (
    common_pb2,
    gateway_service_pb2_grpc,
    job_service_pb2,
    job_service_pb2_grpc,
    operations_pb2,
)

from gateway.rpc.status import ERROR_DOMAIN, RETRY_AFTER_KEY
from gateway.server import LOCAL_DEV_SERVICE_TOKEN
from tests.fixtures.gateways import GatewayProcess, encode_png, eventually

from .conftest import RichStatus

VIDEO_ID = "dQw4w9WgXcQ"
#: Emulated answers take this long: an RPC that reaches the model stays in flight.
SLOW_S = "60"


def as_user(user_id: str, tier: str = "pro") -> tuple[tuple[str, str], ...]:
    """Metadata of local mode's trusted backend acting for `user_id`."""
    return (
        ("authorization", f"Bearer {LOCAL_DEV_SERVICE_TOKEN}"),
        ("x-viewbait-user-id", user_id),
        ("x-viewbait-tier", tier),
    )


class Client:
    """Channels to a gateway process and its stubs; `close` ends every call still open."""

    def __init__(self, gateway: GatewayProcess) -> None:
        self.channel = aio.insecure_channel(
            gateway.address, options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]
        )
        self.ops = gateway_service_pb2_grpc.GatewayServiceStub(self.channel)
        self.jobs = job_service_pb2_grpc.JobServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self._open: list[Any] = []

    async def queued_job(self, user: str) -> str:
        """A job of `user` that stays queued (the gateways here run no workers)."""
        submitted = await self.jobs.SubmitJob(
            job_service_pb2.SubmitJobRequest(
                analyze_video=operations_pb2.AnalyzeVideoRequest(video_id=VIDEO_ID)
            ),
            metadata=as_user(user),
        )
        return str(submitted.job.id)

    async def watch(self, user: str, job_id: str) -> Any:
        """Opens a WatchJob stream of `user`'s job and waits for its first event: from then on
        the stream is in flight on the server. Returns the call (`cancel()` ends it)."""
        call = self.jobs.WatchJob(
            job_service_pb2.WatchJobRequest(job_id=job_id), metadata=as_user(user)
        )
        self._open.append(call)
        await call.read()
        return call

    async def generate(self, user: str) -> None:
        """Opens a GenerateThumbnail stream and waits for its first progress event (the
        emulated image takes a minute: the stream stays open)."""
        call = self.ops.GenerateThumbnail(
            operations_pb2.GenerateThumbnailRequest(prompt="A treehouse", variations=1),
            metadata=as_user(user),
        )
        self._open.append(call)
        await call.read()

    def analyze(self, user: str) -> None:
        """Starts an AnalyzeVideo that waits for the slow emulator (see `reached_model`)."""
        call = self.ops.AnalyzeVideo(
            operations_pb2.AnalyzeVideoRequest(video_id=VIDEO_ID), metadata=as_user(user)
        )
        self._open.append(call)

    async def close(self) -> None:
        for call in self._open:
            call.cancel()
        await self.channel.close()


@pytest.fixture
async def connect() -> AsyncIterator[Callable[[GatewayProcess], Client]]:
    """`connect(gateway)`: a `Client`, closed after the test."""
    clients: list[Client] = []

    def make(gateway: GatewayProcess) -> Client:
        clients.append(Client(gateway))
        return clients[-1]

    try:
        yield make
    finally:
        for client in clients:
            await client.close()


@pytest.fixture
def serve(spawn_gateway: Any, tmp_path: Path) -> Iterator[Callable[..., GatewayProcess]]:
    """`serve(**env)`: a gateway process in local mode without workers (jobs stay queued), its
    blobs under the test's directory, slow emulated answers; `env` on top."""

    def start(**env: str) -> GatewayProcess:
        base = {
            "VIEWBAIT_JOBS__WORKERS": "0",
            "VIEWBAIT_STORE__BLOB_DIR": str(tmp_path / "blobs"),
            "VIEWBAIT_EMULATOR__LATENCY_S": SLOW_S,
            "VIEWBAIT_EXECUTION__LONG_POLL_S": SLOW_S,
        }
        return spawn_gateway(**{**base, **env})  # type: ignore[no-any-return]

    yield start


async def failure(call: Any) -> RichStatus:
    """The decoded status of a call that must fail."""
    with pytest.raises(aio.AioRpcError) as caught:
        await call
    return RichStatus.of(caught.value)


def assert_exhausted(status: RichStatus, reason: str, retry_after_ms: int | None) -> None:
    """RESOURCE_EXHAUSTED with ErrorInfo `reason` and, when given, that retry-after in RetryInfo
    and in the `retry-after-ms` trailer."""
    assert status.code is grpc.StatusCode.RESOURCE_EXHAUSTED, status
    assert status.error_info is not None
    assert (status.error_info.reason, status.error_info.domain) == (reason, ERROR_DOMAIN)
    assert status.error_info.metadata["request_id"]
    if retry_after_ms is not None:
        assert status.retry_delay_s == retry_after_ms / 1000
        assert status.trailing[RETRY_AFTER_KEY] == str(retry_after_ms)


def emulator_requests(gateway: GatewayProcess) -> int:
    """Generate requests the gateway's in-process emulator has received."""
    import urllib.request

    assert gateway.emulator_url is not None
    with urllib.request.urlopen(f"{gateway.emulator_url}/_emulator/stats", timeout=10) as answer:
        return int(json.load(answer)["requests"])


async def reached_model(gateway: GatewayProcess, count: int) -> None:
    """Waits until `count` requests reached the emulator: their RPCs are in flight."""
    await eventually(
        lambda: emulator_requests(gateway) >= count, f"{count} requests at the emulator"
    )


# --- authentication at the edge ---------------------------------------------------------------


async def test_a_request_without_credentials_is_refused_before_its_message_is_read(
    serve: Callable[..., GatewayProcess], connect: Callable[[GatewayProcess], Client]
) -> None:
    gateway = serve(VIEWBAIT_SERVER__MAX_RECEIVE_MESSAGE_BYTES=str(1024 * 1024))
    client = connect(gateway)
    oversized = operations_pb2.ComputeAttentionHeatmapRequest(
        image=common_pb2.Image(data=bytes(4 * 1024 * 1024))
    )

    anonymous = await failure(client.ops.ComputeAttentionHeatmap(oversized))
    forged = await failure(
        client.ops.ComputeAttentionHeatmap(
            oversized, metadata=(("authorization", "Bearer not-the-token-at-all"),)
        )
    )
    # With credentials the message is read, and the receive limit refuses it.
    read = await failure(client.ops.ComputeAttentionHeatmap(oversized, metadata=as_user("u1")))

    for refused in (anonymous, forged):
        assert refused.code is grpc.StatusCode.UNAUTHENTICATED, refused
        assert refused.error_info is not None
        assert refused.error_info.reason == "UNAUTHENTICATED"
        assert refused.error_info.metadata["request_id"]
    assert "no credentials" in anonymous.message
    assert read.code is grpc.StatusCode.RESOURCE_EXHAUSTED and read.error_info is None
    # The refusals went through the logging interceptor like any RPC.
    await eventually(
        lambda: (
            [
                r["rpc_code"]
                for r in gateway.log_records()
                if r.get("rpc_method", "").endswith("ComputeAttentionHeatmap")
            ].count("UNAUTHENTICATED")
            == 2
        ),
        "two UNAUTHENTICATED log lines",
    )


# --- caps on RPCs in flight -------------------------------------------------------------------


async def test_a_replica_at_its_cap_sheds_new_rpcs_and_takes_them_again_once_one_ends(
    serve: Callable[..., GatewayProcess], connect: Callable[[GatewayProcess], Client]
) -> None:
    gateway = serve(
        VIEWBAIT_CONCURRENCY__MAX_RPCS_IN_FLIGHT="3",
        VIEWBAIT_CONCURRENCY__RETRY_AFTER_S="1.5",
    )
    client = connect(gateway)
    first = await client.queued_job("u1")
    second = await client.queued_job("u2")
    watch = await client.watch("u1", first)
    await client.watch("u2", second)
    client.analyze("u3")  # a unary RPC held in flight
    await reached_model(gateway, 1)

    shed = await failure(
        client.jobs.ListJobs(job_service_pb2.ListJobsRequest(), metadata=as_user("u4"))
    )
    assert_exhausted(shed, "OVERLOADED", 1500)
    assert shed.error_info is not None and shed.error_info.metadata["max_in_flight"] == "3"
    # Health checks are neither counted nor shed.
    health = await client.health.Check(health_pb2.HealthCheckRequest())
    assert health.status == health_pb2.HealthCheckResponse.SERVING

    watch.cancel()  # the first watch ends: its slot is free again
    for _ in range(200):
        try:
            await client.jobs.ListJobs(job_service_pb2.ListJobsRequest(), metadata=as_user("u4"))
            break
        except aio.AioRpcError as error:
            assert_exhausted(RichStatus.of(error), "OVERLOADED", 1500)
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the slot of the cancelled watch was never given back")


async def test_a_user_at_the_rpc_cap_is_refused_and_other_users_are_not(
    serve: Callable[..., GatewayProcess], connect: Callable[[GatewayProcess], Client]
) -> None:
    gateway = serve(VIEWBAIT_CONCURRENCY__USER_RPCS=json.dumps({"pro": 2, "free": 1}))
    client = connect(gateway)
    job = await client.queued_job("u1")
    await client.watch("u1", job)
    client.analyze("u1")
    await reached_model(gateway, 1)

    refused = await failure(
        client.jobs.GetJob(job_service_pb2.GetJobRequest(job_id=job), metadata=as_user("u1"))
    )
    assert_exhausted(refused, "TOO_MANY_CONCURRENT_RPCS", 1000)
    assert refused.error_info is not None and refused.error_info.metadata["max_in_flight"] == "2"
    assert "pro tier" in refused.message
    # Another user (another tier's cap) is unaffected.
    other = await client.jobs.ListJobs(
        job_service_pb2.ListJobsRequest(), metadata=as_user("u2", "free")
    )
    assert list(other.jobs) == []


async def test_a_user_at_the_stream_cap_is_refused_streams_and_not_unary_calls(
    serve: Callable[..., GatewayProcess], connect: Callable[[GatewayProcess], Client]
) -> None:
    gateway = serve(VIEWBAIT_CONCURRENCY__USER_STREAMS=json.dumps({"pro": 2}))
    client = connect(gateway)
    job = await client.queued_job("u1")
    await client.generate("u1")
    await client.watch("u1", job)

    watch = client.jobs.WatchJob(
        job_service_pb2.WatchJobRequest(job_id=job), metadata=as_user("u1")
    )
    refused = await failure(watch.read())
    assert_exhausted(refused, "TOO_MANY_STREAMS", 1000)
    generate = client.ops.GenerateThumbnail(
        operations_pb2.GenerateThumbnailRequest(prompt="Another one", variations=1),
        metadata=as_user("u1"),
    )
    assert_exhausted(await failure(generate.read()), "TOO_MANY_STREAMS", 1000)
    # Unary calls are not streams; another user's streams are not this user's.
    assert (
        await client.jobs.GetJob(job_service_pb2.GetJobRequest(job_id=job), metadata=as_user("u1"))
    ).job.id == job
    await client.watch("u2", await client.queued_job("u2"))


# --- read limits ------------------------------------------------------------------------------


async def test_every_read_rpc_has_a_per_user_rate_limit(
    serve: Callable[..., GatewayProcess], connect: Callable[[GatewayProcess], Client]
) -> None:
    hourly = {"rate": 1, "period_s": 3600, "burst": 2}
    gateway = serve(
        VIEWBAIT_READ_LIMITS=json.dumps(
            {
                "pro": {
                    "get_job": hourly,
                    "list_jobs": hourly,
                    "watch_job": hourly,
                    "cancel_job": hourly,
                }
            }
        )
    )
    client = connect(gateway)
    job = await client.queued_job("u1")
    reads: dict[str, Callable[[str], Any]] = {
        "GetJob": lambda user: client.jobs.GetJob(
            job_service_pb2.GetJobRequest(job_id=job), metadata=as_user(user)
        ),
        "ListJobs": lambda user: client.jobs.ListJobs(
            job_service_pb2.ListJobsRequest(), metadata=as_user(user)
        ),
        "WatchJob": lambda user: client.jobs.WatchJob(
            job_service_pb2.WatchJobRequest(job_id=job), metadata=as_user(user)
        ).read(),
        "CancelJob": lambda user: client.jobs.CancelJob(
            job_service_pb2.CancelJobRequest(job_id=job), metadata=as_user(user)
        ),
    }
    for name, read in reads.items():
        for _ in range(2):
            await read("u1")
        refused = await failure(read("u1"))
        assert_exhausted(refused, "RATE_LIMITED", None)
        assert refused.error_info is not None and refused.error_info.metadata["limit"] == "read"
        assert f"{name} limit of the pro tier: 1 per 3600 s (burst 2)" in refused.message
        assert refused.retry_delay_s is not None and refused.retry_delay_s > 1000
        # Each user has a limit of her own (another user's job is NOT_FOUND, not refused).
        with contextlib.suppress(aio.AioRpcError):
            await read("u2")


# --- the order of the pipeline ----------------------------------------------------------------


async def test_the_cheapest_checks_refuse_first(
    serve: Callable[..., GatewayProcess], connect: Callable[[GatewayProcess], Client]
) -> None:
    limits = {"pro": {"admission": {"rate": 1, "period_s": 3600, "burst": 1}}}
    gateway = serve(
        VIEWBAIT_POLICIES=json.dumps({"compute_attention_heatmap": {"limits": limits}}),
        VIEWBAIT_BOUNDS__MAX_IMAGE_BYTES="65536",
        VIEWBAIT_EMULATOR__LATENCY_S="0",
    )
    client = connect(gateway)
    heatmap = client.ops.ComputeAttentionHeatmap

    def request(data: bytes) -> operations_pb2.ComputeAttentionHeatmapRequest:
        return operations_pb2.ComputeAttentionHeatmapRequest(image=common_pb2.Image(data=data))

    too_large = request(bytes(65537))
    not_an_image = request(b"not an image at all")
    # The tier comes first: a free caller is refused whatever the request.
    tier = await failure(heatmap(too_large, metadata=as_user("u1", "free")))
    assert tier.code is grpc.StatusCode.PERMISSION_DENIED
    # Then the sizes the message states, before admission: this costs no admission...
    sizes = await failure(heatmap(too_large, metadata=as_user("u1")))
    assert sizes.code is grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in sizes.violations] == ["image.data"]
    assert "65537 bytes; the limit is 65536" in sizes.violations[0][1]
    # ...so the one admission of the hour is still there for a valid request.
    answered = await heatmap(request(encode_png((64, 36))), metadata=as_user("u1"))
    assert answered.result.regions
    # Admission comes before validation reads the image: an unreadable one is not sniffed.
    admitted_first = await failure(heatmap(not_an_image, metadata=as_user("u1")))
    assert_exhausted(admitted_first, "RATE_LIMITED", None)
    # Another user's admission is untouched: validation refuses the unreadable image.
    unreadable = await failure(heatmap(not_an_image, metadata=as_user("u2")))
    assert unreadable.code is grpc.StatusCode.INVALID_ARGUMENT
