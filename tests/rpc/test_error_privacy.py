"""What a caller reads when the gateway's own dependencies fail: what happened, and the request
id to quote, never a file-system path, a database schema, a setting's environment variable,
or Gemini's own error text (which may carry paths and key-like strings of its own).

Each test provokes one class of failure against a gateway of its own over a real socket: the
model answering 4xx and 5xx with a revealing body, PostgreSQL with an unmigrated schema, and a
blob directory that cannot be written.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from viewbait.ai.v1 import job_service_pb2, job_service_pb2_grpc

from gateway.emulator import EmulatorServer
from tests.fixtures.gateways import Samples, as_user, gateway_settings
from tests.fixtures.stores import PgSettings
from tests.rpc.conftest import Gateway, RichStatus

#: A body a real upstream might send: an internal path and a key-shaped string.
REVEALING_TEXT = (
    "backend /srv/gemini/shards/07/config.yaml failed; token AIzaSyLEAKED-0000-1111-2222 "
    "rejected for project viewbait-prod"
)


def assert_private(status: RichStatus, request_id: str, *secrets: str) -> None:
    """The caller's message and details hold none of `secrets` (nor any of the usual
    giveaways), and do hold the request id."""
    details = status.trailing.get("grpc-status-details-bin", b"")
    assert isinstance(details, bytes)
    shown = status.message + details.decode("utf-8", "replace")
    for secret in (*secrets, "/srv/", "AIza", "VIEWBAIT_", "viewbait_test_", "/tmp/"):
        assert secret not in shown, (secret, status.message)
    assert request_id in status.message, status.message
    assert status.error_info is not None
    assert status.error_info.metadata["request_id"] == request_id


async def _call(running: Any, request: Message, request_id: str) -> RichStatus:
    metadata = (*as_user("privacy-user"), ("x-request-id", request_id))
    return await Gateway.expect_failure(
        lambda: running.stub.AnalyzeVideo(request, metadata=metadata, timeout=60)
    )


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (400, grpc.StatusCode.INTERNAL),
        (404, grpc.StatusCode.INTERNAL),
        (500, grpc.StatusCode.UNAVAILABLE),
        (502, grpc.StatusCode.UNAVAILABLE),
    ],
)
async def test_upstream_error_text_stays_in_the_log(
    emulator: EmulatorServer,
    start_gateway: Any,
    tmp_path: Path,
    samples: Samples,
    caplog: pytest.LogCaptureFixture,
    code: int,
    expected: grpc.StatusCode,
) -> None:
    running = await start_gateway(gateway_settings(emulator, tmp_path))
    emulator.inject("error", code=code, message=REVEALING_TEXT, rate=1.0)
    request_id = f"req-{uuid.uuid4().hex}"

    status = await _call(running, samples.fresh_request("analyze_video"), request_id)

    assert status.code is expected, status
    assert_private(status, request_id, REVEALING_TEXT, emulator.api_key, "config.yaml")
    if code < 500:
        # The operator still learns what Gemini said (the key itself redacted).
        assert any("config.yaml" in r.getMessage() for r in caplog.records)


async def test_an_unmigrated_store_names_no_schema(
    emulator: EmulatorServer,
    start_gateway: Any,
    tmp_path: Path,
    samples: Samples,
    pg_settings: PgSettings,
    pg_schema: str,
) -> None:
    settings = gateway_settings(emulator, tmp_path, store=pg_settings(migrate_on_start=False))
    running = await start_gateway(settings)
    jobs = job_service_pb2_grpc.JobServiceStub(running.channel)
    request_id = f"req-{uuid.uuid4().hex}"
    metadata = (*as_user("privacy-user"), ("x-request-id", request_id))

    status = await Gateway.expect_failure(
        lambda: jobs.SubmitJob(
            job_service_pb2.SubmitJobRequest(analyze_video=samples.request("analyze_video")),
            metadata=metadata,
            timeout=60,
        )
    )

    assert status.code is grpc.StatusCode.UNAVAILABLE, status
    assert_private(status, request_id, pg_schema)
    assert "viewbait-gateway migrate" in status.message  # what an operator runs


async def test_a_blob_directory_that_cannot_be_written_names_no_path(
    emulator: EmulatorServer, start_gateway: Any, tmp_path: Path, samples: Samples
) -> None:
    not_a_directory = tmp_path / "occupied"
    not_a_directory.write_bytes(b"a file where the blob directory should be")
    running = await start_gateway(gateway_settings(emulator, not_a_directory / "blobs"))
    jobs = job_service_pb2_grpc.JobServiceStub(running.channel)
    request_id = f"req-{uuid.uuid4().hex}"
    metadata = (*as_user("privacy-user"), ("x-request-id", request_id))

    status = await Gateway.expect_failure(
        lambda: jobs.SubmitJob(
            job_service_pb2.SubmitJobRequest(
                compute_attention_heatmap=samples.fresh_request("compute_attention_heatmap")
            ),
            metadata=metadata,
            timeout=60,
        )
    )

    assert status.code is grpc.StatusCode.UNAVAILABLE, status
    assert_private(status, request_id, str(tmp_path), "occupied")
