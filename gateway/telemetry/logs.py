"""Structured logging (one JSON object per line by default).

Fields passed through `extra=` (request_id, rpc_method, user_id, job_id...) become keys of the
object, so logs can be filtered by request or job without parsing messages. A line logged within
a trace (an RPC's, a job run's, or the caller's `traceparent` with tracing off) carries
`trace_id` and `span_id`, so a request's lines are found from its trace and the other way round.
"""

from __future__ import annotations

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
        second = int(record.created)
        if self._second[0] != second:
            self._second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
        return f"{self._second[1]}.{int(record.msecs):03d}Z"

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


def configure_logging(fmt: str = "json", level: str = "INFO") -> None:
    """Routes the gateway's logs to stderr in the chosen format (idempotent).

    Neither format prints where a line was logged from, nor the thread or process: records
    skip looking them up (the logging module's documented switches), which is most of what a
    line cost at INFO, where every RPC logs one."""
    logging._srcfile = None  # no caller lookup (a walk up the stack) per record
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter()
        if fmt == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
