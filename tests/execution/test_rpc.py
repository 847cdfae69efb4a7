"""The result cache and coalescing over gRPC: real `GatewayServer`s on 127.0.0.1:0, real
channels, one emulator that counts the upstream calls, PostgreSQL on a fresh schema per test, and
a replica in its own process that is killed with SIGKILL in the middle of a call.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2
from viewbait.ai.v1 import common_pb2, gateway_service_pb2, gateway_service_pb2_grpc, operations_pb2

from gateway import native, operations
from gateway.config import Backend, ExecutionSettings, GeminiSettings, Settings, StoreSettings
from gateway.emulator import EmulatorServer
from gateway.execution import Executor, HotResults, Pipeline
from gateway.gemini import GeminiClient
from gateway.limiter import RateLimiter
from gateway.operations.analyze_video import AnalyzeVideoRequest
from gateway.server import STORE_HEALTH_SERVICE, UPSTREAM_HEALTH_SERVICE
from gateway.store import MemoryStore
from gateway.store.blobs import LocalBlobStore
from tests.fixtures.gateways import SERVICE_TOKEN, as_user, encode_png, eventually, gateway_settings
from tests.fixtures.stores import DATABASE_URL, store_settings

from .conftest import principal

VIDEO = operations_pb2.AnalyzeVideoRequest(video_id="dQw4w9WgXcQ", title="I built a treehouse")
ANALYSIS = AnalyzeVideoRequest(video_id="dQw4w9WgXcQ", title="I built a treehouse")
#: Keeps concurrent callers overlapping with the one upstream call.
SLOW_S = 0.6
CALL_TIMEOUT_S = 30


def heatmap(color: tuple[int, int, int] = (10, 200, 30)) -> Any:
    image = common_pb2.Image(data=encode_png((320, 180), color))
    return operations_pb2.ComputeAttentionHeatmapRequest(image=image)


def calls(emulator: EmulatorServer) -> int:
    return emulator.stats().requests


def short_ttl(seconds: int) -> dict[str, Any]:
    policies = dict(Settings().policies)
    policies["analyze_video"] = policies["analyze_video"].model_copy(update={"ttl_s": seconds})
    return {"policies": policies}


async def analyze(gateway: Any, user: str = "user-a") -> Any:
    return await gateway.stub.AnalyzeVideo(VIDEO, metadata=as_user(user), timeout=CALL_TIMEOUT_S)


async def test_hits_over_grpc_say_cached_with_the_model_and_no_usage(
    start_gateway: Any, emulator: EmulatorServer, tmp_path: Path
) -> None:
    gateway = await start_gateway(gateway_settings(emulator, tmp_path))

    first = await analyze(gateway)
    second = await analyze(gateway)
    other_user = await analyze(gateway, "user-b")
    heatmaps = [
        await gateway.stub.ComputeAttentionHeatmap(
            heatmap(), metadata=as_user(user), timeout=CALL_TIMEOUT_S
        )
        for user in ("user-a", "user-b")
    ]

    assert not first.metadata.cached and first.metadata.usage.upstream_calls == 1
    assert second.metadata.cached and second.result == first.result
    assert second.metadata.model == first.metadata.model == Settings().gemini.text_model
    assert second.metadata.usage == common_pb2.Usage()
    assert not other_user.metadata.cached  # user A's analysis is never served to user B
    assert [h.metadata.cached for h in heatmaps] == [False, True]  # shared across users
    assert heatmaps[1].result == heatmaps[0].result
    assert calls(emulator) == 3


async def test_hits_on_one_entry_each_carry_their_own_request_id(
    start_gateway: Any, emulator: EmulatorServer, tmp_path: Path
) -> None:
    gateway = await start_gateway(gateway_settings(emulator, tmp_path))
    first = await analyze(gateway)

    async def hit(request_id: str) -> Any:
        metadata = (*as_user("user-a"), ("x-request-id", request_id))
        return await gateway.stub.AnalyzeVideo(VIDEO, metadata=metadata, timeout=CALL_TIMEOUT_S)

    # The second id is longer than one byte can size: the encoded hit sizes every field.
    hits = [await hit("req-1"), await hit("r" * 128), await analyze(gateway)]
    assert [h.metadata.request_id for h in hits[:2]] == ["req-1", "r" * 128]
    assert hits[2].metadata.request_id not in ("", "req-1", first.metadata.request_id)
    for answer in hits:
        assert answer.metadata.cached and answer.result == first.result
        assert answer.metadata.model == first.metadata.model
        assert not answer.metadata.coalesced and answer.metadata.usage == common_pb2.Usage()
    assert calls(emulator) == 1


async def test_expiry_and_a_version_bump_are_misses_over_grpc(
    start_gateway: Any,
    emulator: EmulatorServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gateway = await start_gateway(gateway_settings(emulator, tmp_path, **short_ttl(1)))
    await analyze(gateway)
    assert (await analyze(gateway)).metadata.cached

    await asyncio.sleep(1.1)
    expired = await analyze(gateway)
    monkeypatch.setattr(operations.get("analyze_video"), "prompt_version", "next-prompt")
    bumped = await analyze(gateway)

    assert not expired.metadata.cached and not bumped.metadata.cached
    assert calls(emulator) == 3


async def test_concurrent_identical_rpcs_cost_one_upstream_call(
    start_gateway: Any, emulator: EmulatorServer, tmp_path: Path
) -> None:
    emulator.set_knobs(latency_s=SLOW_S)
    gateway = await start_gateway(gateway_settings(emulator, tmp_path))

    answers = await asyncio.gather(*(analyze(gateway) for _ in range(30)))

    assert calls(emulator) == 1
    assert len({a.result.SerializeToString() for a in answers}) == 1
    assert sum(a.metadata.coalesced for a in answers) == 29
    assert sum(a.metadata.usage.upstream_calls for a in answers) == 1


async def test_a_long_call_answers_a_pending_handle_and_asking_again_joins_it(
    start_gateway: Any, emulator: EmulatorServer, tmp_path: Path
) -> None:
    emulator.set_knobs(latency_s=1.0)
    gateway = await start_gateway(
        gateway_settings(emulator, tmp_path, execution=ExecutionSettings(long_poll_s=0.2))
    )

    first = await analyze(gateway)
    again = await analyze(gateway)

    assert first.WhichOneof("outcome") == "pending" and again.WhichOneof("outcome") == "pending"
    assert first.pending.job_id == again.pending.job_id
    assert not first.metadata.model and first.metadata.request_id
    store = gateway.server.store
    done = await store.wait_for_job_change(first.pending.job_id, "user-a", 10**9, 10)
    assert done.result is not None
    final = await analyze(gateway)
    assert final.WhichOneof("outcome") == "result" and final.metadata.cached
    assert calls(emulator) == 1


async def test_an_idempotency_key_replays_the_first_stream(
    start_gateway: Any, emulator: EmulatorServer, tmp_path: Path
) -> None:
    gateway = await start_gateway(gateway_settings(emulator, tmp_path))
    request = operations_pb2.GenerateThumbnailRequest(
        prompt="a treehouse at dusk", variations=2, idempotency_key="stream-1"
    )

    async def stream(message: Any) -> list[Any]:
        call = gateway.stub.GenerateThumbnail(message, metadata=as_user(), timeout=CALL_TIMEOUT_S)
        return [m async for m in call]

    first = await stream(request)
    await gateway.executor.flush()
    replay = await stream(request)

    images = [[m.image.image.sha256 for m in s if m.HasField("image")] for s in (first, replay)]
    assert sorted(images[0]) == sorted(images[1]) and len(images[0]) == 2
    assert replay[-1].summary.image_count == 2
    assert replay[-1].summary.metadata.usage.upstream_calls == 0
    assert calls(emulator) == 2  # one per variation, once
    with pytest.raises(aio.AioRpcError) as reused:
        await stream(
            operations_pb2.GenerateThumbnailRequest(prompt="other", idempotency_key="stream-1")
        )
    assert reused.value.code() is grpc.StatusCode.ALREADY_EXISTS


async def test_a_thumbnail_request_is_validated_and_its_references_hashed_once(
    start_gateway: Any, emulator: EmulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway = await start_gateway(gateway_settings(emulator, tmp_path))
    spec = operations.get("generate_thumbnail")
    validations: list[object] = []
    hashed: list[bytes] = []
    validate, inspect = type(spec).validate, native.inspect_image_field

    def counted_validate(self: Any, request: Any, *args: Any) -> Any:
        validations.append(request)
        return validate(self, request, *args)

    def counted_inspect(data: bytes, *args: Any, **kwargs: Any) -> Any:
        hashed.append(data)
        return inspect(data, *args, **kwargs)

    monkeypatch.setattr(type(spec), "validate", counted_validate)
    monkeypatch.setattr(native, "inspect_image_field", counted_inspect)
    references = [
        operations_pb2.ReferenceImage(
            image=common_pb2.Image(data=encode_png((64, 64), color)), role=role
        )
        for color, role in (
            ((200, 0, 0), operations_pb2.REFERENCE_ROLE_FACE),
            ((0, 0, 200), operations_pb2.REFERENCE_ROLE_STYLE),
        )
    ]
    request = operations_pb2.GenerateThumbnailRequest(
        prompt="a treehouse at dusk", references=references, idempotency_key="once-1"
    )

    call = gateway.stub.GenerateThumbnail(request, metadata=as_user(), timeout=CALL_TIMEOUT_S)
    messages = [m async for m in call]

    assert messages[-1].summary.image_count == 1
    assert len(validations) == 1
    assert sorted(hashed) == sorted(ref.image.data for ref in references)


# -- replicas sharing PostgreSQL ---------------------------------------------------------------


def shared_store(schema: str, url: str = DATABASE_URL, **overrides: Any) -> StoreSettings:
    return store_settings(schema, url, migrate_on_start=True, **overrides)


async def test_two_gateways_sharing_postgres_coalesce(
    start_gateway: Any, emulator: EmulatorServer, tmp_path: Path, pg_schema: str
) -> None:
    emulator.set_knobs(latency_s=SLOW_S)
    replicas = [
        await start_gateway(gateway_settings(emulator, tmp_path, store=shared_store(pg_schema)))
        for _ in range(2)
    ]

    answers = await asyncio.gather(*(analyze(replicas[i % 2]) for i in range(20)))
    heatmaps = await asyncio.gather(
        *(
            replicas[i % 2].stub.ComputeAttentionHeatmap(
                heatmap(), metadata=as_user(f"user-{i}"), timeout=CALL_TIMEOUT_S
            )
            for i in range(6)
        )
    )

    assert calls(emulator) == 2  # one analysis, one heatmap, for 26 callers on 2 replicas
    assert len({a.result.SerializeToString() for a in answers}) == 1
    assert len({h.result.SerializeToString() for h in heatmaps}) == 1
    assert sum(r.executor.stats.followed for r in replicas) == 2


async def test_a_follower_on_another_replica_finishes_the_work_of_a_killed_one(
    start_gateway: Any,
    spawn_gateway: Any,
    emulator: EmulatorServer,
    tmp_path: Path,
    pg_schema: str,
) -> None:
    emulator.set_knobs(latency_s=2.0)
    doomed = spawn_gateway(
        VIEWBAIT_GEMINI__API_KEY=emulator.api_key,
        VIEWBAIT_GEMINI__BASE_URL=emulator.base_url,
        VIEWBAIT_AUTH__SERVICE_TOKEN=SERVICE_TOKEN,
        VIEWBAIT_STORE__DATABASE_URL=DATABASE_URL,
        VIEWBAIT_STORE__SCHEMA=pg_schema,
        VIEWBAIT_STORE__MIGRATE_ON_START="true",
        VIEWBAIT_EXECUTION__LEASE_S="1",
        VIEWBAIT_SERVER__LOG_LEVEL="WARNING",
    )
    survivor = await start_gateway(
        gateway_settings(
            emulator,
            tmp_path,
            store=shared_store(pg_schema),
            execution=ExecutionSettings(lease_s=1.0),
        )
    )
    async with aio.insecure_channel(doomed.address) as channel:
        on_doomed = asyncio.ensure_future(
            gateway_service_pb2_grpc.GatewayServiceStub(channel).AnalyzeVideo(
                VIDEO, metadata=as_user(), timeout=CALL_TIMEOUT_S
            )
        )
        await eventually(lambda: calls(emulator) == 1, "the doomed replica's upstream call")
        on_survivor = asyncio.ensure_future(analyze(survivor))
        await eventually(lambda: survivor.executor.stats.misses == 1, "the follower")

        os.kill(doomed.process.pid, signal.SIGKILL)
        answer: gateway_service_pb2.AnalyzeVideoResponse = await on_survivor
        with pytest.raises(aio.AioRpcError) as lost:
            await on_doomed

    assert lost.value.code() is grpc.StatusCode.UNAVAILABLE
    assert answer.WhichOneof("outcome") == "result" and answer.result.summary
    assert survivor.executor.stats.takeovers == 1
    assert calls(emulator) == 2  # the killed attempt, then the takeover


async def store_health(gateway: Any) -> int:
    request = health_pb2.HealthCheckRequest(service=STORE_HEALTH_SERVICE)
    return int((await gateway.health.Check(request, timeout=CALL_TIMEOUT_S)).status)


async def wait_for_store_health(gateway: Any, wanted: int) -> None:
    await wait_for_health(gateway, STORE_HEALTH_SERVICE, wanted)


async def test_a_blackholed_database_over_grpc(
    start_gateway: Any, emulator: EmulatorServer, tmp_path: Path, pg_schema: str, tcp_proxy: Any
) -> None:
    settings = gateway_settings(
        emulator,
        tmp_path,
        store=shared_store(pg_schema, tcp_proxy.url, reconnect_interval_s=0.2),
        execution=ExecutionSettings(rescue_interval_s=0.2),
    )
    gateway = await start_gateway(settings)
    assert await store_health(gateway) == health_pb2.HealthCheckResponse.SERVING
    tcp_proxy.blackhole()

    down = await analyze(gateway)
    assert down.WhichOneof("outcome") == "result" and not down.metadata.cached
    await wait_for_store_health(gateway, health_pb2.HealthCheckResponse.NOT_SERVING)

    await tcp_proxy.restore()
    await wait_for_store_health(gateway, health_pb2.HealthCheckResponse.SERVING)
    fresh = await analyze(gateway, "user-c")
    await gateway.executor.flush()
    gateway.executor.hot = HotResults(0, 0)  # the next answer must come from PostgreSQL
    again = await analyze(gateway, "user-c")

    assert not fresh.metadata.cached and again.metadata.cached
    assert calls(emulator) == 2


async def overall_health(gateway: Any) -> int:
    request = health_pb2.HealthCheckRequest(service="")
    return int((await gateway.health.Check(request, timeout=CALL_TIMEOUT_S)).status)


@pytest.mark.parametrize("run_uncached", [True, False])
async def test_a_store_down_makes_the_replica_unfit_only_without_the_uncached_fallback(
    start_gateway: Any,
    emulator: EmulatorServer,
    tmp_path: Path,
    pg_schema: str,
    tcp_proxy: Any,
    run_uncached: bool,
) -> None:
    settings = gateway_settings(
        emulator,
        tmp_path,
        store=shared_store(pg_schema, tcp_proxy.url, reconnect_interval_s=0.2),
        execution=ExecutionSettings(
            rescue_interval_s=0.2, run_uncached_on_store_failure=run_uncached
        ),
    )
    gateway = await start_gateway(settings)
    serving, not_serving = (
        health_pb2.HealthCheckResponse.SERVING,
        health_pb2.HealthCheckResponse.NOT_SERVING,
    )
    assert await overall_health(gateway) == serving

    # No traffic: the periodic probe alone notices the database is gone.
    tcp_proxy.blackhole()
    await wait_for_store_health(gateway, not_serving)
    assert await overall_health(gateway) == (serving if run_uncached else not_serving)

    await tcp_proxy.restore()
    await wait_for_store_health(gateway, serving)
    assert await overall_health(gateway) == serving
    assert calls(emulator) == 0


async def test_emulated_answers_never_share_cache_entries_with_real_ones(
    start_gateway: Any, emulator: EmulatorServer, tmp_path: Path, pg_schema: str
) -> None:
    store = shared_store(pg_schema)
    # Asked for explicitly (a database is configured): the in-process emulator answers.
    emulated_settings = gateway_settings(emulator, tmp_path / "emulated", store=store)
    emulated_settings.gemini = emulated_settings.gemini.model_copy(
        update={"backend": Backend.EMULATOR, "api_key": None, "base_url": ""}
    )
    emulated = await start_gateway(emulated_settings)
    # The emulator reached through a configured URL and key is Gemini as far as keys go.
    real = await start_gateway(gateway_settings(emulator, tmp_path / "real", store=store))

    first = await analyze(emulated)
    again = await analyze(emulated)
    from_real = await analyze(real)
    real_again = await analyze(real)

    text_model = Settings().gemini.text_model
    assert again.metadata.cached and again.metadata.model == f"emulator:{text_model}"
    assert not from_real.metadata.cached and from_real.metadata.model == text_model
    assert real_again.metadata.cached and real_again.metadata.model == text_model
    assert not first.metadata.cached
    assert calls(emulator) == 1  # the shared emulator served only the real gateway's miss


async def test_the_same_request_has_different_keys_emulated_and_real(
    gemini_client: GeminiClient, gemini_settings: GeminiSettings, tmp_path: Path
) -> None:
    """The keys the pipeline derives (cache and coalescing), and the model a stored result
    names, for one request: emulated, and through a configured URL and key (real)."""
    real = Settings(gemini=gemini_settings)
    emulated = Settings(gemini=GeminiSettings(backend=Backend.EMULATOR))
    calls = {}
    for name, settings in (("real", real), ("emulated", emulated)):
        executor = Executor(settings.execution, MemoryStore(), LocalBlobStore(tmp_path / name))
        pipeline = Pipeline(settings, gemini_client, RateLimiter(settings), executor)
        prepared = pipeline.prepare("analyze_video", ANALYSIS, principal())
        calls[name] = pipeline.call("analyze_video", pipeline.validate(prepared), principal())

    assert calls["real"].key is not None and calls["emulated"].key is not None
    assert calls["real"].key != calls["emulated"].key
    assert calls["real"].model == real.gemini.text_model
    assert calls["emulated"].model == f"emulator:{real.gemini.text_model}"


async def test_refused_gemini_credentials_make_the_replica_unfit_and_callers_unavailable(
    start_gateway: Any,
    emulator: EmulatorServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = gateway_settings(emulator, tmp_path)
    gemini = settings.gemini.model_copy(update={"credentials_check_interval_s": 0.1})
    settings = settings.model_copy(update={"gemini": gemini})
    serving, not_serving = (
        health_pb2.HealthCheckResponse.SERVING,
        health_pb2.HealthCheckResponse.NOT_SERVING,
    )
    gateway = await start_gateway(settings)
    assert await upstream_health(gateway) == serving

    # The key is revoked upstream: the emulator accepts another one from now on. No traffic:
    # the replica's own probe notices.
    caplog.set_level(logging.INFO, logger="gateway.gemini")
    emulator.set_api_key("the-key-after-rotation")
    await wait_for_health(gateway, UPSTREAM_HEALTH_SERVICE, not_serving)
    assert await overall_health(gateway) == not_serving

    with pytest.raises(aio.AioRpcError) as refused:
        await analyze(gateway)
    status = refused.value
    assert status.code() is grpc.StatusCode.UNAVAILABLE
    assert "API key not valid" not in (status.details() or "")  # Gemini's text stays inside
    assert emulator.api_key not in (status.details() or "")
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert errors and all("VIEWBAIT_GEMINI__API_KEY" in r.getMessage() for r in errors)
    assert calls(emulator) == 1  # the one call made (probes are not generate calls)

    emulator.set_api_key(gemini.api_key.get_secret_value())  # type: ignore[union-attr]
    await wait_for_health(gateway, UPSTREAM_HEALTH_SERVICE, serving)
    assert await overall_health(gateway) == serving
    answer = await analyze(gateway)
    assert answer.WhichOneof("outcome") == "result"


async def upstream_health(gateway: Any) -> int:
    request = health_pb2.HealthCheckRequest(service=UPSTREAM_HEALTH_SERVICE)
    return int((await gateway.health.Check(request, timeout=CALL_TIMEOUT_S)).status)


async def wait_for_health(gateway: Any, service: str, wanted: int) -> None:
    request = health_pb2.HealthCheckRequest(service=service)
    for _ in range(400):
        answer = await gateway.health.Check(request, timeout=CALL_TIMEOUT_S)
        if answer.status == wanted:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the health of {service!r} never became {wanted}")
