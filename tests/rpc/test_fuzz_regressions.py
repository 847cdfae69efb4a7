"""Requests the surface fuzzer (test_fuzz_surface.py) found mishandled, each pinned down.

- A status echoing a long input (a 10 000-character job id in NOT_FOUND) outgrew the 8 KiB of
  trailing metadata a client accepts: the caller read RESOURCE_EXHAUSTED "Stream removed"
  instead of the error. Statuses are bounded now, and still end with the request id.
- Health checking parsed its requests outside every interceptor: bytes that do not parse were
  UNKNOWN "Unexpected DecodeError". They are INVALID_ARGUMENT with a field violation now.
- Text that PostgreSQL cannot store (NUL) reached it from an idempotency key or a ListJobs
  reason filter and failed as INTERNAL. Keys with control characters, and reasons that are not
  UPPER_SNAKE_CASE codes, are refused as bad input now.
"""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest
from viewbait.ai.v1 import job_service_pb2

from gateway import errors
from gateway.rpc.status import MAX_MESSAGE_BYTES, to_rpc_status

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.mark.parametrize("piece", ["a", "🦄"])
async def test_an_error_echoing_a_huge_input_still_reaches_the_caller(
    gateway: Any, piece: str
) -> None:
    request_id = f"req-{uuid.uuid4().hex}"
    status = await gateway.expect_failure(
        lambda: gateway.jobs.GetJob(
            job_service_pb2.GetJobRequest(job_id=piece * 10_000),
            metadata=gateway.as_service(request_id=request_id),
            timeout=30,
        )
    )
    assert status.code is grpc.StatusCode.NOT_FOUND, status
    assert status.message.endswith(f"(request id {request_id})")
    assert status.error_info is not None
    assert status.error_info.metadata["request_id"] == request_id


async def test_every_part_of_a_status_is_bounded() -> None:
    huge = "é" * 50_000
    error = errors.InvalidArgument(
        [errors.FieldViolation(huge, huge) for _ in range(20)], metadata={huge: huge}
    )
    status = to_rpc_status(error, request_id="r" * 128)
    assert len(status.message.encode()) <= MAX_MESSAGE_BYTES + len(" (request id )") + 128
    assert status.message.endswith("r" * 128 + ")")
    total = sum(len(value) for _, value in status.trailing_metadata)
    assert total < 5 * 1024, total


async def test_undecodable_health_check_is_invalid_argument(gateway: Any) -> None:
    # Field 1 (service) with a length running past the end of the message.
    raw = b"\x0a\x40only a few bytes"
    status = await gateway.expect_failure(
        lambda: gateway.channel.unary_unary("/grpc.health.v1.Health/Check")(raw, timeout=30)
    )
    assert status.code is grpc.StatusCode.INVALID_ARGUMENT, status
    assert status.error_info is not None
    assert status.violations and status.violations[0][0] == "request"


async def test_undecodable_health_watch_is_invalid_argument(gateway: Any) -> None:
    raw = b"\x0a\x02\xff\xfe"  # service: not UTF-8

    async def watch() -> None:
        async for _ in gateway.channel.unary_stream("/grpc.health.v1.Health/Watch")(
            raw, timeout=30
        ):
            raise AssertionError("an undecodable watch produced a message")

    status = await gateway.expect_failure(watch)
    assert status.code is grpc.StatusCode.INVALID_ARGUMENT, status
    assert [field for field, _ in status.violations] == ["service"]


@pytest.mark.parametrize("key", ["key\x00", "two\nlines", "\x1b[0m"])
async def test_an_idempotency_key_with_control_characters_is_refused(
    gateway: Any, samples: Any, key: str
) -> None:
    # PostgreSQL's text cannot hold NUL: such a key reached the store and failed as INTERNAL.
    submit = job_service_pb2.SubmitJobRequest(
        analyze_video=samples.request("analyze_video"), idempotency_key=key
    )
    status = await gateway.expect_failure(
        lambda: gateway.jobs.SubmitJob(submit, metadata=gateway.as_service(), timeout=30)
    )
    assert status.code is grpc.StatusCode.INVALID_ARGUMENT, status
    assert [field for field, _ in status.violations] == ["idempotency_key"]

    streamed = gateway.operation("generate_thumbnail")
    request = samples.request("generate_thumbnail", idempotency_key=key)
    status = await gateway.failure(streamed, request, gateway.as_service())
    assert status.code is grpc.StatusCode.INVALID_ARGUMENT, status
    assert [field for field, _ in status.violations] == ["idempotency_key"]


@pytest.mark.parametrize("reason", ["SAFETY\x00", "safety_blocked", "X" * 100])
async def test_a_job_filter_reason_that_is_no_reason_is_refused(gateway: Any, reason: str) -> None:
    status = await gateway.expect_failure(
        lambda: gateway.jobs.ListJobs(
            job_service_pb2.ListJobsRequest(error_reasons=[reason]),
            metadata=gateway.as_service(),
            timeout=30,
        )
    )
    assert status.code is grpc.StatusCode.INVALID_ARGUMENT, status
    assert [field for field, _ in status.violations] == ["error_reasons"]
