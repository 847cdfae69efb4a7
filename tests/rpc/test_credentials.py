"""Credentials over real gRPC: named service tokens (rotation) and what their calls log, user
JWTs verified with a JWKS fetched from a URL (a real JWKS server on loopback that rotates keys
and fails), and who may use server reflection (a real reflection client).

Each test starts its own gateway on 127.0.0.1:0 (local mode, the emulator started for it) with
the credentials it is about, and calls it through a real channel.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pool
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from pydantic import SecretStr, ValidationError
from viewbait.ai.v1 import usage_service_pb2, usage_service_pb2_grpc

from gateway.config import (
    AuthSettings,
    GeminiSettings,
    ReflectionMode,
    ServerSettings,
    Settings,
)
from gateway.server import GatewayServer
from gateway.telemetry.logs import JsonFormatter
from tests.fixtures.jwks import jwks_server
from tests.rpc.conftest import Gateway, RichStatus

TIMEOUT_S = 30
OLD_TOKEN = "rotation-old-token-0123456789abcdef"
NEW_TOKEN = "rotation-new-token-fedcba9876543210"
REMOVED_TOKEN = "rotation-gone-token-00112233445566"


@asynccontextmanager
async def serving(auth: AuthSettings, **server: Any) -> AsyncIterator[aio.Channel]:
    """A gateway with these credentials (and server settings), and a channel to it."""
    settings = Settings(
        server=ServerSettings(host="127.0.0.1", port=0, shutdown_grace_s=1.0, **server),
        auth=auth,
        gemini=GeminiSettings(backoff_initial_s=0.01, backoff_max_s=0.05),
    )
    gateway = GatewayServer(settings)
    await gateway.start()
    channel = aio.insecure_channel(f"127.0.0.1:{gateway.port}")
    try:
        yield channel
    finally:
        await channel.close()
        await gateway.stop(grace=1.0)


def as_backend(token: str, user_id: str = "user-1") -> tuple[tuple[str, str], ...]:
    """Metadata of a trusted backend calling with `token` for `user_id` at the pro tier."""
    return (
        ("authorization", f"Bearer {token}"),
        ("x-viewbait-user-id", user_id),
        ("x-viewbait-tier", "pro"),
    )


async def get_usage(channel: aio.Channel, metadata: tuple[tuple[str, str], ...]) -> grpc.StatusCode:
    """The status of a GetUsage call with `metadata` (OK, or the code it failed with)."""
    stub: Any = usage_service_pb2_grpc.UsageServiceStub(channel)
    try:
        await stub.GetUsage(
            usage_service_pb2.GetUsageRequest(), metadata=metadata, timeout=TIMEOUT_S
        )
    except aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def test_two_named_tokens_are_accepted_and_a_removed_one_is_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gateway")
    auth = AuthSettings(
        service_tokens={"web-old": SecretStr(OLD_TOKEN), "web-new": SecretStr(NEW_TOKEN)}
    )
    async with serving(auth) as channel:
        codes = {
            "old": await get_usage(channel, as_backend(OLD_TOKEN, "user-old")),
            "new": await get_usage(channel, as_backend(NEW_TOKEN, "user-new")),
            "removed": await get_usage(channel, as_backend(REMOVED_TOKEN, "user-gone")),
        }

    assert codes == {
        "old": grpc.StatusCode.OK,
        "new": grpc.StatusCode.OK,
        "removed": grpc.StatusCode.UNAUTHENTICATED,
    }
    lines = [JsonFormatter().format(record) for record in caplog.records]
    finished = {
        record.user_id: record
        for record in caplog.records
        if record.getMessage() == "rpc finished" and hasattr(record, "user_id")
    }
    assert finished["user-old"].service_token == "web-old"  # type: ignore[attr-defined]
    assert finished["user-new"].service_token == "web-new"  # type: ignore[attr-defined]
    refused = [r for r in caplog.records if r.getMessage() == "rpc finished" and r.user_id is None]
    assert [r.rpc_code for r in refused] == ["UNAUTHENTICATED"]  # type: ignore[attr-defined]
    assert any(json.loads(line).get("service_token") == "web-new" for line in lines)
    for token in (OLD_TOKEN, NEW_TOKEN, REMOVED_TOKEN):
        assert not any(token in line for line in lines), token


async def test_the_single_service_token_keeps_working_as_default(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gateway")
    auth = AuthSettings(
        service_token=SecretStr(OLD_TOKEN), service_tokens={"next": SecretStr(NEW_TOKEN)}
    )
    async with serving(auth) as channel:
        assert await get_usage(channel, as_backend(OLD_TOKEN)) is grpc.StatusCode.OK
        assert await get_usage(channel, as_backend(NEW_TOKEN)) is grpc.StatusCode.OK

    names = [
        getattr(r, "service_token", None)
        for r in caplog.records
        if r.getMessage() == "rpc finished"
    ]
    assert names == ["default", "next"]


# --- user JWTs verified with the JWKS at a URL ----------------------------------------------


def jwks_auth(url: str, **overrides: Any) -> AuthSettings:
    """Credentials of a gateway that verifies ES256 user JWTs with the JWKS at `url` (and
    accepts a service token); unknown kids refetch the set at most once an hour (so the tests
    count fetches without depending on the clock)."""
    values: dict[str, Any] = {
        "service_token": SecretStr(OLD_TOKEN),
        "jwks_url": url,
        "jwks_timeout_s": 0.5,
        "jwks_min_refresh_interval_s": 3600,
    }
    values.update(overrides)
    return AuthSettings(**values)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def failure(channel: aio.Channel, metadata: tuple[tuple[str, str], ...]) -> RichStatus:
    stub: Any = usage_service_pb2_grpc.UsageServiceStub(channel)
    request = usage_service_pb2.GetUsageRequest()
    return await Gateway.expect_failure(
        lambda: stub.GetUsage(request, metadata=metadata, timeout=TIMEOUT_S)
    )


async def test_jwks_rotation_and_the_unknown_kid_rate_limit() -> None:
    async with jwks_server("key-a") as keys, serving(jwks_auth(keys.url)) as channel:
        assert await get_usage(channel, bearer(keys.sign("key-a"))) is grpc.StatusCode.OK
        assert keys.hits == 1  # the start-up fetch

        keys.publish("key-b")
        # A token with the new kid makes the gateway fetch the set again, and passes.
        assert await get_usage(channel, bearer(keys.sign("key-b"))) is grpc.StatusCode.OK
        assert keys.hits == 2
        # The set now holds key-b alone: key-a was rotated out.
        gone = await failure(channel, bearer(keys.sign("key-a")))
        assert gone.code is grpc.StatusCode.UNAUTHENTICATED
        assert "unknown JWT kid 'key-a'" in gone.message

        # Unknown kids refetch at most once per interval, and key-b's fetch was this
        # interval's: neither key-a's refusal nor any of these reached the server.
        for kid in ("made-up-1", "made-up-2", "made-up-3"):
            status = await failure(channel, bearer(keys.sign(kid)))
            assert status.code is grpc.StatusCode.UNAUTHENTICATED
            assert f"unknown JWT kid '{kid}'" in status.message
        assert keys.hits == 2


async def test_a_failing_jwks_server_leaves_the_last_good_set_in_use() -> None:
    async with jwks_server("key-a") as keys, serving(jwks_auth(keys.url)) as channel:
        keys.publish("key-a", "key-b")
        keys.mode = "error"

        refused = await failure(channel, bearer(keys.sign("key-b")))
        still = await get_usage(channel, bearer(keys.sign("key-a")))

    assert keys.hits == 2  # start-up, then key-b's refresh (answered 500)
    assert refused.code is grpc.StatusCode.UNAUTHENTICATED
    assert still is grpc.StatusCode.OK


async def test_an_unreachable_jwks_url_does_not_stop_start_up() -> None:
    """Start-up waits for the first fetch only up to its timeout, then serves: service tokens
    work, JWTs that need the JWKS answer UNAVAILABLE (retryable) until a set arrives."""
    async with jwks_server("key-a") as keys:
        keys.mode = "hang"
        async with serving(jwks_auth(keys.url)) as channel:
            backend = await get_usage(channel, as_backend(OLD_TOKEN))
            user = await failure(channel, bearer(keys.sign("key-a")))

    assert backend is grpc.StatusCode.OK
    assert user.code is grpc.StatusCode.UNAVAILABLE
    assert "has not fetched the JWT signing keys" in user.message
    assert user.retry_delay_s is not None and user.retry_delay_s > 0


async def test_a_set_that_arrives_after_start_up_is_used() -> None:
    async with jwks_server("key-a") as keys:
        keys.mode = "error"
        async with serving(jwks_auth(keys.url)) as channel:
            keys.mode = "ok"
            # The first token that needs the keys fetches them.
            assert await get_usage(channel, bearer(keys.sign("key-a"))) is grpc.StatusCode.OK


# --- who may use server reflection ------------------------------------------------------------


class _WithMetadata(grpc.StreamStreamClientInterceptor):  # type: ignore[misc]
    """Adds fixed metadata to every stream-stream call (the reflection client sends none)."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        details = details._replace(metadata=(*(details.metadata or ()), *self._metadata))
        return continuation(details, requests)


def reflect(port: int, metadata: tuple[tuple[str, str], ...]) -> grpc.StatusCode | list[str]:
    """What a reflection client (grpcio-reflection's descriptor database, as tools use it)
    learns: the services and AnalyzeVideo's input type, or the status it was refused with."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as plain:
        channel = grpc.intercept_channel(plain, _WithMetadata(metadata))
        database = ProtoReflectionDescriptorDatabase(channel)
        try:
            services = sorted(database.get_services())
            pool = descriptor_pool.DescriptorPool(database)
            method = pool.FindMethodByName("viewbait.ai.v1.GatewayService.AnalyzeVideo")
        except grpc.RpcError as error:
            return error.code()  # type: ignore[no-any-return]
    return [*services, method.input_type.full_name]


@pytest.mark.parametrize(
    ("mode", "anonymous", "with_credentials"),
    [
        ("off", grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.UNIMPLEMENTED),
        ("authenticated", grpc.StatusCode.UNAUTHENTICATED, "served"),
        ("public", "served", "served"),
    ],
)
async def test_reflection_modes(mode: str, anonymous: Any, with_credentials: Any) -> None:
    settings = Settings(
        server=ServerSettings(host="127.0.0.1", port=0, reflection=mode),
        auth=AuthSettings(service_token=SecretStr(OLD_TOKEN)),
    )
    gateway = GatewayServer(settings)
    port = await gateway.start()
    try:
        seen = {
            "anonymous": await asyncio.to_thread(reflect, port, ()),
            "with credentials": await asyncio.to_thread(reflect, port, as_backend(OLD_TOKEN)),
            "bad credentials": await asyncio.to_thread(reflect, port, as_backend(NEW_TOKEN)),
        }
        health = await _health(port)
    finally:
        await gateway.stop(grace=1.0)

    served = [
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "viewbait.ai.v1.GatewayService",
        "viewbait.ai.v1.JobService",
        "viewbait.ai.v1.UsageService",
        "viewbait.ai.v1.AnalyzeVideoRequest",
    ]
    expected = {
        "anonymous": served if anonymous == "served" else anonymous,
        "with credentials": served if with_credentials == "served" else with_credentials,
        # Bad credentials are refused wherever credentials are checked.
        "bad credentials": {
            "off": grpc.StatusCode.UNIMPLEMENTED,
            "authenticated": grpc.StatusCode.UNAUTHENTICATED,
            "public": served,
        }[mode],
    }
    assert seen == expected
    assert health == health_pb2.HealthCheckResponse.SERVING  # never behind credentials


async def _health(port: int) -> int:
    async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub: Any = health_pb2_grpc.HealthStub(channel)
        response = await stub.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT_S)
    return int(response.status)


def test_reflection_accepts_false_and_refuses_true_naming_the_modes() -> None:
    assert ServerSettings(reflection=False).reflection is ReflectionMode.OFF
    assert ServerSettings(reflection="false").reflection is ReflectionMode.OFF
    assert ServerSettings().reflection is ReflectionMode.AUTHENTICATED
    for legacy in (True, "true", "TRUE"):
        with pytest.raises(ValidationError) as caught:
            ServerSettings(reflection=legacy)
        message = str(caught.value)
        assert "no longer a boolean" in message
        assert "authenticated" in message and "public" in message and "off" in message
    with pytest.raises(ValidationError, match="'off', 'authenticated' or 'public'"):
        ServerSettings(reflection="private")


# --- configured by environment variables, as an operator would ------------------------------


async def test_an_operator_configured_gateway(spawn_gateway: Any) -> None:
    """`python -m gateway serve` with two named service tokens (a JSON object) and a JWKS URL:
    both tokens and a JWT signed by a published key pass; the log names the tokens, never
    shows them, and says which keys were loaded."""
    async with jwks_server("key-a") as keys:
        tokens = json.dumps({"web-old": OLD_TOKEN, "web-new": NEW_TOKEN})
        # In a thread: the JWKS server answers from this loop while the gateway starts.
        gateway = await asyncio.to_thread(
            spawn_gateway,
            VIEWBAIT_AUTH__SERVICE_TOKENS=tokens,
            VIEWBAIT_AUTH__JWKS_URL=keys.url,
            VIEWBAIT_AUTH__JWKS_TIMEOUT_S="10",
        )
        async with aio.insecure_channel(gateway.address) as channel:
            codes = [
                await get_usage(channel, as_backend(OLD_TOKEN, "user-old")),
                await get_usage(channel, as_backend(NEW_TOKEN, "user-new")),
                await get_usage(channel, bearer(keys.sign("key-a", user_id="user-jwt"))),
            ]
        # Start-up waited for the first fetch: the JWT needed no other.
        assert keys.hits == 1

    assert codes == [grpc.StatusCode.OK] * 3
    records = gateway.log_records()
    finished = {r["user_id"]: r for r in records if r["msg"] == "rpc finished"}
    assert finished["user-old"]["service_token"] == "web-old"
    assert finished["user-new"]["service_token"] == "web-new"
    assert "service_token" not in finished["user-jwt"]
    loaded = [r for r in records if r["msg"] == "JWKS key set loaded"]
    assert [r["kids"] for r in loaded] == [["key-a"]]
    log = gateway.log()
    assert OLD_TOKEN not in log and NEW_TOKEN not in log
