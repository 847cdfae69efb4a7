"""Span export that survives a collector outage cheaply (imported only when tracing is on,
with the SDK)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

log = logging.getLogger("gateway.telemetry.tracing")


class OutageGuard(SpanExporter):
    """A span exporter in front of another that, while the collector does not answer, drops
    batches without encoding or sending them.

    The OTLP exporter retries each batch with backoff for up to its timeout and encodes it for
    every batch it is handed; with the collector gone, that is the export thread encoding
    (under the GIL) spans that will be dropped anyway, which the request path pays for in
    latency. After a failed export, batches are dropped for a quiet period (doubling from
    `first_s` up to `max_s`), then one is tried again. One WARNING when the outage starts, one
    INFO line with the count of dropped spans when exports succeed again.
    """

    def __init__(
        self,
        inner: SpanExporter,
        *,
        first_s: float = 1.0,
        max_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._inner = inner
        self._first_s = first_s
        self._max_s = max_s
        self._clock = clock
        self._quiet_s = 0.0
        self._quiet_until = 0.0
        #: Spans dropped unsent since the current outage began.
        self.dropped = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Exports `spans`, or drops them while in a quiet period after a failure."""
        if self._quiet_s and self._clock() < self._quiet_until:
            self.dropped += len(spans)
            return SpanExportResult.FAILURE
        result = self._inner.export(spans)
        if result is SpanExportResult.SUCCESS:
            if self._quiet_s:
                log.info(
                    "spans are exported again; %d were dropped while the collector did not answer",
                    self.dropped,
                )
            self._quiet_s, self.dropped = 0.0, 0
            return result
        if not self._quiet_s:
            log.warning(
                "the trace collector does not answer: spans are dropped until it does (tried "
                "again after %g s, then at most every %g s)",
                self._first_s,
                self._max_s,
            )
        self.dropped += len(spans)
        self._quiet_s = min(self._max_s, self._quiet_s * 2 or self._first_s)
        self._quiet_until = self._clock() + self._quiet_s
        return result

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """See `SpanExporter.force_flush`."""
        return bool(self._inner.force_flush(timeout_millis))

    def shutdown(self) -> None:
        """See `SpanExporter.shutdown`."""
        self._inner.shutdown()
