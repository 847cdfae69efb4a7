"""OpenTelemetry tracing end to end: real `python -m gateway serve` / `worker` processes export
their spans over OTLP/gRPC, configured only by `OTEL_*` variables, to an OTLP receiver this test
runs on loopback (a gRPC server implementing opentelemetry-proto's `TraceService/Export`); the
tests read the span trees back from what it received.

- An RPC is one tree under the caller's `traceparent`: validate, admit, the cache lookup, the
  coalescing, the run and its upstream attempt, the store write; the RPC's JSON log line
  carries its trace id.
- A cache hit is the RPC span with validate and admit only, marked as a hit (admit only when
  the same request was checked before: `Pipeline.recall`).
- A job submitted with a `traceparent` and run by a worker process on PostgreSQL is one trace
  with the request that submitted it: the worker's claim and run spans are children of the
  submitting RPC's span.
- With tracing off the caller's trace id still reaches the log lines.
- `OTEL_*` values the gateway cannot honour stop it at start.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from grpc import aio
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2 as otlp_common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from viewbait.ai.v1 import (
    gateway_service_pb2,
    gateway_service_pb2_grpc,
    job_pb2,
    job_service_pb2,
    job_service_pb2_grpc,
    operations_pb2,
)

from gateway.cli import main as cli_main
from gateway.emulator import EmulatorServer
from gateway.telemetry import tracing
from gateway.telemetry.export import OutageGuard, tcp_probe
from gateway.testing.postgres import free_port
from tests.fixtures.gateways import SERVICE_TOKEN, as_user, eventually
from tests.fixtures.stores import DATABASE_URL

TIMEOUT_S = 30
RPC_SPAN = "viewbait.ai.v1.GatewayService/AnalyzeVideo"
SUBMIT_SPAN = "viewbait.ai.v1.JobService/SubmitJob"
USER = "user-traced"


# -- the OTLP receiver -------------------------------------------------------------------------


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as the receiver got it (ids in hex)."""

    service: str
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    attributes: dict[str, Any]
    status_code: int


def _value(value: otlp_common_pb2.AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return None if kind is None else getattr(value, kind)


class OtlpReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """The OTLP trace service of a collector, keeping every span it is sent."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spans: list[ReceivedSpan] = []
        self.port = 0
        #: Export calls received, answered or refused.
        self.calls = 0
        #: While set, every export is refused UNAVAILABLE (a collector that is down).
        self.refusing = False

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        with self._lock:
            self.calls += 1
        if self.refusing:
            context.abort(grpc.StatusCode.UNAVAILABLE, "the collector is down")
        received = []
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.append(
                        ReceivedSpan(
                            service=str(resource.get("service.name")),
                            name=span.name,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            kind=span.kind,
                            attributes={a.key: _value(a.value) for a in span.attributes},
                            status_code=span.status.code,
                        )
                    )
        with self._lock:
            self._spans.extend(received)
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self, trace_id: str) -> list[ReceivedSpan]:
        """The spans of one trace received so far."""
        with self._lock:
            return [span for span in self._spans if span.trace_id == trace_id]

    def env(self, service: str) -> dict[str, str]:
        """The `OTEL_*` variables that make a gateway export its spans here, quickly."""
        return {
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{self.port}",
            "OTEL_SERVICE_NAME": service,
            "OTEL_BSP_SCHEDULE_DELAY": "50",
        }


@pytest.fixture
def otlp_receiver() -> Iterator[OtlpReceiver]:
    """An OTLP/gRPC trace receiver on 127.0.0.1 (its own threads: it answers while the test's
    event loop waits for a subprocess)."""
    receiver = OtlpReceiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    receiver.port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield receiver
    finally:
        server.stop(grace=None)


# -- helpers -----------------------------------------------------------------------------------


def new_traceparent() -> tuple[str, str, str]:
    """(traceparent, its trace id, its span id): a sampled remote parent, as Next.js sends."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def traced(traceparent: str, request_id: str) -> tuple[tuple[str, str], ...]:
    """The trusted backend's metadata for `USER`, with a W3C trace context and a request id."""
    return (*as_user(USER), ("traceparent", traceparent), ("x-request-id", request_id))


async def spans_of(
    receiver: OtlpReceiver, trace_id: str, names: set[str]
) -> dict[str, ReceivedSpan]:
    """The spans of `trace_id` by name, once every name in `names` has arrived."""
    await eventually(
        lambda: names <= {span.name for span in receiver.spans(trace_id)},
        f"spans {sorted(names)} of trace {trace_id}",
    )
    return {span.name: span for span in receiver.spans(trace_id)}


def upstream_span(spans: Mapping[str, ReceivedSpan]) -> ReceivedSpan:
    (attempt,) = [span for name, span in spans.items() if name.startswith("generate_content ")]
    return attempt


def analyze(video_id: str) -> operations_pb2.AnalyzeVideoRequest:
    return operations_pb2.AnalyzeVideoRequest(video_id=video_id, title="A traced treehouse")


async def analyze_videos(
    address: str, *calls: tuple[str, Sequence[tuple[str, str]]]
) -> list[gateway_service_pb2.AnalyzeVideoResponse]:
    """AnalyzeVideo for each (video id, metadata), one after the other, on one channel."""
    async with aio.insecure_channel(address) as channel:
        stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
        return [
            await stub.AnalyzeVideo(analyze(video_id), metadata=metadata, timeout=TIMEOUT_S)
            for video_id, metadata in calls
        ]


def traced_gateway(spawn_gateway: Any, receiver: OtlpReceiver) -> Any:
    """`python -m gateway serve` in local mode, exporting its spans to `receiver`."""
    return spawn_gateway(
        VIEWBAIT_AUTH__SERVICE_TOKEN=SERVICE_TOKEN, **receiver.env("gateway-under-test")
    )


# -- an RPC and a cache hit ----------------------------------------------------------------------


async def test_an_rpc_and_its_stages_are_one_tree_under_the_callers_traceparent(
    otlp_receiver: OtlpReceiver, spawn_gateway: Any
) -> None:
    gateway = traced_gateway(spawn_gateway, otlp_receiver)
    traceparent, trace_id, caller_span = new_traceparent()
    (response,) = await analyze_videos(
        gateway.address, ("dQw4w9WgXcQ", traced(traceparent, "req-traced-1"))
    )
    assert not response.metadata.cached

    spans = await spans_of(
        otlp_receiver,
        trace_id,
        {RPC_SPAN, "validate", "admit", "cache.lookup", "coalesce", "job.claim", "operation.run"}
        | {"store.write"},
    )
    rpc = spans[RPC_SPAN]
    assert (rpc.parent_span_id, rpc.kind) == (caller_span, trace_pb2.Span.SPAN_KIND_SERVER)
    assert rpc.service == "gateway-under-test"
    assert rpc.attributes["rpc.system"] == "grpc"
    assert rpc.attributes["rpc.grpc.status_code"] == 0
    assert rpc.attributes["viewbait.request_id"] == "req-traced-1"
    assert rpc.attributes["viewbait.operation"] == "analyze_video"
    assert rpc.attributes["viewbait.cache"] == "miss"
    attempt = upstream_span(spans)
    parents = {name: span.parent_span_id for name, span in spans.items()}
    assert parents == {
        RPC_SPAN: caller_span,
        "validate": rpc.span_id,
        "admit": rpc.span_id,
        "cache.lookup": rpc.span_id,
        "coalesce": rpc.span_id,
        "job.claim": rpc.span_id,
        "operation.run": rpc.span_id,
        attempt.name: spans["operation.run"].span_id,
        "store.write": rpc.span_id,
    }
    assert spans["cache.lookup"].attributes["viewbait.cache"] == "miss"
    job_id = spans["coalesce"].attributes["viewbait.job_id"]
    assert spans["coalesce"].attributes["viewbait.job_created"] is True
    assert spans["operation.run"].attributes["viewbait.job_id"] == job_id
    assert spans["store.write"].attributes["viewbait.job_id"] == job_id
    assert attempt.kind == trace_pb2.Span.SPAN_KIND_CLIENT
    assert attempt.attributes["gen_ai.request.model"] == attempt.name.split(" ", 1)[1]
    assert (attempt.attributes["viewbait.attempt"], attempt.attributes["viewbait.outcome"]) == (
        1,
        "ok",
    )
    assert attempt.attributes["gen_ai.usage.input_tokens"] > 0
    # Who asked is in the logs, not in the spans.
    assert all(USER not in str(span.attributes) for span in spans.values())

    (line,) = [
        r
        for r in gateway.log_records()
        if r["msg"] == "rpc finished" and r.get("request_id") == "req-traced-1"
    ]
    assert (line["trace_id"], line["span_id"]) == (trace_id, rpc.span_id)
    assert line["user_id"] == USER


async def test_a_repeated_cache_hit_is_the_rpc_span_with_admit_only(
    otlp_receiver: OtlpReceiver, spawn_gateway: Any
) -> None:
    gateway = traced_gateway(spawn_gateway, otlp_receiver)
    first, _, _ = new_traceparent()
    hit, hit_trace, caller_span = new_traceparent()
    _, response = await analyze_videos(
        gateway.address,
        ("hitVideo001", traced(first, "req-miss")),
        ("hitVideo001", traced(hit, "req-hit")),
    )
    assert response.metadata.cached

    spans = await spans_of(otlp_receiver, hit_trace, {RPC_SPAN, "admit"})
    # Spans are exported in the order they end, and the RPC's ends after everything a hit does
    # (it starts no background work): nothing else of this trace is on its way. The request was
    # checked when it first came (`Pipeline.recall`): no validation span this time.
    rpc = spans[RPC_SPAN]
    assert sorted(spans) == sorted([RPC_SPAN, "admit"])
    assert rpc.parent_span_id == caller_span
    assert rpc.attributes["viewbait.cache"] == "hot_hit"
    assert rpc.attributes["viewbait.recalled"] is True
    assert spans["admit"].parent_span_id == rpc.span_id


# -- a job, submitted here and run by a worker process --------------------------------------------


async def test_a_job_run_by_a_worker_elsewhere_is_in_the_trace_of_its_submit(
    # The schema first: fixtures end in reverse order, so it is dropped after the processes.
    pg_schema: str,
    otlp_receiver: OtlpReceiver,
    spawn_gateway: Any,
    emulator: EmulatorServer,
) -> None:
    shared = {
        "VIEWBAIT_GEMINI__API_KEY": emulator.api_key,
        "VIEWBAIT_GEMINI__BASE_URL": emulator.base_url,
        "VIEWBAIT_STORE__DATABASE_URL": DATABASE_URL,
        "VIEWBAIT_STORE__SCHEMA": pg_schema,
        "VIEWBAIT_STORE__MIGRATE_ON_START": "true",
    }
    # Submits only: the job can run nowhere but in the worker process.
    submitting = spawn_gateway(
        VIEWBAIT_AUTH__SERVICE_TOKEN=SERVICE_TOKEN,
        VIEWBAIT_JOBS__WORKERS="0",
        **shared,
        **otlp_receiver.env("submitting-replica"),
    )
    spawn_gateway("worker", **shared, **otlp_receiver.env("worker-replica"))
    traceparent, trace_id, caller_span = new_traceparent()
    async with aio.insecure_channel(submitting.address) as channel:
        jobs = job_service_pb2_grpc.JobServiceStub(channel)
        submitted = await jobs.SubmitJob(
            job_service_pb2.SubmitJobRequest(analyze_video=analyze("jobVideo001")),
            metadata=traced(traceparent, "req-submit"),
            timeout=TIMEOUT_S,
        )
        job_id = submitted.job.id
        status = submitted.job.status
        for _ in range(TIMEOUT_S * 20):
            status = (
                await jobs.GetJob(
                    job_service_pb2.GetJobRequest(job_id=job_id),
                    metadata=as_user(USER),
                    timeout=TIMEOUT_S,
                )
            ).job.status
            if status == job_pb2.JOB_STATUS_SUCCEEDED:
                break
            await asyncio.sleep(0.05)
    assert status == job_pb2.JOB_STATUS_SUCCEEDED

    spans = await spans_of(
        otlp_receiver,
        trace_id,
        {SUBMIT_SPAN, "validate", "admit", "coalesce", "job.claim", "job.run", "operation.run"}
        | {"store.write"},
    )
    submit = spans[SUBMIT_SPAN]
    assert (submit.service, submit.parent_span_id) == ("submitting-replica", caller_span)
    assert submit.attributes["viewbait.operation"] == "analyze_video"
    assert spans["coalesce"].attributes["viewbait.job_id"] == job_id
    assert spans["coalesce"].parent_span_id == submit.span_id
    # The worker's spans: children of the span that submitted the job, in the same trace.
    claim, run = spans["job.claim"], spans["job.run"]
    assert {claim.service, run.service} == {"worker-replica"}
    assert claim.parent_span_id == run.parent_span_id == submit.span_id
    assert claim.attributes["viewbait.job_id"] == run.attributes["viewbait.job_id"] == job_id
    assert run.attributes["viewbait.job_attempt"] == 1
    assert spans["operation.run"].parent_span_id == run.span_id
    assert upstream_span(spans).parent_span_id == spans["operation.run"].span_id
    assert spans["store.write"].parent_span_id == run.span_id
    assert {span.service for span in spans.values()} == {"submitting-replica", "worker-replica"}


# -- tracing off, and settings it refuses ---------------------------------------------------------


async def test_with_tracing_off_the_callers_trace_id_still_reaches_the_log_lines(
    spawn_gateway: Any,
) -> None:
    gateway = spawn_gateway(VIEWBAIT_AUTH__SERVICE_TOKEN=SERVICE_TOKEN)
    traceparent, trace_id, caller_span = new_traceparent()
    await analyze_videos(
        gateway.address,
        ("untraced001", traced(traceparent, "req-off")),
        ("untraced002", as_user(USER)),
    )

    lines = [r for r in gateway.log_records() if r["msg"] == "rpc finished"]
    (traced_line,) = [r for r in lines if r.get("request_id") == "req-off"]
    # No span of its own: the caller's span is the current one.
    assert (traced_line["trace_id"], traced_line["span_id"]) == (trace_id, caller_span)
    (untraced_line,) = [r for r in lines if r.get("request_id") != "req-off"]
    assert "trace_id" not in untraced_line
    assert not any(r["msg"] == "tracing on" for r in gateway.log_records())


def test_tracing_is_off_unless_an_exporter_is_configured() -> None:
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}

    assert tracing.exporters({}) == []
    assert tracing.exporters({"OTEL_SERVICE_NAME": "gateway"}) == []
    assert tracing.exporters(endpoint) == ["otlp"]
    assert tracing.exporters({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4317"}) == ["otlp"]
    assert tracing.exporters({"OTEL_TRACES_EXPORTER": "console"}) == ["console"]
    assert tracing.exporters({**endpoint, "OTEL_TRACES_EXPORTER": "none"}) == []
    assert tracing.exporters({**endpoint, "OTEL_SDK_DISABLED": "true"}) == []


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"OTEL_TRACES_EXPORTER": "jaeger"}, "OTEL_TRACES_EXPORTER"),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            },
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_TRACES_SAMPLER": "sometimes"},
            "OTEL_TRACES_SAMPLER",
        ),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317",
                "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                "OTEL_TRACES_SAMPLER_ARG": "2",
            },
            "OTEL_TRACES_SAMPLER_ARG",
        ),
    ],
)
def test_otel_values_the_gateway_cannot_honour_stop_it(
    env: dict[str, str],
    named: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (problem,) = tracing.environment_problems(env)
    assert problem.startswith(named)
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    assert cli_main(["check-config"]) == 2
    assert named in capsys.readouterr().err


def test_otel_values_it_honours_pass() -> None:
    env = {
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4317",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.25",
    }

    assert tracing.environment_problems(env) == []
    # Tracing off: nothing it would export with is checked.
    assert tracing.environment_problems({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}) == []


@pytest.mark.parametrize(
    ("sampler", "flags", "recorded"),
    [
        (None, "01", True),
        (None, "00", False),
        ("always_off", "01", False),
        ("always_on", "00", True),
        ("parentbased_traceidratio", "01", True),
    ],
)
async def test_the_sampler_decides_once_per_trace_and_spans_below_follow(
    sampler: str | None,
    flags: str,
    recorded: bool,
    otlp_receiver: OtlpReceiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in otlp_receiver.env("in-process").items():
        monkeypatch.setenv(name, value)
    if sampler is not None:
        monkeypatch.setenv("OTEL_TRACES_SAMPLER", sampler)
        monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0")  # read by the ratio samplers only
    _, trace_id, caller_span = new_traceparent()
    tracing.acquire()
    try:
        rpc = tracing.start_rpc(
            RPC_SPAN, "req-sampled", f"00-{trace_id}-{caller_span}-{flags}", None
        )
        assert rpc is not None
        with tracing.leaf("validate") as validate:
            pass
        traceparent, _ = tracing.current_traceparent()
        rpc.end(0, "OK")
    finally:
        await tracing.release()  # flushes what was recorded

    assert rpc.span.get_span_context().trace_flags.sampled is recorded
    # The trace goes on through jobs with the decision in its flags.
    span_id = f"{rpc.span.get_span_context().span_id:016x}"
    assert traceparent == f"00-{trace_id}-{span_id}-{'01' if recorded else '00'}"
    assert validate.get_span_context().trace_flags.sampled is recorded
    received = sorted(span.name for span in otlp_receiver.spans(trace_id))
    assert received == (sorted([RPC_SPAN, "validate"]) if recorded else [])


# -- a collector that does not answer ----------------------------------------------------------


def _finished_spans(count: int) -> list[ReadableSpan]:
    """`count` ended spans of the SDK's own making (what the batch processor hands over)."""
    provider = TracerProvider(shutdown_on_exit=False)
    tracer = provider.get_tracer("test")
    spans = []
    for n in range(count):
        span = tracer.start_span(f"span-{n}")
        span.end()
        assert isinstance(span, ReadableSpan)
        spans.append(span)
    return spans


def test_while_the_collector_is_down_batches_are_dropped_unsent_until_it_answers_again(
    otlp_receiver: OtlpReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.telemetry.tracing")
    now = [1_000_000.0]
    endpoint = f"http://127.0.0.1:{otlp_receiver.port}"
    guard = OutageGuard(OTLPSpanExporter(endpoint=endpoint, timeout=1), clock=lambda: now[0])
    batch = _finished_spans(3)
    otlp_receiver.refusing = True

    assert guard.export(batch) is SpanExportResult.FAILURE  # sent, refused
    sent = otlp_receiver.calls
    assert sent > 0
    assert guard.export(batch) is SpanExportResult.FAILURE  # within the quiet second
    assert otlp_receiver.calls == sent  # dropped unsent
    assert guard.dropped == 6
    warnings = [r for r in caplog.records if r.name == "gateway.telemetry.tracing"]
    assert [r.levelname for r in warnings] == ["WARNING"]

    now[0] += 1.5  # the quiet period over: the next batch is sent again, and still refused
    assert guard.export(batch) is SpanExportResult.FAILURE
    assert otlp_receiver.calls > sent and guard.dropped == 9
    sent = otlp_receiver.calls
    now[0] += 1.5  # the second quiet period is 2 s
    assert guard.export(batch) is SpanExportResult.FAILURE
    assert otlp_receiver.calls == sent and guard.dropped == 12

    otlp_receiver.refusing = False  # the collector is back
    now[0] += 1.0
    assert guard.export(batch) is SpanExportResult.SUCCESS and guard.dropped == 0
    assert otlp_receiver.calls > sent
    said = [r.levelname for r in caplog.records if r.name == "gateway.telemetry.tracing"]
    assert said == ["WARNING", "INFO"]  # one line when it went, one when it came back
    guard.shutdown()


class _CountingExporter(SpanExporter):
    """The exporter it is given, counting the batches handed to it."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner, self.batches = inner, 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.batches += 1
        return self.inner.export(spans)

    def shutdown(self) -> None:
        self.inner.shutdown()


def test_while_nothing_listens_batches_are_not_encoded_again_until_something_does() -> None:
    now = [5_000.0]
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    inner = _CountingExporter(OTLPSpanExporter(endpoint=endpoint, timeout=1))
    guard = OutageGuard(inner, clock=lambda: now[0], probe=tcp_probe(endpoint))
    batch = _finished_spans(2)

    assert guard.export(batch) is SpanExportResult.FAILURE  # tried once: the outage starts
    assert inner.batches == 1
    for _ in range(3):  # each quiet period over: the probe finds nothing listening
        now[0] += 100.0
        assert guard.export(batch) is SpanExportResult.FAILURE
    assert inner.batches == 1 and guard.dropped == 8

    with socket.create_server(("127.0.0.1", port)):  # something listens again: tried
        now[0] += 100.0
        guard.export(batch)
    assert inner.batches == 2
    guard.shutdown()


def test_the_probe_reads_urls_and_host_port() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listening:
        port = listening.getsockname()[1]
        assert tcp_probe(f"http://127.0.0.1:{port}")()
        assert tcp_probe(f"127.0.0.1:{port}")()
    assert not tcp_probe(f"http://127.0.0.1:{port}", timeout_s=0.5)()
