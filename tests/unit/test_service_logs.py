"""The service's JSON log lines: the documented fields, in order, and nothing a caller did not pass."""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime
from pathlib import Path

from faceanonymixer.service.logs import JsonFormatter


def _record(message: str, *args: object, level: int = logging.INFO, **extra: object) -> logging.LogRecord:
    record = logging.getLogger("faceanonymixer.service.test").makeRecord(
        "faceanonymixer.service.test", level, __file__, 1, message, args, None
    )
    record.__dict__.update(extra)
    return record


def test_a_line_holds_time_level_logger_event_then_the_fields() -> None:
    record = _record("call %s", "done", fields={"method": "ProtectFace", "seconds": 0.25, "path": Path("x")})
    record.created = 1_700_000_000.1234
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert list(entry) == ["time", "level", "logger", "event", "method", "seconds", "path"]
    assert entry["time"] == "2023-11-14T22:13:20.123+00:00"
    assert datetime.fromisoformat(entry["time"]).timestamp() == 1_700_000_000.123
    assert entry["level"] == "info" and entry["logger"] == "faceanonymixer.service.test"
    assert entry["event"] == "call done"
    assert entry["path"] == "x"  # what JSON cannot hold is logged as its str


def test_only_the_fields_are_logged_not_other_record_attributes() -> None:
    record = _record("listening", level=logging.WARNING, fields={"address": "[::]:50051"}, token="secret")
    entry = json.loads(JsonFormatter().format(record))
    assert entry == {
        "time": entry["time"],
        "level": "warning",
        "logger": "faceanonymixer.service.test",
        "event": "listening",
        "address": "[::]:50051",
    }


def test_a_logged_exception_comes_last_as_error() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        exc_info = sys.exc_info()
    record = _record("unexpected error", level=logging.ERROR, fields={"method": "ProtectFace"})
    record.exc_info = exc_info
    entry = json.loads(JsonFormatter().format(record))
    assert list(entry)[-2:] == ["method", "error"]
    assert entry["error"].startswith("Traceback") and entry["error"].endswith("RuntimeError: boom")


def test_a_record_without_fields_has_the_four_standard_ones() -> None:
    entry = json.loads(JsonFormatter().format(_record("serving")))
    assert list(entry) == ["time", "level", "logger", "event"]
