"""The JSON log lines: one object per record, its extras as keys, its time in UTC."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from gateway.telemetry.logs import JsonFormatter, configure_logging, info_line


def _record(created: float, **extra: object) -> logging.LogRecord:
    record = logging.makeLogRecord({"name": "gateway.rpc", "levelname": "INFO", "msg": "hi"})
    record.created, record.msecs = created, (created - int(created)) * 1000
    record.__dict__.update(extra)
    return record


def test_each_line_carries_its_own_time_and_extras() -> None:
    formatter = JsonFormatter()
    # Lines within one second, then the next second and a far later one: each keeps its own.
    for created in (1_000.25, 1_000.999, 1_001.0, 1_001.5, 4_000_000_000.125):
        line = json.loads(formatter.format(_record(created, request_id="r1", user_id=None)))
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(created)))
        assert line["ts"] == f"{stamp}.{int((created - int(created)) * 1000):03d}Z"
        assert line["level"] == "info" and line["logger"] == "gateway.rpc"
        assert line["msg"] == "hi" and line["request_id"] == "r1"
        assert "user_id" not in line  # None extras are left out


def test_values_json_does_not_know_are_written_as_text() -> None:
    line = json.loads(JsonFormatter().format(_record(1.0, path=object)))
    assert line["path"] == str(object)


def test_what_the_fast_encoder_cannot_take_is_still_written() -> None:
    @dataclass
    class Point:
        x: int

    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    line = json.loads(
        JsonFormatter().format(
            _record(1.0, big=2**70, at=at, point=Point(1), broken="\ud800", ratio=0.1)
        )
    )
    assert line["big"] == 2**70
    assert line["at"] == str(at) and line["point"] == str(Point(1))
    assert line["broken"] == "\ud800" and line["ratio"] == 0.1


@contextlib.contextmanager
def _json_logging_to(stream: io.StringIO) -> Iterator[logging.Logger]:
    """The gateway's JSON logging, writing to `stream`, for the block (the root logger's
    handlers and level put back afterwards)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    with contextlib.redirect_stderr(stream):
        configure_logging("json", "INFO")
    try:
        yield logging.getLogger("gateway.rpc")
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


FIELDS = {"rpc_method": "/m", "rpc_code": "OK", "duration_ms": 1.25, "user_id": None, "n": 2**70}


def _without_time(line: str) -> dict[str, object]:
    entry = json.loads(line)
    assert entry.pop("ts").endswith("Z")
    return entry


def test_the_per_rpc_line_is_the_line_the_logging_module_writes() -> None:
    stream = io.StringIO()
    with _json_logging_to(stream) as log:
        log.info("rpc finished", extra=FIELDS)
        info_line(log, "rpc finished", FIELDS)
        # Written at once, in order with the lines the logging module writes.
        info_line(log, "rpc finished", {**FIELDS, "rpc_code": "CANCELLED"})
        lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    through_logging, direct, cancelled = (_without_time(line) for line in lines)
    assert list(direct.items()) == list(through_logging.items())
    assert "user_id" not in direct and direct["n"] == 2**70
    assert cancelled["rpc_code"] == "CANCELLED"


def test_a_capturing_handler_or_a_filter_gets_the_record() -> None:
    stream = io.StringIO()
    captured: list[logging.LogRecord] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            captured.append(record)

    with _json_logging_to(stream) as log:
        capture = Capture()
        logging.getLogger("gateway").addHandler(capture)
        try:
            info_line(log, "rpc finished", FIELDS)
        finally:
            logging.getLogger("gateway").removeHandler(capture)
        assert [getattr(r, "rpc_code", None) for r in captured] == ["OK"]
        # The JSON handler still wrote it, through the logging module, at once.
        assert _without_time(stream.getvalue())["rpc_method"] == "/m"
        dropped = logging.Filter("nothing.matches")
        log.addFilter(dropped)
        try:
            info_line(log, "rpc finished", FIELDS)
        finally:
            log.removeFilter(dropped)
        assert len(stream.getvalue().splitlines()) == 1, "the filter dropped the second line"
