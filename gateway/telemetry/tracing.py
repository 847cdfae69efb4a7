"""OpenTelemetry traces: a span per RPC, per pipeline stage, per upstream attempt, per job claim
and run, exported over OTLP/gRPC when the standard `OTEL_*` variables ask for it.

Off unless configured: with no exporter configured there is no tracer provider, no exporter and
no span; the stage helpers return one shared no-op object, so instrumented code costs a global
read and a call. Tracing is on when `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
`OTEL_EXPORTER_OTLP_ENDPOINT` is set, or `OTEL_TRACES_EXPORTER` names an exporter (`otlp`,
`console`); `OTEL_TRACES_EXPORTER=none` or `OTEL_SDK_DISABLED=true` turn it off. The SDK reads
the rest itself: `OTEL_SERVICE_NAME` (default here: `viewbait-gateway`),
`OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER` / `_ARG`, `OTEL_BSP_*` (the batch processor),
`OTEL_EXPORTER_OTLP_*` (headers, timeout, certificates, compression). Values the gateway cannot
honour (another protocol than gRPC, an unknown exporter or sampler) are refused at start-up
(`environment_problems`), like misspelled `VIEWBAIT_*` settings.

Propagation is W3C Trace Context only: `traceparent` / `tracestate` from a call's gRPC
metadata parent its RPC span, and the context of the span that created a job is stored with
the job (`NewJob.traceparent`), so the job's claim and run spans, on whichever replica, join
the trace of the request that submitted it. With tracing off an incoming `traceparent` is still
made current (without spans), so log lines and jobs carry the caller's trace id.

Attributes never carry user ids, prompts or secrets: a span says which operation, which
request and job, what the cache did and how each upstream attempt ended; the log lines of the
same request (which carry the trace id) say who asked.

The provider is per process, shared by the gateways a process runs (`acquire` / `release`).
Spans are made by `gateway.telemetry.spans.Recorder` (for a third of the SDK `Tracer`'s cost on
the request path), batched by the SDK's `BatchSpanProcessor` and exported from its thread; a
stop flushes them, for at most `FLUSH_TIMEOUT_S` (a collector that is down must not hold up the
stop).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Mapping
from contextlib import AbstractContextManager
from importlib import metadata
from types import TracebackType
from typing import TYPE_CHECKING, Final

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from gateway.config import ConfigError
from gateway.errors import GatewayError
from gateway.telemetry.spans import Attributes, Recorder

if TYPE_CHECKING:
    from gateway.model import UsageRecord
    from gateway.store.base import Job

log = logging.getLogger(__name__)

#: The instrumentation scope of every span (and the default `service.name`).
SERVICE_NAME: Final = "viewbait-gateway"
#: How long a stop waits for the last spans to be exported.
FLUSH_TIMEOUT_S: Final = 5.0
#: Exporters `OTEL_TRACES_EXPORTER` may name.
EXPORTERS: Final = frozenset({"otlp", "console", "none"})
#: Samplers `OTEL_TRACES_SAMPLER` may name (the SDK's built-in ones).
SAMPLERS: Final = frozenset(
    {
        "always_on",
        "always_off",
        "traceidratio",
        "parentbased_always_on",
        "parentbased_always_off",
        "parentbased_traceidratio",
    }
)
#: gRPC codes that mark a server span as failed (OpenTelemetry's gRPC conventions: the
#: server's fault, not the caller's).
_SERVER_ERROR_CODES: Final = frozenset({2, 4, 12, 13, 14, 15})

#: W3C Trace Context, the one propagation format (`traceparent`, `tracestate`).
_PROPAGATOR: Final = TraceContextTextMapPropagator()


# -- configuration ---------------------------------------------------------------------------


def _env(env: Mapping[str, str], name: str) -> str:
    return env.get(name, "").strip()


def _named_exporters(env: Mapping[str, str]) -> list[str]:
    """The exporters `OTEL_TRACES_EXPORTER` names (a comma-separated list)."""
    named = _env(env, "OTEL_TRACES_EXPORTER")
    return [name.strip().lower() for name in named.split(",") if name.strip()]


def _otlp_endpoint(env: Mapping[str, str]) -> str:
    """The OTLP traces endpoint the environment sets ("" for none): the traces-specific
    variable, else the general one."""
    return _env(env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or _env(
        env, "OTEL_EXPORTER_OTLP_ENDPOINT"
    )


def exporters(env: Mapping[str, str] | None = None) -> list[str]:
    """The span exporters the environment configures; empty when tracing is off."""
    env = os.environ if env is None else env
    if _env(env, "OTEL_SDK_DISABLED").lower() == "true":
        return []
    chosen = _named_exporters(env)
    if not chosen and _otlp_endpoint(env):
        chosen = ["otlp"]
    return [name for name in chosen if name != "none"]


def environment_problems(env: Mapping[str, str] | None = None) -> list[str]:
    """Why the `OTEL_*` variables cannot be honoured, one line each naming the variable to
    change; empty when they can (or when tracing is off)."""
    env = os.environ if env is None else env
    problems: list[str] = []
    unknown = [name for name in _named_exporters(env) if name not in EXPORTERS]
    if unknown:
        problems.append(
            f"OTEL_TRACES_EXPORTER names {', '.join(unknown)}, which this gateway does not "
            f"ship; use one of {', '.join(sorted(EXPORTERS))}"
        )
    chosen = exporters(env)
    if not chosen:
        return problems
    for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        protocol = _env(env, name)
        if protocol and "otlp" in chosen:
            if protocol != "grpc":
                problems.append(
                    f"{name}={protocol}: this gateway exports OTLP over gRPC only; set it to "
                    "grpc (or unset it) and point the endpoint at the collector's gRPC port "
                    "(4317 by default)"
                )
            break
    sampler = _env(env, "OTEL_TRACES_SAMPLER").lower()
    if sampler and sampler not in SAMPLERS:
        problems.append(
            f"OTEL_TRACES_SAMPLER={sampler} is not a sampler this gateway knows; use one of "
            f"{', '.join(sorted(SAMPLERS))}"
        )
    argument = _env(env, "OTEL_TRACES_SAMPLER_ARG")
    if sampler.endswith("traceidratio") and argument:
        try:
            ratio = float(argument)
        except ValueError:
            ratio = -1.0
        if not 0.0 <= ratio <= 1.0:
            problems.append(
                f"OTEL_TRACES_SAMPLER_ARG={argument} is not a ratio; set a number from 0 to 1"
            )
    return problems


def check_environment() -> None:
    """Raises `ConfigError` with `environment_problems`, if there are any."""
    problems = environment_problems()
    if problems:
        raise ConfigError(problems)


# -- the process's tracer --------------------------------------------------------------------

#: What makes the spans; None while tracing is off (no provider, no exporter, no span).
_recorder: Recorder | None = None
#: Gateways of this process that acquired the recorder and have not released it.
_holders = 0


def enabled() -> bool:
    """Whether spans are being made (an exporter is configured and a gateway runs)."""
    return _recorder is not None


def _version() -> str:
    try:
        return metadata.version("viewbait-gateway")
    except metadata.PackageNotFoundError:
        return "unknown"


def _build_recorder(chosen: list[str]) -> Recorder:
    """The SDK's provider (the SDK reads the sampler, resource and exporter settings from the
    environment) with a batch processor per configured exporter, and the recorder over it."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

    resource = Resource.create({"service.version": _version()})
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": SERVICE_NAME}))
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    processors = []
    for name in chosen:
        exporter: SpanExporter
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            from gateway.telemetry.export import OutageGuard, tcp_probe

            endpoint = _otlp_endpoint(os.environ) or "http://localhost:4317"
            exporter = OutageGuard(OTLPSpanExporter(), probe=tcp_probe(endpoint))
        else:
            exporter = ConsoleSpanExporter()
        processor = BatchSpanProcessor(exporter)
        # The provider shuts the processors down (and so flushes them).
        provider.add_span_processor(processor)
        processors.append(processor)
    return Recorder(provider, processors, InstrumentationScope("gateway", _version()))


def acquire() -> None:
    """Turns tracing on for a starting gateway when the environment configures it (the first
    gateway of the process builds the provider; the others share it).

    Raises `ConfigError` when the `OTEL_*` variables cannot be honoured.
    """
    global _recorder, _holders
    check_environment()
    _holders += 1
    if _recorder is not None:
        return
    chosen = exporters()
    if not chosen:
        return
    # The batch processor warns on every span it drops while its queue is full (the collector
    # unreachable), a log record built per span on the request path. The exporter's own error
    # says why (at most one line per 20 s); the drops are documented, not logged one by one.
    logging.getLogger("opentelemetry.sdk._shared_internal").setLevel(logging.ERROR)
    _recorder = _build_recorder(chosen)
    log.info(
        "tracing on",
        extra={
            "exporters": chosen,
            "endpoint": _otlp_endpoint(os.environ) or None,
        },
    )


async def release() -> None:
    """A gateway stopped: when it was the last one, tracing goes off and the spans not yet
    exported are flushed (for at most `FLUSH_TIMEOUT_S`, off the event loop)."""
    global _recorder, _holders
    _holders = max(0, _holders - 1)
    if _holders > 0 or _recorder is None:
        return
    provider, _recorder = _recorder.provider, None
    done = asyncio.get_running_loop().create_future()

    def shut_down() -> None:
        try:
            provider.shutdown()
        finally:
            # The loop is gone when the process ended without waiting for the flush.
            with contextlib.suppress(RuntimeError):
                done.get_loop().call_soon_threadsafe(_settle, done)

    # A thread of its own, not the loop's executor: a flush stuck on an unreachable collector
    # must not hold up the interpreter's exit, which joins the executor's threads.
    threading.Thread(target=shut_down, name="viewbait-trace-flush", daemon=True).start()
    try:
        await asyncio.wait_for(asyncio.shield(done), FLUSH_TIMEOUT_S)
    except TimeoutError:
        log.warning(
            "the last spans were not exported within %gs (is the collector reachable?); "
            "they are dropped",
            FLUSH_TIMEOUT_S,
        )


def _settle(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)


# -- spans -----------------------------------------------------------------------------------


#: What a stage is with tracing off: nothing, shared by every caller.
_NO_STAGE: Final = contextlib.nullcontext(trace.INVALID_SPAN)


def _error_type(exc: BaseException) -> str:
    """What `error.type` says of a failure: the domain reason, else the exception's class."""
    if isinstance(exc, GatewayError):
        return exc.reason
    if isinstance(exc, asyncio.CancelledError):
        return "CANCELLED"
    return type(exc).__name__


def _fail(span: Span, exc: BaseException) -> None:
    """Marks `span` failed with `exc`'s reason; never its message or traceback (a message may
    quote the caller's input)."""
    reason = _error_type(exc)
    span.set_attribute("error.type", reason)
    span.set_status(Status(StatusCode.ERROR, reason))


class _Stage:
    """A span for one stage, ended when the `with` block ends; made current when `current`
    (its stage makes spans of its own), else left out of the context (cheaper)."""

    __slots__ = ("_attributes", "_current", "_name", "_parent", "_recorder", "_span", "_token")

    def __init__(
        self,
        recorder: Recorder,
        name: str,
        attributes: Attributes | None,
        current: bool,
        parent: otel_context.Context | None = None,
    ) -> None:
        self._recorder = recorder
        self._name = name
        self._attributes = attributes
        self._current = current
        self._parent = parent
        self._span: Span = trace.INVALID_SPAN
        self._token: object = None

    def __enter__(self) -> Span:
        span = self._span = self._recorder.start(
            self._name, self._parent, attributes=self._attributes
        )
        if self._current:
            self._token = otel_context.attach(trace.set_span_in_context(span, self._parent))
        return span

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        span = self._span
        if exc is not None:
            _fail(span, exc)
        if self._token is not None:
            otel_context.detach(self._token)  # type: ignore[arg-type]
        span.end()


def stage(name: str, attributes: Attributes | None = None) -> AbstractContextManager[Span]:
    """A child span of the current span for a stage whose own work makes spans (they become
    its children). Use as `with stage(...) as span:`; `span.set_attribute` works either way."""
    recorder = _recorder
    if recorder is None:
        return _NO_STAGE
    return _Stage(recorder, name, attributes, current=True)


def leaf(name: str, attributes: Attributes | None = None) -> AbstractContextManager[Span]:
    """A child span of the current span for a stage that makes no spans of its own (not made
    current: no context change, the cheapest span)."""
    recorder = _recorder
    if recorder is None:
        return _NO_STAGE
    return _Stage(recorder, name, attributes, current=False)


def annotate(key: str, value: AttributeValue) -> None:
    """Sets an attribute on the current span (the RPC's, or a job run's), if one records."""
    if _recorder is not None:
        trace.get_current_span().set_attribute(key, value)


def failed(exc: BaseException) -> None:
    """Marks the current span failed with `exc` (for a failure handled where it is caught)."""
    if _recorder is not None:
        _fail(trace.get_current_span(), exc)


def _past_span(
    name: str,
    duration_s: float,
    attributes: Attributes,
    *,
    parent: otel_context.Context | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
    error: str | None = None,
) -> None:
    """A span for something that has just ended and lasted `duration_s`."""
    recorder = _recorder
    if recorder is None:
        return
    end = time.time_ns()
    span = recorder.start(
        name, parent, kind=kind, attributes=attributes, start_time=end - int(duration_s * 1e9)
    )
    if error is not None:
        span.set_attribute("error.type", error)
        span.set_status(Status(StatusCode.ERROR, error))
    span.end(end)


def upstream_attempt(record: UsageRecord) -> None:
    """The span of one upstream attempt that just ended (a child of the current span), from
    the record the usage ledger gets: model, attempt, outcome, tokens and cost."""
    if _recorder is None:
        return
    usage = record.usage
    _past_span(
        f"generate_content {record.model}",
        record.duration_s,
        {
            "gen_ai.operation.name": "generate_content",
            "gen_ai.provider.name": "gcp.gemini",
            "gen_ai.request.model": record.model,
            "gen_ai.usage.input_tokens": usage.prompt_tokens,
            "gen_ai.usage.output_tokens": usage.output_tokens
            + usage.thinking_tokens
            + usage.image_output_tokens,
            "viewbait.operation": record.labels.operation,
            "viewbait.attempt": record.attempt,
            "viewbait.outcome": record.outcome,
            "viewbait.cost_usd": record.cost_usd,
        },
        kind=SpanKind.CLIENT,
        error=None if record.outcome == "ok" else record.outcome,
    )


# -- propagation -----------------------------------------------------------------------------


def _remote_parent(traceparent: str | None, tracestate: str | None) -> otel_context.Context | None:
    """A context whose current span is the remote one `traceparent` names, else None."""
    if not traceparent:
        return None
    carrier = {"traceparent": traceparent}
    if tracestate:
        carrier["tracestate"] = tracestate
    remote = _PROPAGATOR.extract(carrier, otel_context.Context())
    if not trace.get_current_span(remote).get_span_context().is_valid:
        return None  # malformed: the RPC starts a trace of its own
    return remote


def current_traceparent() -> tuple[str | None, str | None]:
    """The W3C (`traceparent`, `tracestate`) of the current span, to be stored with a job;
    (None, None) outside any trace."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get("traceparent"), carrier.get("tracestate")


def log_ids() -> tuple[str, str] | None:
    """(trace id, span id) of the current span in hex, for log lines; None outside a trace."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"


# -- RPCs and jobs ---------------------------------------------------------------------------


class RpcSpan:
    """The span of one RPC (or, with tracing off, the caller's remote span made current), from
    the RPC's start to `end`."""

    __slots__ = ("_context", "_span", "_token")

    def __init__(self, span: Span, parent: otel_context.Context | None) -> None:
        self._span = span
        self._context = trace.set_span_in_context(span, parent)
        self._token = otel_context.attach(self._context)

    @property
    def span(self) -> Span:
        """The RPC's span (a non-recording one with tracing off)."""
        return self._span

    def end(self, code: int, code_name: str, error: BaseException | None = None) -> None:
        """Ends the span with the RPC's gRPC status, and restores the context it replaced.

        A server stream the client abandoned is closed from another context than the one the
        span was made current in; there is nothing to restore then.
        """
        span = self._span
        if span.is_recording():
            span.set_attribute("rpc.grpc.status_code", code)
            if code in _SERVER_ERROR_CODES:
                span.set_attribute("error.type", code_name)
                span.set_status(Status(StatusCode.ERROR, code_name))
            elif error is not None and code == 0:
                _fail(span, error)
            span.end()
        if otel_context.get_current() is self._context:
            otel_context.detach(self._token)


def start_rpc(
    method: str, request_id: str, traceparent: str | None, tracestate: str | None
) -> RpcSpan | None:
    """The server span of an RPC (`method` is the full gRPC method name), its parent the
    caller's `traceparent`; None with tracing off and no traceparent (nothing to do)."""
    recorder = _recorder
    parent = _remote_parent(traceparent, tracestate) if traceparent else None
    if recorder is None:
        if parent is None:
            return None
        return RpcSpan(trace.get_current_span(parent), parent)
    names = _RPC_NAMES.get(method)
    if names is None:
        service, _, name = method.lstrip("/").partition("/")
        names = _RPC_NAMES[method] = (f"{service}/{name}", service, name)
    span = recorder.start(
        names[0],
        parent,
        kind=SpanKind.SERVER,
        attributes={
            "rpc.system": "grpc",
            "rpc.service": names[1],
            "rpc.method": names[2],
            "viewbait.request_id": request_id,
        },
        owned=True,
    )
    return RpcSpan(span, parent)


#: Full gRPC method name -> (span name, service, method), computed once per method.
_RPC_NAMES: dict[str, tuple[str, str, str]] = {}


def job_attributes(job: Job) -> dict[str, AttributeValue]:
    """What the spans of a job's claim and run say about it."""
    return {
        "viewbait.job_id": job.id,
        "viewbait.operation": job.op,
        "viewbait.job_attempt": job.attempts,
    }


def job_claimed(job: Job, duration_s: float) -> None:
    """The span of a job worker's claim of `job` (one claim statement took `duration_s`), in
    the trace of the request that created the job."""
    if _recorder is None:
        return
    _past_span(
        "job.claim",
        duration_s,
        job_attributes(job),
        parent=_remote_parent(job.traceparent, job.tracestate) or otel_context.Context(),
    )


def job_run(job: Job) -> AbstractContextManager[Span]:
    """The span of one attempt of `job` on this replica, made current: a child of the span
    that created the job (its stored `traceparent`), so the request that submitted it and its
    run are one trace; a new trace for a job created outside any."""
    recorder = _recorder
    if recorder is None:
        # Off: the stored caller's trace still reaches the run's log lines.
        remote = _remote_parent(job.traceparent, job.tracestate)
        if remote is None:
            return _NO_STAGE
        return trace.use_span(trace.get_current_span(remote), end_on_exit=False)
    parent = _remote_parent(job.traceparent, job.tracestate) or otel_context.Context()
    return _Stage(recorder, "job.run", job_attributes(job), current=True, parent=parent)


__all__ = [
    "FLUSH_TIMEOUT_S",
    "SERVICE_NAME",
    "Attributes",
    "RpcSpan",
    "acquire",
    "annotate",
    "check_environment",
    "current_traceparent",
    "enabled",
    "environment_problems",
    "exporters",
    "job_claimed",
    "job_run",
    "leaf",
    "log_ids",
    "release",
    "stage",
    "start_rpc",
    "upstream_attempt",
]
