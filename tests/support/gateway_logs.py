"""Read the JSON log lines of a GatewayProcess and wait for events in them."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from tests.support.gateway_process import GatewayProcess


def log_events(process: GatewayProcess, event: str | None = None) -> list[dict[str, Any]]:
    """Return the parsed log lines of `process`, only those named `event` when given."""
    events: list[dict[str, Any]] = []
    for line in process.logs().splitlines():
        if not line.startswith("{"):
            continue
        try:
            parsed = json.loads(line)
        except ValueError:
            continue
        if event is None or parsed.get("event") == event:
            events.append(parsed)
    return events


def wait_for_events(process: GatewayProcess, event: str, count: int, timeout: float = 15.0,
                    while_waiting: Callable[[], object] | None = None) -> list[dict[str, Any]]:
    """Poll the log until `event` appears `count` times or `timeout` seconds pass; return them.

    `while_waiting` runs between polls, for events that only a request triggers.
    """
    deadline = time.monotonic() + timeout
    found = log_events(process, event)
    while len(found) < count and time.monotonic() < deadline:
        if while_waiting is not None:
            while_waiting()
        time.sleep(0.05)
        found = log_events(process, event)
    return found


def wait_for_workers(process: GatewayProcess, timeout: float = 15.0) -> None:
    """Wait until every gunicorn worker has built its app, not just the first one that serves."""
    started = wait_for_events(process, "worker.started", process.workers, timeout)
    if len(started) < process.workers:
        raise RuntimeError(f"{len(started)} of {process.workers} workers started:\n{process.logs()[-3000:]}")
