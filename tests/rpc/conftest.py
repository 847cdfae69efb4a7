"""End-to-end fixtures for the gRPC server: a real gateway on 127.0.0.1:0, real channels and stubs.

- `gateway` (module scope): an in-process `GatewayServer` built from explicit settings (a service
  token and an HS256 JWT secret, a small receive limit, millisecond Gemini backoff) with the
  offline Gemini emulator it starts itself in local mode, plus one channel and the stubs of
  GatewayService, JobService and health. Test modules that use it run in the module's event loop:
  `pytestmark = pytest.mark.asyncio(loop_scope="module")`.
- `upstream`: that gateway's emulator; its knobs, faults and counters are reset after the test.
- `samples`: a valid request for every operation, with real encoded images.
- `operation`, `unary_operation`, `tier`: parametrized fixtures over the five operations, the
  four unary ones and the four tiers.
- `local_gateway` (module scope) and `spawn_gateway` (a factory): `python -m gateway serve` in a
  subprocess, configured by environment variables exactly as an operator would.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc import aio
from grpc_health.v1 import health_pb2_grpc
from grpc_status import rpc_status
from pydantic import SecretStr
from viewbait.ai.v1 import (
    gateway_service_pb2,
    gateway_service_pb2_grpc,
    job_service_pb2_grpc,
)

from gateway.auth import mint_dev_jwt
from gateway.config import (
    AuthSettings,
    GeminiSettings,
    ServerSettings,
    Settings,
    Tier,
)
from gateway.emulator import EmulatorServer
from gateway.server import GatewayServer

#: Credentials of the in-process gateway (long enough for the settings validators).
SERVICE_TOKEN = "rpc-tests-service-token-0123456789"
JWT_SECRET = "rpc-tests-hs256-secret-of-at-least-32-bytes"
#: The in-process gateway's receive limit: roomy for the sample requests (a few KiB), small
#: enough that an oversized request is cheap to build.
MAX_RECEIVE_BYTES = 256 * 1024
VIDEO_ID = "dQw4w9WgXcQ"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: How long a test waits for a subprocess gateway to come up before failing with its log.
STARTUP_TIMEOUT_S = 60.0

Metadata = tuple[tuple[str, str], ...]

_GATEWAY_SERVICE = gateway_service_pb2.DESCRIPTOR.services_by_name["GatewayService"]
#: Operation name (the policy table's key, and the Python client's method name) -> RPC name.
RPC_NAMES: dict[str, str] = {
    "generate_thumbnail": "GenerateThumbnail",
    "analyze_video": "AnalyzeVideo",
    "suggest_thumbnail_concepts": "SuggestThumbnailConcepts",
    "compute_attention_heatmap": "ComputeAttentionHeatmap",
    "check_channel_consistency": "CheckChannelConsistency",
}
UNARY_OPERATIONS = [
    name
    for name, rpc in RPC_NAMES.items()
    if not _GATEWAY_SERVICE.methods_by_name[rpc].server_streaming
]


@dataclass(frozen=True, slots=True)
class Operation:
    """One gateway operation: its policy name and its GatewayService RPC."""

    name: str
    rpc: str

    @property
    def streaming(self) -> bool:
        """Whether the RPC streams its answer (GenerateThumbnail)."""
        return bool(_GATEWAY_SERVICE.methods_by_name[self.rpc].server_streaming)


@dataclass(frozen=True, slots=True)
class RichStatus:
    """A failed call as the server reported it, details decoded with grpcio-status."""

    code: grpc.StatusCode
    message: str
    error_info: error_details_pb2.ErrorInfo | None
    #: BadRequest field violations as (field, description).
    violations: list[tuple[str, str]]
    #: RetryInfo.retry_delay in seconds, if sent.
    retry_delay_s: float | None
    trailing: dict[str, str | bytes]

    @classmethod
    def of(cls, error: aio.AioRpcError) -> RichStatus:
        """Decodes `grpc-status-details-bin` (rpc_status also checks code and message agree)."""
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
        info: error_details_pb2.ErrorInfo | None = None
        violations: list[tuple[str, str]] = []
        retry_delay_s: float | None = None
        for detail in status.details if status is not None else ():
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                violations += [(v.field, v.description) for v in bad.field_violations]
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                retry_delay_s = retry.retry_delay.ToMilliseconds() / 1000
        return cls(
            code=error.code(),
            message=error.details() or "",
            error_info=info,
            violations=violations,
            retry_delay_s=retry_delay_s,
            trailing=dict(error.trailing_metadata() or ()),
        )


@dataclass
class Gateway:
    """A running in-process gateway and a channel to it."""

    server: GatewayServer
    channel: aio.Channel
    stub: gateway_service_pb2_grpc.GatewayServiceStub = field(init=False)
    jobs: job_service_pb2_grpc.JobServiceStub = field(init=False)
    health: health_pb2_grpc.HealthStub = field(init=False)

    #: The service token the gateway accepts (the trusted backend's credential).
    service_token: str = field(default=SERVICE_TOKEN, init=False)

    def __post_init__(self) -> None:
        self.stub = gateway_service_pb2_grpc.GatewayServiceStub(self.channel)
        self.jobs = job_service_pb2_grpc.JobServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    @property
    def target(self) -> str:
        """host:port to dial."""
        return f"127.0.0.1:{self.server.port}"

    @property
    def emulator(self) -> EmulatorServer:
        """The offline Gemini emulator the gateway started for itself."""
        emulator = self.server.emulator
        assert emulator is not None, "the test gateway runs in local mode"
        return emulator

    @property
    def settings(self) -> Settings:
        """The settings the gateway was built from."""
        return self.server.settings

    @staticmethod
    def operation(name: str) -> Operation:
        """The operation of that name (e.g. "analyze_video")."""
        return Operation(name, RPC_NAMES[name])

    def model_for(self, operation: str) -> str:
        """The Gemini model name an operation runs on."""
        return self.settings.model_name(self.settings.policy(operation))

    def identity_for(self, operation: str) -> str:
        """The model an operation's answers name: its Gemini model, marked as the emulator's
        (this gateway runs in local mode, on the in-process emulator)."""
        return "emulator:" + self.model_for(operation)

    @staticmethod
    def as_service(
        user_id: str = "user-1", tier: Tier = Tier.PRO, *, request_id: str | None = None
    ) -> Metadata:
        """Metadata of the trusted backend acting for `user_id` at `tier`."""
        pairs = [
            ("authorization", f"Bearer {SERVICE_TOKEN}"),
            ("x-viewbait-user-id", user_id),
            ("x-viewbait-tier", tier.value),
        ]
        if request_id is not None:
            pairs.append(("x-request-id", request_id))
        return tuple(pairs)

    @staticmethod
    def as_user(
        tier: Tier, user_id: str = "user-1", *, secret: str = JWT_SECRET, **claims: Any
    ) -> Metadata:
        """Metadata of an end user with a Supabase-style JWT (`claims` go to `mint_dev_jwt`)."""
        return (("authorization", f"Bearer {mint_dev_jwt(secret, user_id, tier, **claims)}"),)

    async def call(
        self, operation: Operation, request: Message, metadata: Metadata, timeout_s: float = 60
    ) -> list[Any]:
        """Calls an operation's RPC; returns every response message (one for unary RPCs)."""
        method = getattr(self.stub, operation.rpc)
        if operation.streaming:
            return [m async for m in method(request, metadata=metadata, timeout=timeout_s)]
        return [await method(request, metadata=metadata, timeout=timeout_s)]

    async def failure(
        self, operation: Operation, request: Message, metadata: Metadata
    ) -> RichStatus:
        """Calls an operation's RPC, which must fail; returns the decoded status."""
        return await self.expect_failure(lambda: self.call(operation, request, metadata))

    @staticmethod
    async def expect_failure(call: Callable[[], Awaitable[object]]) -> RichStatus:
        """Awaits `call()`, which must fail with a gRPC error; returns the decoded status."""
        with pytest.raises(aio.AioRpcError) as caught:
            await call()
        return RichStatus.of(caught.value)


def gateway_settings() -> Settings:
    """Explicit settings of the in-process gateway (local mode: the emulator is started for it)."""
    return Settings(
        server=ServerSettings(
            host="127.0.0.1",
            port=0,
            max_receive_message_bytes=MAX_RECEIVE_BYTES,
            shutdown_grace_s=2.0,
        ),
        auth=AuthSettings(service_token=SecretStr(SERVICE_TOKEN), jwt_secret=SecretStr(JWT_SECRET)),
        gemini=GeminiSettings(backoff_initial_s=0.01, backoff_max_s=0.05, attempt_timeout_s=30),
    )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gateway() -> AsyncIterator[Gateway]:
    """An in-process gateway on 127.0.0.1:0 and a channel to it, for one test module."""
    server = GatewayServer(gateway_settings())
    await server.start()
    # The client may send more than the server accepts, so the server's own limit is what
    # refuses oversized requests.
    channel = aio.insecure_channel(
        f"127.0.0.1:{server.port}",
        options=[
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ],
    )
    try:
        yield Gateway(server, channel)
    finally:
        await channel.close()
        await server.stop(grace=1.0)


@pytest.fixture
def upstream(gateway: Gateway) -> Iterator[EmulatorServer]:
    """The gateway's emulator, with knobs, faults and counters reset after the test."""
    emulator = gateway.emulator
    emulator.reset()
    try:
        yield emulator
    finally:
        emulator.reset()


@pytest.fixture(params=list(RPC_NAMES))
def operation(request: pytest.FixtureRequest) -> Operation:
    """Each of the five operations."""
    return Operation(request.param, RPC_NAMES[request.param])


@pytest.fixture(params=UNARY_OPERATIONS)
def unary_operation(request: pytest.FixtureRequest) -> Operation:
    """Each of the four unary operations."""
    return Operation(request.param, RPC_NAMES[request.param])


@pytest.fixture(params=list(Tier))
def tier(request: pytest.FixtureRequest) -> Tier:
    """Each subscription tier."""
    return Tier(request.param)
