"""The gunicorn master runs no background threads: only workers watch the keyring."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from gateway.keys.simulator import Simulator
from tests.support.gateway_ops import worker_pids
from tests.support.gateway_process import GatewayProcess
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.e2e


def thread_count(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^Threads:\s+(\d+)$", status, re.MULTILINE)
    assert match is not None
    return int(match.group(1))


def key_management_env(simulator: Simulator, redis_server: RedisServer) -> dict[str, str]:
    return {
        "MUX_TOKEN_ID": simulator.token_id,
        "MUX_TOKEN_SECRET": simulator.token_secret,
        "GATEWAY_MUX_API_URL": simulator.url,
        "GATEWAY_REDIS_URL": redis_server.url,
        "GATEWAY_KEYRING_KEY": base64.b64encode(os.urandom(32)).decode(),
    }


def test_master_has_one_thread_with_key_management(tmp_path: Path, redis_server: RedisServer) -> None:
    redis_server.start()
    redis_server.flush()
    with Simulator() as simulator:
        gateway = GatewayProcess(key_management_env(simulator, redis_server), tmp_path, workers=2)
        gateway.start()
        try:
            assert gateway.process is not None
            master_threads = thread_count(gateway.process.pid)
            ready = requests.get(f"{gateway.url}/readyz", timeout=10)
            workers_threads = [thread_count(pid) for pid in worker_pids(gateway)]
        finally:
            gateway.stop()

    assert ready.status_code == 200
    assert master_threads == 1
    # Each worker runs gunicorn's thread pool plus its own keyring watcher.
    assert all(count > 1 for count in workers_threads)


def test_plain_gunicorn_master_has_one_thread(tmp_path: Path, redis_server: RedisServer) -> None:
    """The same holds when gunicorn is run directly with the gateway's config module."""
    redis_server.start()
    redis_server.flush()
    with Simulator() as simulator:
        process = GatewayProcess(key_management_env(simulator, redis_server), tmp_path, workers=2)
        command = [str(Path(sys.executable).with_name("gunicorn")), "--config", "python:gateway.gunicorn_conf",
                   "--bind", f"127.0.0.1:{process.port}", "--workers", "2"]
        with process.log_path.open("ab") as log:
            process.process = subprocess.Popen(command, cwd=tmp_path, env=process.env, stdout=log, stderr=log)
        try:
            process.wait_until_serving()
            master_threads = thread_count(process.process.pid)
            ready = requests.get(f"{process.url}/readyz", timeout=10)
        finally:
            process.stop()

    assert ready.status_code == 200
    assert master_threads == 1
