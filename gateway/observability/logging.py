"""Structured JSON logs: one object per line, with `event` and, inside a request, `request_id`."""

from __future__ import annotations

import contextvars
import hashlib
import json
import logging
import sys
import time
from typing import Any

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "request_id", default=None
)

_RESERVED = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message"}


class JsonFormatter(logging.Formatter):
    """Format records as JSON lines. Extra fields passed with `extra=` become top-level keys."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": getattr(record, "event", None) or record.getMessage(),
        }
        if getattr(record, "event", None) and record.getMessage() != record.event:
            entry["message"] = record.getMessage()

        request_id = request_id_var.get()
        if request_id:
            entry["request_id"] = request_id

        for key, value in vars(record).items():
            if key not in _RESERVED and key != "event" and not key.startswith("_"):
                entry[key] = value

        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, separators=(",", ":"))


def configure_logging(level: str = "INFO") -> None:
    """Send every logger to stderr as JSON lines. Safe to call more than once."""
    root = logging.getLogger()
    if not any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        root.addHandler(handler)
    root.setLevel(level.upper())


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log one structured event; `fields` become top-level JSON keys."""
    logger.log(level, event, extra={"event": event, **fields})


_audit_logger = logging.getLogger("gateway.audit")


def audit(event: str, *, actor: str | None, result: str, **fields: Any) -> None:
    """Write an audit event (`audit.<event>`) for key operations and policy reloads."""
    log_event(_audit_logger, f"audit.{event}", actor=actor, result=result, **fields)


def hash_identifier(value: str | None) -> str | None:
    """Return a short stable hash of a viewer id, so logs can correlate without storing it."""
    if value is None:
        return None
    return hashlib.sha256(value.encode()).hexdigest()[:16]
