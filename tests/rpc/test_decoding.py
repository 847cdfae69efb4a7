"""Requests whose bytes do not parse, sent raw over a real channel (identity serializers): each
answers INVALID_ARGUMENT with ErrorInfo, the request id, and a field violation naming the field
whose text is not UTF-8, never UNKNOWN. Health `List` answers every status `Check` does.
"""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2
from viewbait.ai.v1 import common_pb2, job_service_pb2, operations_pb2

from gateway.rpc.decoding import undecodable_field
from gateway.rpc.status import ERROR_DOMAIN
from gateway.server import (
    LIMITER_HEALTH_SERVICE,
    STORE_HEALTH_SERVICE,
    UPSTREAM_HEALTH_SERVICE,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

NOT_UTF8 = b"\xff\xfe\xc3("


def _key(number: int) -> bytes:
    """The wire key of a length-delimited field (field numbers here are below 16)."""
    assert number < 16
    return bytes([number << 3 | 2])


def _with_bad_text(message: Message, path: list[str]) -> bytes:
    """`message`'s wire bytes plus one more occurrence of the string field at `path` (names of
    fields from the top, nested messages on the way) holding bytes that are not UTF-8."""
    fields: list[descriptor.FieldDescriptor] = []
    current = message.DESCRIPTOR
    for name in path:
        field = current.fields_by_name[name]
        fields.append(field)
        current = field.message_type
    payload = NOT_UTF8
    for field in reversed(fields):
        payload = _key(field.number) + bytes([len(payload)]) + payload
    return message.SerializeToString() + payload


#: case -> (method, raw request, the field the violation must name)
CASES: dict[str, tuple[str, Any, str]] = {
    "top-level string": (
        "/viewbait.ai.v1.GatewayService/AnalyzeVideo",
        lambda samples: _with_bad_text(samples.request("analyze_video"), ["title"]),
        "title",
    ),
    "repeated message's string": (
        "/viewbait.ai.v1.GatewayService/CheckChannelConsistency",
        # The samples hold three references: the fourth has the bad mime type.
        lambda samples: _with_bad_text(
            samples.request("check_channel_consistency"), ["references", "mime_type"]
        ),
        "references[3].mime_type",
    ),
    "streaming rpc": (
        "/viewbait.ai.v1.GatewayService/GenerateThumbnail",
        lambda samples: _with_bad_text(samples.request("generate_thumbnail"), ["prompt"]),
        "prompt",
    ),
    "job submission": (
        "/viewbait.ai.v1.JobService/SubmitJob",
        lambda samples: _with_bad_text(
            job_service_pb2.SubmitJobRequest(analyze_video=samples.request("analyze_video")),
            ["analyze_video", "description"],
        ),
        "analyze_video.description",
    ),
    "broken wire format": (
        "/viewbait.ai.v1.JobService/GetJob",
        lambda samples: b"\x0a\x40only a few bytes",
        "request",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_undecodable_request_is_invalid_argument_naming_the_field(
    gateway: Any, samples: Any, case: str
) -> None:
    method, make, field = CASES[case]
    request_id = f"req-{uuid.uuid4().hex}"
    metadata = gateway.as_service(request_id=request_id)
    streaming = method.endswith("/GenerateThumbnail")
    raw = make(samples)

    async def call() -> None:
        if streaming:
            stream = gateway.channel.unary_stream(method)
            async for _ in stream(raw, metadata=metadata, timeout=30):
                raise AssertionError("an undecodable request produced a message")
        else:
            await gateway.channel.unary_unary(method)(raw, metadata=metadata, timeout=30)

    status = await gateway.expect_failure(call)
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT, status
    assert status.error_info is not None
    assert status.error_info.reason == "INVALID_ARGUMENT"
    assert status.error_info.domain == ERROR_DOMAIN
    assert status.error_info.metadata["request_id"] == request_id
    assert request_id in status.message
    assert [name for name, _ in status.violations] == [field]
    assert "DecodeError" not in status.message


async def test_undecodable_field_needs_bad_text() -> None:
    request = operations_pb2.CheckChannelConsistencyRequest(
        video_id="dQw4w9WgXcQ", references=[common_pb2.Image(data=b"\xff\xfe")]
    )
    data = request.SerializeToString()
    # Bytes fields may hold anything: only text must be UTF-8.
    assert undecodable_field(data, request.DESCRIPTOR) is None
    bad = data + _key(1) + bytes([len(NOT_UTF8)]) + NOT_UTF8
    assert undecodable_field(bad, request.DESCRIPTOR) == "video_id"


async def test_health_list_answers_what_check_does(gateway: Any) -> None:
    listed = await gateway.health.List(health_pb2.HealthListRequest(), timeout=30)
    names = set(listed.statuses)
    expected = {
        "",
        "viewbait.ai.v1.GatewayService",
        "viewbait.ai.v1.JobService",
        "viewbait.ai.v1.UsageService",
        STORE_HEALTH_SERVICE,
        LIMITER_HEALTH_SERVICE,
        UPSTREAM_HEALTH_SERVICE,
    }
    assert expected <= names, names
    assert listed.statuses[""].status == health_pb2.HealthCheckResponse.SERVING
    for name in names:
        checked = await gateway.health.Check(
            health_pb2.HealthCheckRequest(service=name), timeout=30
        )
        assert listed.statuses[name].status == checked.status, name


async def test_health_list_is_reachable_without_credentials(gateway: Any) -> None:
    # Probes carry no credentials; List is a probe's call as Check is.
    call = gateway.channel.unary_unary(
        "/grpc.health.v1.Health/List",
        request_serializer=health_pb2.HealthListRequest.SerializeToString,
        response_deserializer=health_pb2.HealthListResponse.FromString,
    )
    listed = await call(health_pb2.HealthListRequest(), timeout=30)
    assert isinstance(listed, health_pb2.HealthListResponse)
    assert listed.statuses, "List named no service"
