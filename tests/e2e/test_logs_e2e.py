"""Every log line of a real gunicorn run is JSON, carries its request id, and contains no secret."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.keys.material import SigningKey, pkcs1_pem
from tests.e2e.conftest import DRM_ID, FREE_ID, PREMIUM_ID, gateway_env
from tests.support.gateway_ops import events, parse_json_lines, wait_for_workers, wait_until, write_atomically
from tests.support.gateway_process import PROJECT_ROOT, GatewayProcess
from tests.support.redis_server import RedisServer, free_port
from tests.support.viewers import ViewerIssuer

pytestmark = pytest.mark.e2e

WORKERS = 2
API_KEY = "pgw_logs-test-client-key-0123456789abcdefghijklmnopq"
WRONG_API_KEY = "pgw_logs-test-wrong-key-0123456789abcdefghijklmnopq"
MUX_TOKEN_ID = "logs-test-token-id"
MUX_TOKEN_SECRET = "logsTestTokenSecret0123456789abcdefghijklmnopqrstuvwxyzABCDEF"
KEYRING_KEY = base64.b64encode(b"k" * 32).decode()
VIEWER_ID = "viewer-logs-plaintext-id"
ASSERTED_VIEWER_ID = "viewer-asserted-plaintext-id"

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
GENERATED_REQUEST_ID = re.compile(r"^[0-9a-f]{32}$")
# Events logged while handling a request: each must carry the request's id.
REQUEST_EVENTS = ("policy.decision", "policy.shadow_disagreement", "auth.", "http.access", "tokens.")


@dataclass
class Exchange:
    """One request sent by the test and the response it got."""

    request_id: str
    method: str
    path: str
    response: requests.Response


@dataclass
class LoggedRun:
    log: list[dict[str, Any]]
    log_text: str
    audit: list[dict[str, Any]]
    audit_text: str
    exchanges: list[Exchange] = field(default_factory=list)
    viewer_tokens: list[str] = field(default_factory=list)
    secrets: dict[str, str] = field(default_factory=dict)


def secrets_of(mux_key: SigningKey, env: dict[str, str], viewer_tokens: list[str]) -> dict[str, str]:
    """Name every secret of the run, with the text that must never appear in logs or responses."""
    assert isinstance(mux_key.private_key, rsa.RSAPrivateKey)
    pem = pkcs1_pem(mux_key.private_key).decode()
    pem_body = "".join(pem.strip().splitlines()[1:-1])
    found = {
        "Mux private key (PEM)": pem,
        "Mux private key (base64 of the PEM)": env["MUX_PRIVATE_KEY"],
        "Mux private key (first 64 characters of its base64 body)": pem_body[:64],
        "Mux private key (last 64 characters of its base64 body)": pem_body[-64:],
        "PRIVATE KEY marker": "PRIVATE KEY",
        "API key": API_KEY,
        "wrong API key": WRONG_API_KEY,
        "MUX_TOKEN_SECRET": MUX_TOKEN_SECRET,
        "keyring key": KEYRING_KEY,
    }
    for number, token in enumerate(viewer_tokens):
        found[f"viewer JWT {number}"] = token
        # A JWT's signature alone is enough to recognise a leaked token.
        found[f"viewer JWT {number} signature"] = token.rsplit(".", 1)[1]
    return found


@pytest.fixture(scope="module")
def run(
    tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer, mux_key: SigningKey,
    issuer: ViewerIssuer, forger: ViewerIssuer,
) -> Iterator[LoggedRun]:
    redis_server.start()
    workdir = tmp_path_factory.mktemp("logs")
    policy_dir = workdir / "policies"
    policy_dir.mkdir()
    policy_file = policy_dir / "example.yaml"
    policy_file.write_text((PROJECT_ROOT / "policies" / "example.yaml").read_text())
    clients_file = workdir / "clients.yaml"
    clients_file.write_text(
        f"clients:\n  - id: bff\n    key_sha256: {hashlib.sha256(API_KEY.encode()).hexdigest()}\n"
        "    scopes: [tokens:mint, viewer:assert]\n"
    )
    audit_file = workdir / "audit.log"
    env = {
        **gateway_env(mux_key, issuer, redis_server.url),
        "GATEWAY_POLICY_PATH": str(policy_dir),
        "GATEWAY_CLIENTS_FILE": str(clients_file),
        "GATEWAY_AUDIT_LOG": str(audit_file),
        "MUX_TOKEN_ID": MUX_TOKEN_ID,
        "MUX_TOKEN_SECRET": MUX_TOKEN_SECRET,
        "GATEWAY_KEYRING_KEY": KEYRING_KEY,
        # Nothing listens here: the run never needs the System API, and must never reach Mux.
        "GATEWAY_MUX_API_URL": f"http://127.0.0.1:{free_port()}",
    }
    viewer_tokens = [issuer.token(VIEWER_ID, ["premium"]), forger.token(VIEWER_ID, ["premium"])]

    gateway = GatewayProcess(env, workdir, workers=WORKERS)
    gateway.start()
    try:
        wait_for_workers(gateway, WORKERS)
        exchanges = exercise(gateway, viewer_tokens)
        change_policy_until_audited(gateway, policy_file, audit_file)
    finally:
        exit_code = gateway.stop()
    assert exit_code == 0

    yield LoggedRun(
        log=parse_json_lines(gateway.log_path),
        log_text=gateway.log_path.read_text(),
        audit=parse_json_lines(audit_file),
        audit_text=audit_file.read_text(),
        exchanges=exchanges,
        viewer_tokens=viewer_tokens,
        secrets=secrets_of(mux_key, env, viewer_tokens),
    )


def exercise(gateway: GatewayProcess, viewer_tokens: list[str]) -> list[Exchange]:
    """Send one request of each outcome: success, denial, 400, 401 (JWT and API key) and 404."""
    valid_jwt, forged_jwt = viewer_tokens
    calls: list[tuple[str, str, dict[str, str], Any]] = [
        ("POST", "/v1/tokens", {}, {"playback_id": FREE_ID}),
        ("POST", "/v1/tokens", {"Authorization": f"Bearer {valid_jwt}"}, {"playback_id": PREMIUM_ID}),
        ("POST", "/v1/tokens", {"X-Api-Key": API_KEY},
         {"playback_id": PREMIUM_ID, "viewer": {"id": ASSERTED_VIEWER_ID, "entitlements": ["premium"]}}),
        ("POST", "/v1/decisions/explain", {"Authorization": f"Bearer {valid_jwt}"}, {"playback_id": PREMIUM_ID}),
        ("POST", "/v1/tokens/batch", {}, {"items": [{"playback_id": FREE_ID}, {"playback_id": "bad id"}]}),
        ("POST", "/v1/tokens", {}, {"playback_id": DRM_ID}),
        ("POST", "/v1/tokens", {}, {"playback_id": "bad id"}),
        ("POST", "/v1/tokens", {"Authorization": f"Bearer {forged_jwt}"}, {"playback_id": FREE_ID}),
        ("POST", "/v1/tokens", {"X-Api-Key": WRONG_API_KEY}, {"playback_id": FREE_ID}),
        ("GET", "/v1/nothing", {}, None),
    ]
    exchanges = []
    for number, (method, path, headers, body) in enumerate(calls):
        request_id = f"logs-{number}"
        response = requests.request(method, f"{gateway.url}{path}", json=body,
                                    headers={**headers, "X-Request-Id": request_id}, timeout=10)
        exchanges.append(Exchange(request_id, method, path, response))
    return exchanges


def change_policy_until_audited(gateway: GatewayProcess, policy_file: Path, audit_file: Path) -> None:
    """Edit the policy and ask /readyz (which reloads) until a worker writes the audit event."""
    write_atomically(policy_file, policy_file.read_text() + "# edited by the logs test\n")

    def audited() -> bool:
        requests.get(f"{gateway.url}/readyz", timeout=10)
        return bool(events(parse_json_lines(audit_file), "audit.policy.reload"))

    wait_until(audited, 10.0, "an audit.policy.reload event in the audit file")


def test_statuses_of_exercised_requests(run: LoggedRun) -> None:
    assert [exchange.response.status_code for exchange in run.exchanges] == [
        200, 200, 200, 200, 200, 403, 400, 401, 401, 404,
    ]
    for exchange in run.exchanges:
        assert exchange.response.headers["X-Request-Id"] == exchange.request_id


def test_every_line_is_a_json_event(run: LoggedRun) -> None:
    assert len(run.log) == len(run.log_text.splitlines())
    for entry in run.log:
        assert isinstance(entry["event"], str)
        assert entry["event"] != ""
        assert entry["level"] in {"debug", "info", "warning", "error", "critical"}
        assert TIMESTAMP.match(entry["ts"]), entry
        assert isinstance(entry["pid"], int)
        assert isinstance(entry["logger"], str)

    # gunicorn's own start and stop lines go through the same formatter.
    gunicorn_events = [entry["event"] for entry in run.log if entry["logger"] == "gunicorn.error"]
    assert gunicorn_events[0].startswith("Starting gunicorn ")
    assert gunicorn_events[-1] == "Shutting down: Master"


def test_access_lines_match_responses(run: LoggedRun) -> None:
    access = events(run.log, "http.access")
    for exchange in run.exchanges:
        [line] = [entry for entry in access if entry["request_id"] == exchange.request_id]
        assert line["method"] == exchange.method
        assert line["path"] == exchange.path
        assert line["status"] == exchange.response.status_code
        assert line["logger"] == "gunicorn.access"
    # The readiness and start-up polls sent no X-Request-Id: the gateway generated one.
    others = [entry["request_id"] for entry in access if not entry["request_id"].startswith("logs-")]
    assert others != []
    assert all(GENERATED_REQUEST_ID.match(request_id) for request_id in others)


def test_request_events_carry_request_id(run: LoggedRun) -> None:
    request_lines = [entry for entry in run.log if entry["event"].startswith(REQUEST_EVENTS)]
    assert request_lines != []
    for entry in request_lines:
        assert "request_id" in entry, entry

    by_id = {exchange.request_id: exchange for exchange in run.exchanges}
    decisions = {entry["request_id"]: entry for entry in events(run.log, "policy.decision")
                 if entry["request_id"] in by_id}
    assert decisions["logs-0"]["rule"] == "free-anonymous"
    assert decisions["logs-5"]["effect"] == "deny"
    assert [entry["event"] for entry in run.log if entry.get("request_id") == "logs-7"] == [
        "auth.viewer_rejected", "http.access"]
    assert [entry["event"] for entry in run.log if entry.get("request_id") == "logs-8"] == [
        "auth.api_key_rejected", "http.access"]


def test_viewer_ids_are_hashed(run: LoggedRun) -> None:
    decisions = {entry["request_id"]: entry for entry in events(run.log, "policy.decision")}

    assert decisions["logs-1"]["viewer"] == hashlib.sha256(VIEWER_ID.encode()).hexdigest()[:16]
    assert decisions["logs-2"]["viewer"] == hashlib.sha256(ASSERTED_VIEWER_ID.encode()).hexdigest()[:16]
    assert decisions["logs-2"]["client"] == "bff"
    for text in (run.log_text, run.audit_text):
        assert VIEWER_ID not in text
        assert ASSERTED_VIEWER_ID not in text


def test_audit_file_holds_only_audit_events(run: LoggedRun) -> None:
    assert run.audit != []
    assert all(entry["event"].startswith("audit.") for entry in run.audit)
    reload = events(run.audit, "audit.policy.reload")[0]
    assert reload["result"] == "loaded"
    assert reload["policy"] == "live"
    # Every audit event is in the main stream too.
    assert all(entry in run.log for entry in run.audit)


def test_no_secret_in_logs_or_responses(run: LoggedRun) -> None:
    responses = "\n".join(
        "\n".join(f"{name}: {value}" for name, value in exchange.response.headers.items())
        + "\n" + exchange.response.text
        for exchange in run.exchanges
    )
    minted = [token for exchange in run.exchanges if exchange.response.status_code == 200
              for item in [exchange.response.json(), *exchange.response.json().get("items", [])]
              for token in item.get("tokens", {}).values()]
    # Three tokens for each of three /v1/tokens successes and the one good batch item.
    assert len(minted) == 12
    # A scan for an empty or tiny string would pass for the wrong reason.
    assert min(len(secret) for secret in run.secrets.values()) >= 11

    for name, secret in run.secrets.items():
        assert secret not in run.log_text, f"{name} found in the log"
        assert secret not in run.audit_text, f"{name} found in the audit file"
        assert secret not in responses, f"{name} found in a response"
    for token in minted:
        assert token not in run.log_text
        assert token not in run.audit_text

