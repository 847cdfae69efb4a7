"""Authentication and tier gating over real gRPC: who may call what, and what everyone else hears.

Bad credentials answer UNAUTHENTICATED and never reach an operation (the emulator sees no
request); a tier without the feature answers PERMISSION_DENIED naming the tiers that have it,
per the policy table in `Settings().policies`. Health checking needs no credentials; reflection
(by default) needs the same credentials as any RPC.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from viewbait.ai.v1 import job_service_pb2

from gateway.config import Settings, Tier
from gateway.rpc.status import ERROR_DOMAIN

pytestmark = pytest.mark.asyncio(loop_scope="module")

#: Signs JWTs the gateway must refuse: right shape, wrong key.
OTHER_SECRET = "some-other-project-secret-of-32-bytes-or-more"

#: case -> (metadata for the `gateway` fixture's handle, what the message must say)
BAD_CREDENTIALS: dict[str, tuple[Callable[[Any], tuple[tuple[str, str], ...]], str]] = {
    "none": (lambda g: (), "no credentials"),
    "not a bearer header": (
        lambda g: (("authorization", "Basic dXNlcjpwYXNzd29yZA=="),),
        "must be 'Bearer <token>'",
    ),
    "bearer without token": (lambda g: (("authorization", "Bearer"),), "carries no token"),
    "neither service token nor jwt": (
        lambda g: (("authorization", "Bearer not-the-service-token"),),
        "neither the service token nor a well-formed JWT",
    ),
    "bad jwt signature": (
        lambda g: g.as_user(Tier.PRO, secret=OTHER_SECRET),
        "bad JWT signature",
    ),
    "expired jwt": (
        lambda g: g.as_user(Tier.PRO, ttl_s=600, now=time.time() - 3600),
        "expired",
    ),
    "wrong audience": (
        lambda g: g.as_user(Tier.PRO, audience="some-other-app"),
        "wrong JWT audience",
    ),
    "service token without user id": (
        lambda g: (("authorization", f"Bearer {g.service_token}"),),
        "x-viewbait-user-id",
    ),
    "service token without tier": (
        lambda g: (
            ("authorization", f"Bearer {g.service_token}"),
            ("x-viewbait-user-id", "user-1"),
        ),
        "x-viewbait-tier",
    ),
    "unknown tier": (
        lambda g: (
            ("authorization", f"Bearer {g.service_token}"),
            ("x-viewbait-user-id", "user-1"),
            ("x-viewbait-tier", "platinum"),
        ),
        "must be one of: free, starter, advanced, pro",
    ),
    "two authorization headers": (
        lambda g: (*g.as_user(Tier.PRO), *g.as_user(Tier.FREE)),
        "send exactly one authorization header",
    ),
}


@pytest.mark.parametrize("case", list(BAD_CREDENTIALS))
@pytest.mark.parametrize("name", ["analyze_video", "generate_thumbnail"])
async def test_bad_credentials_are_unauthenticated_and_reach_nothing(
    gateway: Any, upstream: Any, samples: Any, case: str, name: str
) -> None:
    make_metadata, says = BAD_CREDENTIALS[case]
    metadata = make_metadata(gateway)
    operation = gateway.operation(name)

    status = await gateway.failure(operation, samples.request(operation.name), metadata)

    assert status.code is grpc.StatusCode.UNAUTHENTICATED
    assert says in status.message
    assert status.error_info is not None
    assert (status.error_info.reason, status.error_info.domain) == ("UNAUTHENTICATED", ERROR_DOMAIN)
    for _, value in metadata:  # the credential is never echoed back
        token = value.removeprefix("Bearer ").strip()
        if len(token) > 8:
            assert token not in status.message
    assert upstream.stats().requests == 0


async def test_job_service_is_authenticated_too(gateway: Any) -> None:
    status = await gateway.expect_failure(
        lambda: gateway.jobs.GetJob(job_service_pb2.GetJobRequest(job_id="job-1"), timeout=30)
    )

    assert status.code is grpc.StatusCode.UNAUTHENTICATED


def allowed_tiers(operation: str) -> list[Tier]:
    return Settings().policies[operation].tiers


async def test_each_tier_against_each_operation(
    gateway: Any, upstream: Any, samples: Any, operation: Any, tier: Tier
) -> None:
    """OK when the policy table includes the caller's tier, else PERMISSION_DENIED naming it."""
    metadata = gateway.as_user(tier, user_id=f"user-{tier.value}")
    request = samples.fresh_request(operation.name)
    allowed = allowed_tiers(operation.name)

    if tier in allowed:
        messages = await gateway.call(operation, request, metadata)
        last = messages[-1]
        if operation.streaming:
            assert last.summary.image_count == 1
        else:
            assert last.WhichOneof("outcome") == "result"
        assert upstream.stats().requests >= 1
        return

    status = await gateway.failure(operation, request, metadata)
    needed = " or ".join(t.value for t in Tier if t in allowed)
    assert status.code is grpc.StatusCode.PERMISSION_DENIED
    assert f"needs the {needed} tier" in status.message
    assert f"your tier is {tier.value}" in status.message
    assert status.error_info is not None
    assert status.error_info.reason == "PERMISSION_DENIED"
    assert status.error_info.metadata["tier"] == tier.value
    assert status.error_info.metadata["required_tiers"] == ",".join(
        t.value for t in Tier if t in allowed
    )
    assert upstream.stats().requests == 0  # refused before any spend


async def test_the_policy_table_denies_something() -> None:
    """The matrix above exercises both outcomes (a table allowing everything would not)."""
    policies = Settings().policies
    assert any(set(policy.tiers) != set(Tier) for policy in policies.values())
    assert all(policy.tiers for policy in policies.values())


@pytest.mark.parametrize(
    "service", ["", "viewbait.ai.v1.GatewayService", "viewbait.ai.v1.JobService"]
)
async def test_health_needs_no_credentials(gateway: Any, service: str) -> None:
    response = await gateway.health.Check(
        health_pb2.HealthCheckRequest(service=service), timeout=30
    )

    assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_answers_authenticated_callers(gateway: Any) -> None:
    # Any: types-grpcio-reflection leaves the stub's methods untyped.
    stub: Any = reflection_pb2_grpc.ServerReflectionStub(gateway.channel)
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        # grpcurl's `describe Service.Method` asks for the file holding the method.
        reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="viewbait.ai.v1.GatewayService.AnalyzeVideo"
        ),
    ]

    # No requests: the refusal comes before any is read, and a request the client is still
    # sending when the server closes the stream fails on its side as INTERNAL instead.
    refused = await gateway.expect_failure(
        lambda: _drain(stub.ServerReflectionInfo(iter(()), timeout=30))
    )
    responses = [
        r
        async for r in stub.ServerReflectionInfo(
            iter(requests), metadata=gateway.as_user(Tier.FREE), timeout=30
        )
    ]

    assert refused.code is grpc.StatusCode.UNAUTHENTICATED
    assert "no credentials" in refused.message

    services = {s.name for s in responses[0].list_services_response.service}
    assert {
        "viewbait.ai.v1.GatewayService",
        "viewbait.ai.v1.JobService",
        "grpc.health.v1.Health",
    } <= services
    assert responses[1].WhichOneof("message_response") == "file_descriptor_response"
    assert responses[1].file_descriptor_response.file_descriptor_proto


async def _drain(call: Any) -> list[Any]:
    return [response async for response in call]
