"""Run `playback-gateway serve` (real gunicorn) on a free port for end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from tests.support.redis_server import free_port

PROJECT_ROOT = Path(__file__).resolve().parents[2]


class GatewayProcess:
    """One gunicorn master with its workers. Logs go to a file the tests can scan."""

    def __init__(self, env: dict[str, str], workdir: Path, workers: int = 2, threads: int = 4) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.log_path = workdir / f"gateway-{self.port}.log"
        self.env = {
            **{key: value for key, value in os.environ.items() if not key.startswith(("GATEWAY_", "MUX_"))},
            "GATEWAY_DATA_DIR": str(workdir / "data"),
            "GATEWAY_POLICY_PATH": str(PROJECT_ROOT / "policies"),
            "PROMETHEUS_MULTIPROC_DIR": str(workdir / f"metrics-{self.port}"),
            **env,
        }
        self.workers = workers
        self.threads = threads
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait_ready: bool = True) -> None:
        command = [
            sys.executable, "-m", "gateway.cli", "serve", "--bind", f"127.0.0.1:{self.port}",
            "--workers", str(self.workers), "--threads", str(self.threads),
        ]
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(command, cwd=self.workdir, env=self.env, stdout=log, stderr=log)
        log.close()
        if wait_ready:
            self.wait_until_serving()

    def wait_until_serving(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.process.returncode}:\n{self.logs()[-3000:]}")
            try:
                healthy = requests.get(f"{self.url}/healthz", timeout=0.5).status_code == 200
            except requests.RequestException:
                healthy = False
            # Wait for every worker: one still booting when SIGTERM arrives misses it, and stopping
            # would then wait out gunicorn's whole graceful timeout.
            if healthy and self.logs().count('"event":"worker.started"') >= self.workers:
                return
            time.sleep(0.1)
        raise RuntimeError(f"gateway did not start within {timeout} s:\n{self.logs()[-3000:]}")

    def stop(self) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        code = self.process.returncode
        self.process = None
        return code

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
