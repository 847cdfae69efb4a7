"""Failures as a caller sees them: status code, message, and google.rpc details.

Bad input answers INVALID_ARGUMENT with BadRequest field violations before any upstream call
(SubmitJob refuses it the same way); an unknown job id is NOT_FOUND; upstream faults injected in
the emulator come back as the codes of `gateway.rpc.status.STATUS_CODES`, with ErrorInfo reasons and
RetryInfo; a request above the server's receive limit is refused with RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from viewbait.ai.v1 import common_pb2, job_service_pb2, operations_pb2

from gateway import errors
from gateway.rpc.status import ERROR_DOMAIN, RETRY_AFTER_KEY, STATUS_CODES

pytestmark = pytest.mark.asyncio(loop_scope="module")


#: case -> (operation, its request made bad given the samples and the bounds, the fields the
#: violations must name)
BAD_REQUESTS: dict[str, tuple[str, Callable[[Any, Any], Any], set[str]]] = {
    "bad video id and long title": (
        "analyze_video",
        lambda samples, bounds: samples.request(
            "analyze_video", video_id="bad id!", title="x" * (bounds.max_title_chars + 1)
        ),
        {"video_id", "title"},
    ),
    "analytics not json": (
        "suggest_thumbnail_concepts",
        lambda samples, bounds: samples.request(
            "suggest_thumbnail_concepts", analytics_json="{views: many"
        ),
        {"analytics_json"},
    ),
    "not an image": (
        "compute_attention_heatmap",
        lambda samples, bounds: samples.request(
            "compute_attention_heatmap",
            image=common_pb2.Image(data=b"definitely not an image", mime_type="image/png"),
        ),
        {"image.data"},
    ),
    "no references": (
        "check_channel_consistency",
        lambda samples, bounds: samples.request("check_channel_consistency", references=[]),
        {"references"},
    ),
    "empty prompt and too many variations": (
        "generate_thumbnail",
        lambda samples, bounds: samples.request(
            "generate_thumbnail", prompt=" ", variations=bounds.max_variations + 1
        ),
        {"prompt", "variations"},
    ),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
async def test_bad_input_is_invalid_argument_with_field_violations(
    gateway: Any, upstream: Any, samples: Any, case: str
) -> None:
    name, make_request, fields = BAD_REQUESTS[case]
    request = make_request(samples, gateway.settings.bounds)
    request_id = f"req-{uuid.uuid4().hex}"
    metadata = gateway.as_service(request_id=request_id)
    received: list[Any] = []

    async def call() -> None:
        # Message by message, so a stream that said anything before failing is noticed.
        method = getattr(gateway.stub, gateway.operation(name).rpc)
        if gateway.operation(name).streaming:
            async for message in method(request, metadata=metadata, timeout=30):
                received.append(message)
        else:
            received.append(await method(request, metadata=metadata, timeout=30))

    status = await gateway.expect_failure(call)

    assert status.code is grpc.StatusCode.INVALID_ARGUMENT
    assert {field.split("[")[0] for field, _ in status.violations} == fields, status.violations
    assert all(description for _, description in status.violations)
    for field, description in status.violations:
        assert f"{field}: {description}" in status.message
    assert status.error_info is not None
    assert status.error_info.reason == "INVALID_ARGUMENT"
    assert status.error_info.domain == ERROR_DOMAIN
    assert status.error_info.metadata["request_id"] == request_id
    assert received == []
    assert upstream.stats().requests == 0  # refused before anything was spent


async def test_violations_name_the_bound(gateway: Any, samples: Any) -> None:
    limit = gateway.settings.bounds.max_title_chars
    request = samples.request("analyze_video", title="x" * (limit + 1))

    status = await gateway.failure(
        gateway.operation("analyze_video"), request, gateway.as_service()
    )

    assert status.violations == [("title", f"is {limit + 1} characters; the limit is {limit}")]


JOB_CALLS: dict[str, Any] = {
    "GetJob": job_service_pb2.GetJobRequest(job_id=str(uuid.uuid4())),
    "WatchJob": job_service_pb2.WatchJobRequest(job_id=str(uuid.uuid4())),
    "CancelJob": job_service_pb2.CancelJobRequest(job_id="not-a-job-id"),
    "RetryJob": job_service_pb2.RetryJobRequest(job_id=str(uuid.uuid4())),
}


@pytest.mark.parametrize("rpc", list(JOB_CALLS))
async def test_an_unknown_job_is_not_found_with_a_message(gateway: Any, rpc: str) -> None:
    method = getattr(gateway.jobs, rpc)

    async def call() -> None:
        answer = method(JOB_CALLS[rpc], metadata=gateway.as_service(), timeout=30)
        if rpc == "WatchJob":
            async for _ in answer:
                pass
        else:
            await answer

    status = await gateway.expect_failure(call)

    assert status.code is grpc.StatusCode.NOT_FOUND
    assert JOB_CALLS[rpc].job_id in status.message
    assert status.error_info is not None
    assert status.error_info.reason == "NOT_FOUND"


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
async def test_submit_job_refuses_bad_input_as_the_unary_rpc_does(
    gateway: Any, upstream: Any, samples: Any, case: str
) -> None:
    name, make_request, fields = BAD_REQUESTS[case]
    request = job_service_pb2.SubmitJobRequest(
        **{name: make_request(samples, gateway.settings.bounds)}
    )

    status = await gateway.expect_failure(
        lambda: gateway.jobs.SubmitJob(request, metadata=gateway.as_service(), timeout=30)
    )

    assert status.code is grpc.StatusCode.INVALID_ARGUMENT
    assert {field.split("[")[0] for field, _ in status.violations} == fields, status.violations
    assert upstream.stats().requests == 0


#: case -> (fault rule for the emulator, the domain error it must become, upstream requests it
#: takes: None for every attempt the adapter may make)
FAULTS: dict[str, tuple[dict[str, Any], type[errors.GatewayError], int | None]] = {
    "503 on every request": (
        {"kind": "unavailable", "rate": 1.0},
        errors.UpstreamUnavailable,
        None,
    ),
    "429 on every request": (
        {"kind": "rate_limited", "rate": 1.0, "retry_delay_s": 0.05},
        errors.UpstreamUnavailable,
        None,
    ),
    "400 from Gemini": ({"kind": "error", "code": 400, "count": 1}, errors.UpstreamRejected, 1),
    "answer stopped for safety": ({"kind": "safety", "count": 1}, errors.SafetyBlocked, 1),
    "prompt blocked": ({"kind": "prompt_blocked", "count": 1}, errors.SafetyBlocked, 1),
    # The operation asks once more when an answer does not fit its schema.
    "answer off its schema": (
        {"kind": "invalid_answer", "rate": 1.0},
        errors.UpstreamBadResponse,
        2,
    ),
}


@pytest.mark.parametrize("case", list(FAULTS))
async def test_upstream_faults_map_to_their_status(
    gateway: Any, upstream: Any, samples: Any, case: str
) -> None:
    rule, error, attempts = FAULTS[case]
    upstream.inject(**rule)

    status = await gateway.failure(
        gateway.operation("analyze_video"),
        samples.request("analyze_video"),
        gateway.as_service(),
    )

    assert status.code is STATUS_CODES[error]
    assert status.error_info is not None
    assert status.error_info.reason == error.reason
    assert status.error_info.domain == ERROR_DOMAIN
    assert status.message
    assert upstream.api_key not in status.message
    expected = gateway.settings.gemini.max_attempts if attempts is None else attempts
    assert upstream.stats().count(outcome=rule["kind"]) == expected


async def test_upstream_retry_after_reaches_the_caller(
    gateway: Any, upstream: Any, samples: Any
) -> None:
    upstream.inject("rate_limited", rate=1.0, retry_delay_s=0.05)

    status = await gateway.failure(
        gateway.operation("analyze_video"),
        samples.request("analyze_video"),
        gateway.as_service(),
    )

    assert status.code is grpc.StatusCode.UNAVAILABLE
    assert status.retry_delay_s == pytest.approx(0.05)
    assert status.trailing[RETRY_AFTER_KEY] == "50"


async def test_upstream_fault_during_the_stream_ends_it_with_the_mapped_status(
    gateway: Any, upstream: Any, samples: Any
) -> None:
    upstream.inject("image_safety", count=1)

    status = await gateway.failure(
        gateway.operation("generate_thumbnail"),
        samples.request("generate_thumbnail"),
        gateway.as_service(),
    )

    assert status.code is STATUS_CODES[errors.SafetyBlocked]
    assert status.error_info is not None
    assert status.error_info.reason == errors.SafetyBlocked.reason
    assert "IMAGE_SAFETY" in status.message


@pytest.mark.parametrize("name", ["compute_attention_heatmap", "generate_thumbnail"])
async def test_oversized_request_is_refused_by_the_server_limit(
    gateway: Any, upstream: Any, samples: Any, name: str
) -> None:
    limit = gateway.settings.server.max_receive_message_bytes
    blob = common_pb2.Image(data=os.urandom(limit + 1024), mime_type="image/png")
    if name == "compute_attention_heatmap":
        request = samples.request(name, image=blob)
    else:
        reference = operations_pb2.ReferenceImage(
            image=blob, role=operations_pb2.REFERENCE_ROLE_STYLE
        )
        request = samples.request(name, references=[reference])
    operation = gateway.operation(name)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gateway.call(operation, request, gateway.as_service())

    assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert upstream.stats().requests == 0
    # The connection and the server are fine: the same caller's next request is served.
    answered = await gateway.call(operation, samples.request(name), gateway.as_service())
    assert answered[-1].HasField("metadata" if not operation.streaming else "summary")
