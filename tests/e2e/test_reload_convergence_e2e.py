"""Every gunicorn worker converges on the last valid policy, with or without requests of its own."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from gateway.keys.material import SigningKey
from tests.e2e.conftest import FREE_ID, gateway_env
from tests.support.gateway_ops import (
    events,
    metrics_text,
    parse_json_lines,
    policy_version,
    version_gauges,
    video_claims,
    wait_for_workers,
    wait_until,
    worker_pids,
    write_atomically,
)
from tests.support.gateway_process import PROJECT_ROOT, GatewayProcess
from tests.support.redis_server import RedisServer
from tests.support.viewers import ViewerIssuer

pytestmark = pytest.mark.e2e

WORKERS = 2
# Each worker checks the files every second: 10 s leaves room for a loaded two-core machine.
CONVERGENCE_TIMEOUT = 10.0
# Each request opens a new connection, so these requests usually reach every worker.
SPREAD_REQUESTS = 12


@dataclass
class ConvergenceSetup:
    gateway: GatewayProcess
    policy_file: Path
    original_text: str
    original_version: str


@pytest.fixture
def setup(
    tmp_path: Path, redis_server: RedisServer, mux_key: SigningKey, issuer: ViewerIssuer
) -> Iterator[ConvergenceSetup]:
    redis_server.start()
    policy_dir = tmp_path / "policies"
    policy_dir.mkdir()
    policy_file = policy_dir / "example.yaml"
    original_text = (PROJECT_ROOT / "policies" / "example.yaml").read_text()
    policy_file.write_text(original_text)

    env = {**gateway_env(mux_key, issuer, redis_server.url), "GATEWAY_POLICY_PATH": str(policy_dir)}
    gateway = GatewayProcess(env, tmp_path, workers=WORKERS)
    gateway.start()
    try:
        wait_for_workers(gateway, WORKERS)
        yield ConvergenceSetup(gateway, policy_file, original_text, policy_version(policy_file))
    finally:
        gateway.stop()


def with_resolution(text: str, resolution: str) -> str:
    # Only the free-anonymous rule grants 720p in the example policy.
    assert text.count("max_resolution: 720p") == 1
    return text.replace("max_resolution: 720p", f"max_resolution: {resolution}")


def all_workers_on(gateway: GatewayProcess, version: str, previous: str) -> bool:
    gauges = version_gauges(metrics_text(gateway))
    pids = worker_pids(gateway)
    return len(pids) == WORKERS and all(gauges.get(pid) == {version: 1.0, previous: 0.0} for pid in pids)


def readyz_versions(gateway: GatewayProcess) -> set[str]:
    versions: set[str] = set()
    for _ in range(SPREAD_REQUESTS):
        response = requests.get(f"{gateway.url}/readyz", timeout=10)
        assert response.status_code == 200
        versions.add(response.json()["policy_version"])
    return versions


def free_resolutions(gateway: GatewayProcess, mux_key: SigningKey) -> list[str]:
    body = {"playback_id": FREE_ID, "audiences": ["video"]}
    resolutions: list[str] = []
    for _ in range(SPREAD_REQUESTS):
        response = requests.post(f"{gateway.url}/v1/tokens", json=body, timeout=10)
        assert response.status_code == 200
        resolutions.append(video_claims(response, mux_key.private_key.public_key())["max_resolution"])
    return resolutions


def test_idle_workers_pick_up_change(setup: ConvergenceSetup, mux_key: SigningKey) -> None:
    gateway = setup.gateway
    write_atomically(setup.policy_file, with_resolution(setup.original_text, "480p"))
    changed = policy_version(setup.policy_file)

    # /metrics does not check the policy files, so only the workers' own threads can reload here.
    wait_until(lambda: all_workers_on(gateway, changed, setup.original_version), CONVERGENCE_TIMEOUT,
               "every idle worker on the changed policy")

    assert readyz_versions(gateway) == {changed}
    assert free_resolutions(gateway, mux_key) == ["480p"] * SPREAD_REQUESTS


def test_worker_seeing_only_broken_file_converges(setup: ConvergenceSetup, mux_key: SigningKey) -> None:
    gateway = setup.gateway
    first, second = worker_pids(gateway)
    valid_text = with_resolution(setup.original_text, "480p")

    # The second worker sleeps through the valid edit, so the only change it ever reads is the
    # broken one, as a worker does when a valid edit is followed quickly by a broken one.
    os.kill(second, signal.SIGSTOP)
    try:
        write_atomically(setup.policy_file, valid_text)
        valid = policy_version(setup.policy_file)
        wait_until(lambda: version_gauges(metrics_text(gateway)).get(first) == {valid: 1.0,
                                                                               setup.original_version: 0.0},
                   CONVERGENCE_TIMEOUT, "the running worker on the valid edit")
        write_atomically(setup.policy_file, with_resolution(setup.original_text, "9000p"))
        wait_until(lambda: bool(events(parse_json_lines(gateway.log_path), "audit.policy.reload",
                                       pid=first, result="rejected")),
                   CONVERGENCE_TIMEOUT, "the running worker rejecting the broken edit")
    finally:
        os.kill(second, signal.SIGCONT)

    wait_until(lambda: all_workers_on(gateway, valid, setup.original_version), CONVERGENCE_TIMEOUT,
               "every worker on the last valid edit")

    assert readyz_versions(gateway) == {valid}
    assert free_resolutions(gateway, mux_key) == ["480p"] * SPREAD_REQUESTS
    entries = parse_json_lines(gateway.log_path)
    second_reloads = [(entry["result"], entry.get("source"), entry["version"])
                      for entry in events(entries, "audit.policy.reload", pid=second)]
    assert second_reloads == [("rejected", None, setup.original_version), ("loaded", "last-good copy", valid)]
    first_reloads = [(entry["result"], entry.get("source"), entry["version"])
                     for entry in events(entries, "audit.policy.reload", pid=first)]
    assert first_reloads == [("loaded", "file", valid), ("rejected", None, valid)]
