"""Structured logging (one JSON object per line by default).

Fields passed through `extra=` (request_id, rpc_method, user_id, job_id...) become keys of the
object, so logs can be filtered by request or job without parsing messages. A line logged within
a trace (an RPC's, a job run's, or the caller's `traceparent` with tracing off) carries
`trace_id` and `span_id`, so a request's lines are found from its trace and the other way round.

The line every RPC logs goes through `info_line`, which builds it without the logging module's
machinery when nothing but the gateway's own JSON handler would see it: the same line, at a
fraction of the cost.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from typing import Any

import orjson

from gateway.telemetry import tracing

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


#: What orjson cannot encode (integers past 64 bits) goes through one `json` encoder.
_ENCODER = json.JSONEncoder(default=str)
#: Dataclasses and datetimes are written as `str()` makes them, as `json` with `default=str`
#: wrote them.
_ORJSON_OPTIONS = orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME


def _encode(entry: dict[str, Any]) -> str:
    """`entry` as one line of JSON (orjson: a fifth of the stdlib encoder's time)."""
    try:
        return orjson.dumps(entry, default=str, option=_ORJSON_OPTIONS).decode()
    except orjson.JSONEncodeError:
        return _ENCODER.encode(entry)


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object."""

    def __init__(self) -> None:
        super().__init__()
        #: (a whole second, its timestamp up to the seconds): lines of one second share it.
        self._second: tuple[int, str] = (-1, "")

    def _timestamp(self, record: logging.LogRecord) -> str:
        return self.timestamp(record.created)

    def timestamp(self, created: float) -> str:
        """`created` (seconds since the epoch) as the lines' UTC timestamp, to the millisecond
        (cut, not rounded, as the logging module's `msecs`)."""
        second = int(created)
        if self._second[0] != second:
            self._second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
        return f"{self._second[1]}.{int((created - second) * 1000):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self._timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        # Formatted in the logging call, so in the context (and the span) of whoever logged.
        ids = tracing.log_ids()
        if ids is not None:
            entry["trace_id"], entry["span_id"] = ids
        for key, value in vars(record).items():
            if key not in _STANDARD and value is not None:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return _encode(entry)


class _FastLines:
    """The JSON handler's stream, written without a `LogRecord` (see `info_line`), each line at
    once and in order with the lines the logging module writes."""

    def __init__(self, handler: logging.StreamHandler[Any], formatter: JsonFormatter) -> None:
        self.handler = handler
        self.formatter = formatter

    def add(self, line: str) -> None:
        handler = self.handler
        with handler.lock or contextlib.nullcontext():
            handler.stream.write(line + "\n")
            handler.stream.flush()


#: The JSON handler `configure_logging` installed, for `info_line`; None in other formats.
_fast: _FastLines | None = None


def info_line(
    logger: logging.Logger, msg: str, fields: dict[str, Any], *, traced: bool = True
) -> None:
    """Logs `msg` at INFO with `fields`, as `logger.info(msg, extra=fields)` would, for a line
    logged on every RPC: when the gateway's JSON handler is the only place the line can go (no
    handler or filter added anywhere on the way, as a test's log capture adds), the line is
    built directly, without a `LogRecord`, and written at once (`_FastLines`); otherwise
    through the logging module. Fields that are None are left out,
    as the formatter leaves them out. `traced=False` says no span is current (the trace ids
    are not looked up)."""
    if not logger.isEnabledFor(logging.INFO):
        return
    fast = _fast
    if fast is None or fast.handler.level > logging.INFO or not _only_to(fast.handler, logger):
        logger.info(msg, extra=fields)
        return
    entry: dict[str, Any] = {
        "ts": fast.formatter.timestamp(time.time()),
        "level": "info",
        "logger": logger.name,
        "msg": msg,
    }
    ids = tracing.log_ids() if traced else None
    if ids is not None:
        entry["trace_id"], entry["span_id"] = ids
    for key, value in fields.items():
        if value is not None:
            entry[key] = value
    fast.add(_encode(entry))


def _only_to(handler: logging.Handler, logger: logging.Logger) -> bool:
    """Whether a record of `logger` reaches `handler` and nothing else, unfiltered."""
    current: logging.Logger | None = logger
    while current is not None:
        if current.filters:
            return False
        if current.handlers:
            return current.handlers == [handler] and current.parent is None
        if not current.propagate:
            return False
        current = current.parent
    return False


def configure_logging(fmt: str = "json", level: str = "INFO") -> None:
    """Routes the gateway's logs to stderr in the chosen format (idempotent).

    Neither format prints where a line was logged from, nor the thread or process: records
    skip looking them up (the logging module's documented switches), which is most of what a
    line cost at INFO, where every RPC logs one."""
    logging._srcfile = None  # no caller lookup (a walk up the stack) per record
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    global _fast
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        formatter = JsonFormatter()
        handler.setFormatter(formatter)
        _fast = _FastLines(handler, formatter)
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        _fast = None
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
