"""Structured JSON logs: one object per line, with `event` and, inside a request, `request_id`.

Audit events (`audit.*`: key operations, policy and clients file reloads) go to the main stream
and, when an audit file is configured, also to that file as JSON lines.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "request_id", default=None
)

_RESERVED = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message"}

AUDIT_LOGGER_NAME = "gateway.audit"

# A failing audit file (disk full, permissions) is reported at most this often per process.
_AUDIT_ERROR_LOG_INTERVAL_SECONDS = 60.0

logger = logging.getLogger(__name__)


class JsonFormatter(logging.Formatter):
    """Format records as JSON lines. Extra fields passed with `extra=` become top-level keys."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": getattr(record, "event", None) or record.getMessage(),
            # Under gunicorn several workers write to one stream, and the pid identifies the writer.
            "pid": record.process,
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


class AuditFileHandler(logging.Handler):
    """Append each audit record to a file as one JSON line, with a single write() call.

    The file is opened with O_APPEND, so several gunicorn workers appending to the same file
    do not overwrite or split each other's lines, because Linux appends each write() to a
    regular file on a local filesystem whole. NOTE: NFS does not make O_APPEND atomic, so keep
    the file on local storage. When the path is renamed or deleted (log rotation), the next
    record reopens it. A failed write is reported in the main stream at most once a minute and
    never raises, and the event itself still reaches the main stream through the root logger.
    """

    def __init__(self, path: Path) -> None:
        super().__init__(logging.INFO)
        self.path = path
        self._fd = -1
        self._identity: tuple[int, int] | None = None
        self._failures = 0
        self._last_failure_logged = float("-inf")
        self._failure_lock = threading.Lock()
        self.setFormatter(JsonFormatter())
        self._open()

    def _open(self) -> None:
        """Open the file for appending. Raises OSError when it cannot be opened."""
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        stat = os.fstat(fd)
        self._fd, self._identity = fd, (stat.st_dev, stat.st_ino)

    def _reopen_if_moved(self) -> None:
        try:
            stat = self.path.stat()
            current: tuple[int, int] | None = (stat.st_dev, stat.st_ino)
        except FileNotFoundError:
            current = None
        if current == self._identity and self._fd >= 0:
            return
        self._close_fd()
        self._open()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = (self.format(record) + "\n").encode("utf-8")
            # Handler.handle() holds self.lock here, so threads never reopen the file twice.
            self._reopen_if_moved()
            written = os.write(self._fd, data)
            if written != len(data):
                # End the cut line (a full disk does this), so the lines after it stay parseable.
                os.write(self._fd, b"\n")
                raise OSError(f"short write: {written} of {len(data)} bytes")
        except (OSError, ValueError, TypeError) as error:
            self._report_failure(error)

    def _report_failure(self, error: Exception) -> None:
        # Logged through the module logger, which reaches the main stream but not this handler.
        with self._failure_lock:
            self._failures += 1
            now = time.monotonic()
            if now - self._last_failure_logged < _AUDIT_ERROR_LOG_INTERVAL_SECONDS:
                return
            failures, self._failures = self._failures, 0
            self._last_failure_logged = now
        log_event(
            logger, "logging.audit_write_failed", logging.ERROR,
            path=str(self.path), error_type=type(error).__name__, error=str(error)[:300],
            failed_records=failures,
        )

    def _close_fd(self) -> None:
        if self._fd >= 0:
            # A close that fails (EIO after a failed write) leaves nothing to clean up.
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd, self._identity = -1, None

    def close(self) -> None:
        self.acquire()
        try:
            self._close_fd()
        finally:
            self.release()
        super().close()


def configure_logging(level: str = "INFO", audit_log_path: Path | None = None) -> None:
    """Send every logger to stderr as JSON lines, and audit events also to `audit_log_path`.

    Safe to call more than once: the stderr handler is added once, and the audit file handler
    is replaced only when the path changes (None removes it). Raises OSError when the audit file
    cannot be opened.
    """
    root = logging.getLogger()
    if not any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        root.addHandler(handler)
    root.setLevel(level.upper())

    # Audit events are rare and are the record of who changed what, so GATEWAY_LOG_LEVEL=WARNING
    # must not drop them.
    audit_logger = logging.getLogger(AUDIT_LOGGER_NAME)
    audit_logger.setLevel(logging.INFO)
    _set_audit_file(audit_logger, audit_log_path)


def _set_audit_file(audit_logger: logging.Logger, path: Path | None) -> None:
    current = [h for h in audit_logger.handlers if isinstance(h, AuditFileHandler)]
    if path is not None and any(h.path == path for h in current):
        return

    # Open the new file before dropping the old handler, so a bad path leaves the old one working.
    new_handler = AuditFileHandler(path) if path is not None else None
    for handler in current:
        audit_logger.removeHandler(handler)
        handler.close()
    if new_handler is not None:
        audit_logger.addHandler(new_handler)


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log one structured event; `fields` become top-level JSON keys."""
    logger.log(level, event, extra={"event": event, **fields})


_audit_logger = logging.getLogger(AUDIT_LOGGER_NAME)


def audit(event: str, *, actor: str | None, result: str, **fields: Any) -> None:
    """Write an audit event (`audit.<event>`) for key operations and policy reloads."""
    log_event(_audit_logger, f"audit.{event}", actor=actor, result=result, **fields)


def hash_identifier(value: str | None) -> str | None:
    """Return a short stable hash of a viewer id, so logs can correlate without storing it."""
    if value is None:
        return None
    return hashlib.sha256(value.encode()).hexdigest()[:16]
