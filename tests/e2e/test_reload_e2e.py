"""Policy and clients file hot reload, shadow policy and a killed worker, through a 3-worker gunicorn."""

from __future__ import annotations

import hashlib
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from gateway.keys.material import SigningKey
from tests.e2e.conftest import FREE_ID, gateway_env
from tests.support.gateway_ops import (
    LoadGenerator,
    events,
    metrics_text,
    parse_json_lines,
    policy_version,
    sample_value,
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

WORKERS = 3
# Workers look at the files at most once a second, on their next request: 10 s leaves room for
# a loaded two-core machine without waiting that long when things work.
RELOAD_TIMEOUT = 10.0

BFF_KEY = "pgw_reload-test-key-one-0123456789abcdefghijklmnop"
NEW_CLIENT_KEY = "pgw_reload-test-key-two-0123456789abcdefghijklmnop"

SHADOW_RULE = """
  - name: shadow-signed-in-only
    effect: deny
    when: '!viewer.authenticated'
    message: Sign in to watch.
"""
BROKEN_RULE = "  - name: broken-rule\n    effect: maybe\n"


def clients_yaml(*clients: tuple[str, str]) -> str:
    lines = ["clients:"]
    for client_id, key in clients:
        lines += [f"  - id: {client_id}", f"    key_sha256: {hashlib.sha256(key.encode()).hexdigest()}",
                  "    scopes: [tokens:mint]"]
    return "\n".join(lines) + "\n"


@dataclass
class ReloadSetup:
    gateway: GatewayProcess
    policy_file: Path
    shadow_file: Path
    clients_file: Path
    audit_file: Path
    initial_version: str


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer, mux_key: SigningKey, issuer: ViewerIssuer
) -> Iterator[ReloadSetup]:
    redis_server.start()
    workdir = tmp_path_factory.mktemp("reload")
    example = (PROJECT_ROOT / "policies" / "example.yaml").read_text()

    policy_dir = workdir / "policies"
    policy_dir.mkdir()
    policy_file = policy_dir / "example.yaml"
    policy_file.write_text(example)
    shadow_file = workdir / "shadow.yaml"
    shadow_file.write_text(example + SHADOW_RULE)
    clients_file = workdir / "clients.yaml"
    clients_file.write_text(clients_yaml(("bff", BFF_KEY)))
    audit_file = workdir / "audit.log"

    env = {
        **gateway_env(mux_key, issuer, redis_server.url),
        "GATEWAY_POLICY_PATH": str(policy_dir),
        "GATEWAY_SHADOW_POLICY_PATH": str(shadow_file),
        "GATEWAY_CLIENTS_FILE": str(clients_file),
        "GATEWAY_AUDIT_LOG": str(audit_file),
    }
    gateway = GatewayProcess(env, workdir, workers=WORKERS)
    gateway.start()
    try:
        wait_for_workers(gateway, WORKERS)
        yield ReloadSetup(gateway, policy_file, shadow_file, clients_file, audit_file, policy_version(policy_file))
    finally:
        gateway.stop()


def post_free(gateway: GatewayProcess, headers: dict[str, str] | None = None) -> requests.Response:
    body = {"playback_id": FREE_ID, "audiences": ["video"]}
    return requests.post(f"{gateway.url}/v1/tokens", json=body, headers=headers or {}, timeout=10)


def test_shadow_policy_disagreement_logged(setup: ReloadSetup, mux_key: SigningKey, issuer: ViewerIssuer) -> None:
    gateway = setup.gateway
    metric = "playback_gateway_shadow_policy_disagreements_total"
    before = sample_value(metrics_text(gateway), metric, live_effect="allow", shadow_effect="deny")

    anonymous = [post_free(gateway, {"X-Request-Id": f"shadow-{number}"}) for number in range(5)]
    signed_in = post_free(gateway, {"X-Request-Id": "shadow-signed-in",
                                    "Authorization": f"Bearer {issuer.token('viewer-7')}"})
    after = sample_value(metrics_text(gateway), metric, live_effect="allow", shadow_effect="deny")

    # The shadow policy denies anonymous viewers, but the live policy decides the response.
    for response in anonymous:
        assert response.status_code == 200
        assert response.json()["rule"] == "free-anonymous"
        assert video_claims(response, mux_key.private_key.public_key())["max_resolution"] == "720p"
    assert signed_in.status_code == 200
    assert signed_in.json()["rule"] == "free-signed-in"
    assert after - before == 5

    entries = parse_json_lines(gateway.log_path)
    disagreements = [entry for entry in events(entries, "policy.shadow_disagreement")
                     if entry.get("request_id", "").startswith("shadow-")]
    assert sorted(entry["request_id"] for entry in disagreements) == [f"shadow-{number}" for number in range(5)]
    for entry in disagreements:
        assert entry["playback_id"] == FREE_ID
        assert entry["viewer"] is None
        assert entry["live_effect"] == "allow"
        assert entry["live_rule"] == "free-anonymous"
        assert entry["live_version"] == setup.initial_version
        assert entry["live_grant"] == {"audiences": ["video"], "ttl": 3600,
                                      "claims": {"video": {"max_resolution": "720p"}}}
        assert entry["shadow_effect"] == "deny"
        assert entry["shadow_rule"] == "shadow-signed-in-only"
        assert entry["shadow_version"] == policy_version(setup.shadow_file)
        assert entry["shadow_grant"] is None


def all_workers_on(gateway: GatewayProcess, version: str, previous: str) -> bool:
    gauges = version_gauges(metrics_text(gateway))
    pids = worker_pids(gateway)
    return len(pids) == WORKERS and all(gauges.get(pid) == {version: 1.0, previous: 0.0} for pid in pids)


def reload_count(gateway: GatewayProcess, result: str) -> float:
    return sample_value(metrics_text(gateway), "playback_gateway_policy_reloads_total", result=result)


def readyz_version(gateway: GatewayProcess) -> str:
    response = requests.get(f"{gateway.url}/readyz", timeout=10)
    assert response.status_code == 200
    version: str = response.json()["policy_version"]
    return version


def test_policy_reload_under_load(setup: ReloadSetup, mux_key: SigningKey) -> None:
    gateway, public_key = setup.gateway, mux_key.private_key.public_key()
    valid_text = setup.policy_file.read_text().replace("max_resolution: 720p", "max_resolution: 480p")
    broken_text = valid_text + BROKEN_RULE
    initial, reloaded = setup.initial_version, ""
    assert readyz_version(gateway) == initial

    load = LoadGenerator(gateway, {"playback_id": FREE_ID, "audiences": ["video"]}, public_key)
    with load.running():
        wait_until(lambda: load.count() >= 20, RELOAD_TIMEOUT, "load before the change")
        write_atomically(setup.policy_file, valid_text)
        reloaded = policy_version(setup.policy_file)
        wait_until(lambda: all_workers_on(gateway, reloaded, initial), RELOAD_TIMEOUT, "every worker on the new policy")
        fresh = [post_free(gateway) for _ in range(6)]

        write_atomically(setup.policy_file, broken_text)
        wait_until(lambda: reload_count(gateway, "rejected") == WORKERS, RELOAD_TIMEOUT,
                   "every worker rejecting the broken file")
        ready_after_rejection = readyz_version(gateway)
        mark = load.count()
        wait_until(lambda: load.count() >= mark + 20, RELOAD_TIMEOUT, "load after the rejection")

    results = load.snapshot()
    metrics = metrics_text(gateway)

    assert load.errors == []
    assert {result.status for result in results} == {200}
    assert {result.max_resolution for result in results} == {"720p", "480p"}
    assert {result.max_resolution for result in results[mark:]} == {"480p"}
    assert [video_claims(response, public_key)["max_resolution"] for response in fresh] == ["480p"] * 6
    assert ready_after_rejection == reloaded
    assert all_workers_on(gateway, reloaded, initial)
    assert sample_value(metrics, "playback_gateway_policy_reloads_total", result="loaded") == WORKERS
    assert sample_value(metrics, "playback_gateway_policy_reloads_total", result="rejected") == WORKERS

    # Each decision's log line names the policy version that made it.
    entries = parse_json_lines(gateway.log_path)
    versions = {entry["request_id"]: entry["policy_version"] for entry in events(entries, "policy.decision")}
    expected_version = {"720p": initial, "480p": reloaded}
    assert [versions[result.request_id] for result in results] == [
        expected_version[str(result.max_resolution)] for result in results
    ]

    broken_line = len(valid_text.splitlines()) + 2
    problem = f"{setup.policy_file}:{broken_line}: broken-rule: invalid effect 'maybe': use allow or deny"
    assert_reload_audit(entries, setup, worker_pids(gateway), initial, reloaded, problem)


def assert_reload_audit(entries: list[dict[str, Any]], setup: ReloadSetup, pids: list[int], initial: str,
                        reloaded: str, problem: str) -> None:
    """Check the audit.policy.reload events: one per worker and result, in the log and the audit file."""
    in_log = events(entries, "audit.policy.reload")
    in_audit_file = events(parse_json_lines(setup.audit_file), "audit.policy.reload")

    loaded = [entry for entry in in_log if entry["result"] == "loaded"]
    rejected = [entry for entry in in_log if entry["result"] == "rejected"]
    assert len(in_log) == 2 * WORKERS
    assert sorted(entry["pid"] for entry in loaded) == pids
    assert sorted(entry["pid"] for entry in rejected) == pids
    for entry in loaded:
        assert entry["actor"] is None
        assert entry["policy"] == "live"
        assert entry["path"] == str(setup.policy_file.parent)
        assert entry["version"] == reloaded
        assert entry["previous_version"] == initial
        assert entry["rules"] == 7
    for entry in rejected:
        assert entry["actor"] is None
        assert entry["policy"] == "live"
        assert entry["version"] == reloaded
        assert entry["problems"] == [problem]
        assert entry["problem_count"] == 1

    def key(entry: dict[str, Any]) -> tuple[int, str]:
        return entry["pid"], entry["result"]

    assert sorted(in_audit_file, key=key) == sorted(in_log, key=key)


def test_clients_file_reload(setup: ReloadSetup) -> None:
    gateway = setup.gateway
    rejected = post_free(gateway, {"X-Api-Key": NEW_CLIENT_KEY})
    write_atomically(setup.clients_file, clients_yaml(("bff", BFF_KEY), ("bff-2", NEW_CLIENT_KEY)))

    # Workers that checked the file less than a second ago still return 401 once or twice.
    statuses: list[int] = []

    def nine_accepted_in_a_row() -> bool:
        statuses.append(post_free(gateway, {"X-Api-Key": NEW_CLIENT_KEY}).status_code)
        return statuses[-9:] == [200] * 9

    wait_until(nine_accepted_in_a_row, RELOAD_TIMEOUT, "nine accepted requests in a row with the new key")
    old_key = post_free(gateway, {"X-Api-Key": BFF_KEY})

    assert rejected.status_code == 401
    assert rejected.json()["detail"] == "The API key is not known: check the X-Api-Key header."
    assert set(statuses) <= {200, 401}
    assert old_key.status_code == 200
    assert old_key.json()["rule"] == "free-anonymous"

    reloads = events(parse_json_lines(setup.audit_file), "audit.clients.reload")
    assert 1 <= len(reloads) <= WORKERS
    for entry in reloads:
        assert entry["result"] == "loaded"
        assert entry["actor"] == "file"
        assert entry["clients"] == 2
        assert entry["pid"] in worker_pids(gateway)


def test_killed_worker_keeps_metric_totals(
    tmp_path: Path, redis_server: RedisServer, mux_key: SigningKey, issuer: ViewerIssuer
) -> None:
    redis_server.start()
    gateway = GatewayProcess(gateway_env(mux_key, issuer, redis_server.url), tmp_path, workers=WORKERS)
    gateway.start()
    try:
        pids = wait_for_workers(gateway, WORKERS)
        statuses = [mint_uncached(gateway, number).status_code for number in range(30)]

        victim = pids[0]
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: victim not in worker_pids(gateway), RELOAD_TIMEOUT, "the master to reap the worker")
        after_kill = wait_for_workers(gateway, WORKERS)
        [replacement] = sorted(set(after_kill) - set(pids))

        # Send until the replacement worker has decided one request.
        served_by_replacement: list[str] = []

        def replacement_served() -> bool:
            response = mint_uncached(gateway, len(statuses))
            statuses.append(response.status_code)
            decisions = events(parse_json_lines(gateway.log_path), "policy.decision",
                               request_id=response.headers["X-Request-Id"], pid=replacement)
            served_by_replacement.extend(entry["request_id"] for entry in decisions)
            return bool(served_by_replacement)

        wait_until(replacement_served, RELOAD_TIMEOUT, "a request served by the replacement worker")
        metrics = metrics_text(gateway)
        log = parse_json_lines(gateway.log_path)
    finally:
        gateway.stop()

    total = len(statuses)
    assert set(statuses) == {200}
    assert len(served_by_replacement) == 1
    assert sample_value(metrics, "playback_gateway_requests_total",
                        method="POST", route="/v1/tokens", status="200") == total
    assert sample_value(metrics, "playback_gateway_tokens_minted_total", audience="video") == total
    assert sample_value(metrics, "playback_gateway_policy_decisions_total",
                        effect="allow", rule="free-anonymous") == total
    assert sample_value(metrics, "playback_gateway_token_cache_requests_total", result="miss") == total
    # The dead worker's live gauge is gone; the replacement's is there.
    assert sorted(version_gauges(metrics)) == sorted(after_kill)
    assert victim not in after_kill
    assert any(f"Worker (pid:{victim}) was sent SIGKILL" in str(entry.get("event")) for entry in log)


def mint_uncached(gateway: GatewayProcess, number: int) -> requests.Response:
    # A distinct ttl per request gives each its own cache key, so every request signs a token.
    body = {"playback_id": FREE_ID, "audiences": ["video"], "ttl": 600 + number}
    return requests.post(f"{gateway.url}/v1/tokens", json=body, timeout=10)
