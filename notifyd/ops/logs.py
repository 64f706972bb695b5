"""Logging set-up: one JSON object per line on stderr (what journald and log shippers want),
with fields passed as `extra=` kept as keys, and the level changeable at run time (SIGHUP).
Nothing here sees a token: callers log identities and reasons, never credentials.

Imports nothing of notifyd.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
from typing import Any

import orjson

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


class JsonLogFormatter(logging.Formatter):
    """{"ts", "level", "logger", "msg", ...extra fields, "exc"?} on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in line:
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


def setup(level: str) -> None:
    # The JSON lines carry no file, line, function, thread or process fields: skip finding
    # them for every record (findCaller walks the stack: a few percent of a handshake's CPU).
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def set_level(level: str) -> None:
    logging.getLogger().setLevel(level)
