"""Structured logs: one JSON object per line on stderr.

Each line holds ``time`` (UTC, ISO 8601 with milliseconds), ``level``, ``logger`` and ``event``
(the message), then the caller's fields, then ``error`` (the traceback) where an exception was
logged. Callers pass their fields as ``extra={"fields": {...}}``. Only what is put there is
logged: no request bodies, tokens or key material ever are.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

from pythonjsonlogger import json as json_logger


class JsonFormatter(json_logger.JsonFormatter):
    """python-json-logger's formatter, with the fields above and no others."""

    def __init__(self) -> None:
        # str for what JSON cannot hold (paths, enums): readable, and never a failed log line
        super().__init__(json_default=str)

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        # The library would add every attribute a record carries beyond the standard ones; only
        # ``fields`` is logged, so that nothing reaches the log that a caller did not put there.
        log_data.update(
            {
                "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
                "level": record.levelname.lower(),
                "logger": record.name,
                "event": record.getMessage(),
                **getattr(record, "fields", {}),
            }
        )
        if record.exc_info:
            log_data["error"] = message_dict["exc_info"]  # formatted by the library's format()


def configure_json_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
