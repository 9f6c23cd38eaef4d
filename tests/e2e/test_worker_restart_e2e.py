"""A worker that replaces a crashed one starts from the validated state, not from broken files."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import pytest
import requests

from tests.support.gateway_ops import wait_until, worker_pids
from tests.support.gateway_process import PROJECT_ROOT, GatewayProcess
from tests.support.service_clients import new_client, write_clients_file

pytestmark = pytest.mark.e2e

FREE_ID = "KRlqd83vjZzJDcWN85w32YRaDLwlHoGd6e7D5IsT8swO"


def test_replacement_worker_survives_broken_files(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(PROJECT_ROOT / "policies", policies, ignore=shutil.ignore_patterns("tests"))
    clients_file = tmp_path / "clients.yaml"
    minter = new_client("mobile-bff", "tokens:mint")
    write_clients_file(clients_file, [minter])

    gateway = GatewayProcess(
        {"GATEWAY_POLICY_PATH": str(policies), "GATEWAY_CLIENTS_FILE": str(clients_file)}, tmp_path, workers=2
    )
    gateway.start()
    try:
        version = requests.get(f"{gateway.url}/readyz", timeout=10).json()["policy_version"]
        clients_file.write_text("clients: [{id: broken}]\n")
        (policies / "example.yaml").write_text("version: 1\nrules: [{name: x, effect: sometimes}]\n")
        time.sleep(1.2)  # files are checked at most once a second
        requests.post(f"{gateway.url}/v1/tokens", json={"playback_id": FREE_ID}, timeout=10)

        victim = worker_pids(gateway)[0]
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: len(worker_pids(gateway)) == 2 and victim not in worker_pids(gateway), 30,
                   "a replacement worker")
        wait_until(lambda: gateway.logs().count('"event":"worker.started"') >= 3, 30, "the replacement to boot")

        statuses = [
            requests.post(f"{gateway.url}/v1/tokens", json={"playback_id": FREE_ID}, headers=minter.headers,
                          timeout=10).status_code
            for _ in range(20)
        ]
        ready = requests.get(f"{gateway.url}/readyz", timeout=10).json()
        master_alive = gateway.process is not None and gateway.process.poll() is None
    finally:
        gateway.stop()

    assert master_alive
    assert set(statuses) == {200}
    assert ready["status"] == "ok"
    assert ready["policy_version"] == version
