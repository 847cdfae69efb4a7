"""The spans of a cache hit (the RPC's, validate, admit, two attributes set on the RPC's), as the
gateway makes them (`gateway.telemetry.spans.Recorder`) against the OpenTelemetry SDK's own
`Tracer` over the same provider (the anchor), in one process and one run.

Both hand their ended spans to the same SDK `BatchSpanProcessor` and OTLP/gRPC exporter, aimed
at a loopback port where no collector listens (the queue fills and spans are dropped, as in
`bench/cache_hit.py`'s tracing configuration). The anchor runs as the SDK ships (its processor
warns, through logging, for every span it drops) and with that warning off, as the gateway
runs it. Also printed: the same calls with tracing off (the no-op path every request takes).

Target: the gateway's spans >= 2x the SDK's (hits per second).

    python bench/tracing_spans.py [--seconds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import best_rate, report
from opentelemetry import context, trace
from opentelemetry.trace import SpanKind

from gateway.telemetry import tracing
from gateway.testing.postgres import free_port

METHOD = "/viewbait.ai.v1.GatewayService/AnalyzeVideo"
OPERATION = {"viewbait.operation": "analyze_video"}


def ours() -> None:
    """A hot cache hit's spans, as the interceptor, the pipeline and the executor make them."""
    rpc = tracing.start_rpc(METHOD, "bench-request", None, None)
    tracing.annotate("viewbait.operation", "analyze_video")
    with tracing.leaf("validate", OPERATION):
        pass
    with tracing.leaf("admit", OPERATION):
        pass
    tracing.annotate("viewbait.cache", "hot_hit")
    if rpc is not None:
        rpc.end(0, "OK")


def sdk_hit(tracer: trace.Tracer) -> None:
    """The same spans and attributes through the SDK's `Tracer`."""
    rpc = tracer.start_span(
        METHOD.lstrip("/"),
        kind=SpanKind.SERVER,
        attributes={
            "rpc.system": "grpc",
            "rpc.service": "viewbait.ai.v1.GatewayService",
            "rpc.method": "AnalyzeVideo",
            "viewbait.request_id": "bench-request",
        },
    )
    token = context.attach(trace.set_span_in_context(rpc))
    rpc.set_attribute("viewbait.operation", "analyze_video")
    tracer.start_span("validate", attributes=OPERATION).end()
    tracer.start_span("admit", attributes=OPERATION).end()
    rpc.set_attribute("viewbait.cache", "hot_hit")
    rpc.set_attribute("rpc.grpc.status_code", 0)
    rpc.end()
    context.detach(token)


async def main(seconds: float) -> int:
    print(f"cache-hit spans (3 per hit), {seconds:g} s per measurement, cores {os.cpu_count()}")
    # Log records go nowhere: what is measured is building them, not writing them.
    logging.basicConfig(handlers=[logging.NullHandler()], force=True)
    off = best_rate(ours, 1, seconds=seconds)
    os.environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = f"http://127.0.0.1:{free_port()}"
    tracing.acquire()
    try:
        recorder = tracing._recorder  # the bench compares it with its own provider's Tracer
        assert recorder is not None
        tracer = recorder.provider.get_tracer("bench")
        warnings = logging.getLogger("opentelemetry.sdk._shared_internal")
        warnings.setLevel(logging.WARNING)
        sdk_as_shipped = best_rate(lambda: sdk_hit(tracer), 1, seconds=seconds)
        warnings.setLevel(logging.ERROR)
        sdk_quiet = best_rate(lambda: sdk_hit(tracer), 1, seconds=seconds)
        traced = best_rate(ours, 1, seconds=seconds)
    finally:
        started = time.monotonic()
        await tracing.release()
    report("hits, gateway spans vs SDK Tracer", traced, sdk_quiet, "hit/s", "SDK", target=2.0)
    report("hits, gateway spans vs SDK as shipped", traced, sdk_as_shipped, "hit/s", "SDK")
    print(
        f"per hit: gateway {1e6 / traced:.1f} us, SDK {1e6 / sdk_quiet:.1f} us "
        f"({1e6 / sdk_as_shipped:.1f} us with its per-drop warning); tracing off "
        f"{1e6 / off:.2f} us; stop with no collector {time.monotonic() - started:.1f} s"
    )
    return 0 if traced >= 2.0 * sdk_quiet else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    raise SystemExit(asyncio.run(main(parser.parse_args().seconds)))
