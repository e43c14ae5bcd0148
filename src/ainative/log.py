"""Structured logs: one JSON object per line on stderr (or a human line with --log-format text)."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_logger = logging.getLogger("ainative")


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "event": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            out.update(fields)
        return json.dumps(out, default=str, separators=(",", ":"))


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", {}) or {}
        extra = " ".join(f"{k}={v}" for k, v in fields.items())
        t = time.strftime("%H:%M:%S", time.localtime(record.created))
        return f"{t} {record.levelname.lower():7s} {record.getMessage()} {extra}".rstrip()


def setup(fmt: str = "json", level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter())
    _logger.handlers[:] = [handler]
    _logger.setLevel(level.upper())
    _logger.propagate = False


def event(what: str, /, level: int = logging.INFO, **fields: Any) -> None:
    _logger.log(level, what, extra={"fields": fields})


def warn(what: str, /, **fields: Any) -> None:
    event(what, logging.WARNING, **fields)


def error(what: str, /, **fields: Any) -> None:
    event(what, logging.ERROR, **fields)


def debug(what: str, /, **fields: Any) -> None:
    event(what, logging.DEBUG, **fields)
