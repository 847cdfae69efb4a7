"""Credentials over real gRPC: named service tokens (rotation), and what their calls log.

Each test starts its own gateway on 127.0.0.1:0 (local mode, the emulator started for it) with
the credentials it is about, and calls it through a real channel.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest
from grpc import aio
from pydantic import SecretStr
from viewbait.ai.v1 import usage_service_pb2, usage_service_pb2_grpc

from gateway.config import AuthSettings, GeminiSettings, ServerSettings, Settings
from gateway.server import GatewayServer
from gateway.telemetry.logs import JsonFormatter

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
    assert any('"service_token": "web-new"' in line for line in lines)
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
