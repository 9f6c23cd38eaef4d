"""Helpers for operations tests against a real gunicorn: workers, JSON logs, metrics, load."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.support.gateway_process import GatewayProcess


def parse_json_lines(path: Path) -> list[dict[str, Any]]:
    """Parse every line of a log file as one JSON object. Raises AssertionError naming a bad line."""
    entries: list[dict[str, Any]] = []
    if not path.exists():
        return entries
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            raise AssertionError(f"{path.name}:{number} is not JSON: {line[:300]!r}") from None
        if not isinstance(entry, dict):
            raise AssertionError(f"{path.name}:{number} is not a JSON object: {line[:300]!r}")
        entries.append(entry)
    return entries


def events(entries: list[dict[str, Any]], event: str, **fields: Any) -> list[dict[str, Any]]:
    """Return the log entries with this `event` whose fields equal `fields`."""
    return [
        entry for entry in entries
        if entry.get("event") == event and all(entry.get(key) == value for key, value in fields.items())
    ]


def worker_pids(gateway: GatewayProcess) -> list[int]:
    """Return the pids of the gunicorn master's child processes, read from /proc."""
    assert gateway.process is not None
    master = gateway.process.pid
    children: list[int] = []
    for task in Path(f"/proc/{master}/task").iterdir():
        try:
            children.extend(int(pid) for pid in (task / "children").read_text().split())
        except FileNotFoundError:
            continue
    return sorted(children)


def wait_for_workers(gateway: GatewayProcess, count: int, timeout: float = 30.0) -> list[int]:
    """Wait until `count` workers run and each has logged worker.started; return their pids.

    A worker still booting when gunicorn stops misses SIGTERM (gunicorn installs the worker's
    signal handlers only after the fork), and the stop then waits the whole graceful timeout.
    """
    deadline = time.monotonic() + timeout
    while True:
        pids = worker_pids(gateway)
        started = {entry.get("pid") for entry in events(parse_json_lines(gateway.log_path), "worker.started")}
        if len(pids) == count and started.issuperset(pids):
            return pids
        if time.monotonic() > deadline:
            raise AssertionError(f"expected {count} booted workers, found {pids} (started: {sorted(started)})")
        time.sleep(0.05)


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `condition` every 50 ms until it is true. Raises AssertionError naming `what`."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def metrics_text(gateway: GatewayProcess) -> str:
    response = requests.get(f"{gateway.url}/metrics", timeout=10)
    assert response.status_code == 200
    return response.text


def sample_value(metrics: str, name: str, **labels: str) -> float:
    """Return the sample `name` whose labels equal `labels` exactly; 0.0 when there is none."""
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


def version_gauges(metrics: str) -> dict[int, dict[str, float]]:
    """Return playback_gateway_policy_version_info by worker pid: {pid: {version: value}}."""
    gauges: dict[int, dict[str, float]] = {}
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            if sample.name == "playback_gateway_policy_version_info":
                gauges.setdefault(int(sample.labels["pid"]), {})[sample.labels["version"]] = sample.value
    return gauges


def policy_version(*files: Path) -> str:
    """Compute a policy version by hand: SHA-256 of the files' bytes in load order, 12 hex digits."""
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.read_bytes())
    return digest.hexdigest()[:12]


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` in one rename, as deployment tools do, so no reader sees half a file."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text, encoding="utf-8")
    temporary.replace(path)


def video_claims(response: requests.Response, public_key: Any) -> dict[str, Any]:
    """Decode and verify the video token of a /v1/tokens response."""
    token = response.json()["tokens"]["video"]
    claims: dict[str, Any] = jwt.decode(token, public_key, algorithms=["RS256"], options={"verify_aud": False})
    return claims


@dataclass
class LoadResult:
    """One request sent by a LoadGenerator."""

    status: int
    request_id: str
    max_resolution: str | None


@dataclass
class LoadGenerator:
    """Threads posting one body to /v1/tokens, each request on a new connection, until stopped.

    A new connection per request spreads the load over every gunicorn worker.
    """

    gateway: GatewayProcess
    body: dict[str, Any]
    public_key: Any
    threads: int = 4
    results: list[LoadResult] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @contextmanager
    def running(self) -> Iterator[LoadGenerator]:
        workers = [threading.Thread(target=self._post_until_stopped, daemon=True) for _ in range(self.threads)]
        for worker in workers:
            worker.start()
        try:
            yield self
        finally:
            self._stop.set()
            for worker in workers:
                worker.join(timeout=30)

    def _post_until_stopped(self) -> None:
        while not self._stop.is_set():
            try:
                response = requests.post(f"{self.gateway.url}/v1/tokens", json=self.body, timeout=10)
                resolution = None
                if response.status_code == 200:
                    resolution = video_claims(response, self.public_key).get("max_resolution")
                result = LoadResult(response.status_code, response.headers.get("X-Request-Id", ""), resolution)
            except (requests.RequestException, jwt.PyJWTError) as error:
                with self._lock:
                    self.errors.append(f"{type(error).__name__}: {error}")
                continue
            with self._lock:
                self.results.append(result)

    def count(self) -> int:
        with self._lock:
            return len(self.results)

    def snapshot(self) -> list[LoadResult]:
        with self._lock:
            return list(self.results)
