"""The audit stream: audit events appended as JSON lines to GATEWAY_AUDIT_LOG, beside the main stream."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.config import ConfigError, Settings
from gateway.observability.logging import (
    AUDIT_LOGGER_NAME,
    AuditFileHandler,
    audit,
    configure_logging,
    log_event,
)
from tests.support.gateway_process import PROJECT_ROOT


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Put the root and audit loggers back as they were: configure_logging changes global state."""
    root, audit_logger = logging.getLogger(), logging.getLogger(AUDIT_LOGGER_NAME)
    saved = (list(root.handlers), root.level, list(audit_logger.handlers), audit_logger.level)
    yield
    for logger, handlers in ((root, saved[0]), (audit_logger, saved[2])):
        for handler in list(logger.handlers):
            if handler not in handlers:
                logger.removeHandler(handler)
                handler.close()
    root.setLevel(saved[1])
    audit_logger.setLevel(saved[3])


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def without_timestamp(entry: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in entry.items() if key != "ts"}


def audit_handlers() -> list[AuditFileHandler]:
    return [h for h in logging.getLogger(AUDIT_LOGGER_NAME).handlers if isinstance(h, AuditFileHandler)]


def test_audit_event_appended_as_json_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "audit.log"
    configure_logging("INFO", path)

    with caplog.at_level(logging.INFO):
        audit("policy.reload", actor=None, result="loaded", version="abc123def456", rules=7)
        log_event(logging.getLogger("gateway.test"), "policy.decision", effect="allow")

    [entry] = read_lines(path)
    assert without_timestamp(entry) == {
        "level": "info", "logger": "gateway.audit", "event": "audit.policy.reload", "pid": os.getpid(),
        "actor": None, "result": "loaded", "version": "abc123def456", "rules": 7,
    }
    # The main stream gets the same event, and the file gets audit events only.
    assert [record.event for record in caplog.records] == ["audit.policy.reload", "policy.decision"]  # type: ignore[attr-defined]


def test_audit_file_kept_at_warning_level(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    configure_logging("WARNING", path)

    audit("keys.rotate", actor="security-team", result="ok", key_id="k2")

    assert [entry["event"] for entry in read_lines(path)] == ["audit.keys.rotate"]


def test_configure_twice_keeps_one_handler(tmp_path: Path) -> None:
    first, second = tmp_path / "first.log", tmp_path / "second.log"
    configure_logging("INFO", first)
    configure_logging("INFO", first)
    audit("clients.reload", actor="file", result="loaded", clients=2)

    configure_logging("INFO", second)
    audit("clients.reload", actor="file", result="loaded", clients=3)

    configure_logging("INFO", None)
    audit("clients.reload", actor="file", result="loaded", clients=4)

    assert [entry["clients"] for entry in read_lines(first)] == [2]
    assert [entry["clients"] for entry in read_lines(second)] == [3]
    assert audit_handlers() == []


def test_rotated_file_is_reopened(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    configure_logging("INFO", path)
    audit("policy.reload", actor=None, result="loaded", version="v1")

    path.rename(tmp_path / "audit.log.1")
    audit("policy.reload", actor=None, result="loaded", version="v2")

    assert [entry["version"] for entry in read_lines(tmp_path / "audit.log.1")] == ["v1"]
    assert [entry["version"] for entry in read_lines(path)] == ["v2"]


def test_write_failure_logged_once_never_raised(caplog: pytest.LogCaptureFixture) -> None:
    # Every write to /dev/full fails with ENOSPC, as on a full disk.
    configure_logging("INFO", Path("/dev/full"))

    with caplog.at_level(logging.INFO):
        audit("keys.revoke", actor="security-team", result="ok", key_id="k1")
        audit("keys.revoke", actor="security-team", result="ok", key_id="k2")

    failures = [record for record in caplog.records if getattr(record, "event", None) == "logging.audit_write_failed"]
    assert len(failures) == 1
    assert failures[0].levelno == logging.ERROR
    assert failures[0].path == "/dev/full"  # type: ignore[attr-defined]
    assert failures[0].error_type == "OSError"  # type: ignore[attr-defined]
    assert failures[0].failed_records == 1  # type: ignore[attr-defined]
    assert "No space left on device" in failures[0].error  # type: ignore[attr-defined]


def test_unopenable_path_raises_and_keeps_previous(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    configure_logging("INFO", path)

    with pytest.raises(FileNotFoundError):
        configure_logging("INFO", tmp_path / "missing-folder" / "audit.log")
    audit("policy.reload", actor=None, result="loaded", version="v3")

    assert [entry["version"] for entry in read_lines(path)] == ["v3"]


WRITER = """
import sys
from pathlib import Path
from gateway.observability.logging import audit, configure_logging

configure_logging("INFO", Path(sys.argv[1]))
for number in range(int(sys.argv[2])):
    audit("policy.reload", actor=None, result="loaded", number=number, padding="x" * 20000)
"""


def test_several_processes_append_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    # Lines of about 20 KB, larger than a default write buffer, so a buffered writer would split them.
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(path), "150"], cwd=PROJECT_ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(4)
    ]
    codes = [writer.wait(timeout=60) for writer in writers]

    entries = read_lines(path)
    assert codes == [0, 0, 0, 0]
    assert len(entries) == 600
    per_process = Counter(entry["pid"] for entry in entries)
    assert sorted(per_process.values()) == [150, 150, 150, 150]
    for pid in per_process:
        assert [entry["number"] for entry in entries if entry["pid"] == pid] == list(range(150))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("{tmp}/audit.log", "{tmp}/audit.log"),
    ],
)
def test_setting_audit_log_path(tmp_path: Path, value: str | None, expected: str | None) -> None:
    environ = {} if value is None else {"GATEWAY_AUDIT_LOG": value.format(tmp=tmp_path)}
    settings = Settings.from_env(environ)

    assert settings.audit_log_path == (None if expected is None else Path(expected.format(tmp=tmp_path)))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("{tmp}", "GATEWAY_AUDIT_LOG must be a file path, got the folder '{tmp}': name a file in it"),
        ("{tmp}/missing/audit.log",
         "GATEWAY_AUDIT_LOG folder '{tmp}/missing' does not exist: create it or choose another path"),
    ],
)
def test_setting_audit_log_path_invalid(tmp_path: Path, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({"GATEWAY_AUDIT_LOG": value.format(tmp=tmp_path)})

    assert str(raised.value) == message.format(tmp=tmp_path)
