"""The JSON log lines: one object per record, its extras as keys, its time in UTC."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from gateway.telemetry.logs import JsonFormatter


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
