"""The System API simulator over plain HTTP: auth, envelopes, pagination, rate limit, control routes."""

from __future__ import annotations

import base64
import subprocess
import sys

import requests

from gateway.keys.material import parse_private_key
from gateway.keys.simulator import Simulator


def auth(simulator: Simulator) -> tuple[str, str]:
    return simulator.token_id, simulator.token_secret


def test_missing_credentials_get_401(simulator: Simulator) -> None:
    response = requests.get(simulator.url + "/system/v1/signing-keys", timeout=5)

    assert response.status_code == 401
    assert response.json() == {"error": {
        "type": "unauthorized",
        "messages": ["Unauthorized request: check the access token id and secret"],
    }}


def test_create_returns_base64_pkcs1(simulator: Simulator) -> None:
    response = requests.post(simulator.url + "/system/v1/signing-keys", auth=auth(simulator), timeout=5)

    assert response.status_code == 201
    data = response.json()["data"]
    assert set(data) == {"id", "created_at", "private_key"}
    assert data["created_at"].isdigit()
    assert base64.b64decode(data["private_key"]).startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    assert parse_private_key(data["private_key"]).key_size == 2048


def test_get_and_delete_envelopes(simulator: Simulator) -> None:
    key, _ = simulator.add_key()
    url = f"{simulator.url}/system/v1/signing-keys/{key.kid}"

    got = requests.get(url, auth=auth(simulator), timeout=5)
    deleted = requests.delete(url, auth=auth(simulator), timeout=5)
    missing = requests.delete(url, auth=auth(simulator), timeout=5)

    assert got.status_code == 200
    assert got.json() == {"data": {"id": key.kid, "created_at": str(key.created_at)}}
    assert deleted.status_code == 204
    assert deleted.content == b""
    assert missing.status_code == 404
    assert missing.json() == {"error": {"type": "not_found", "messages": ["Signing key not found"]}}


def test_pagination(simulator: Simulator, rsa_key: object) -> None:
    kids = [simulator.add_key(rsa_key)[0].kid for _ in range(5)]  # type: ignore[arg-type]
    url = simulator.url + "/system/v1/signing-keys"

    pages = [
        requests.get(url, params={"limit": 2, "page": page}, auth=auth(simulator), timeout=5).json()["data"]
        for page in (1, 2, 3, 4)
    ]

    assert [[item["id"] for item in page] for page in pages] == [kids[0:2], kids[2:4], kids[4:5], []]


def test_invalid_page_size(simulator: Simulator) -> None:
    response = requests.get(
        simulator.url + "/system/v1/signing-keys", params={"limit": 101}, auth=auth(simulator), timeout=5
    )

    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_parameters"


def test_rate_limit_answers_429() -> None:
    with Simulator(post_rate=1, post_burst=1, other_rate=1, other_burst=2) as simulator:
        url = simulator.url + "/system/v1/signing-keys"
        statuses = [requests.get(url, auth=auth(simulator), timeout=5) for _ in range(3)]

    assert [response.status_code for response in statuses] == [200, 200, 429]
    assert statuses[2].headers["Retry-After"] == "1"
    assert statuses[2].json()["error"]["type"] == "too_many_requests"


def test_faults_over_http(simulator: Simulator) -> None:
    control = simulator.url + "/_sim/faults"

    added = requests.post(control, json=[{"kind": "error", "operation": "create", "status": 500}], timeout=5)
    failed = requests.post(simulator.url + "/system/v1/signing-keys", auth=auth(simulator), timeout=5)
    created = requests.post(simulator.url + "/system/v1/signing-keys", auth=auth(simulator), timeout=5)

    assert added.json() == {"pending": 1}
    assert failed.status_code == 500
    assert created.status_code == 201
    assert simulator.pending_faults() == 0


def test_invalid_fault_rejected(simulator: Simulator) -> None:
    response = requests.post(simulator.url + "/_sim/faults", json={"kind": "meteor"}, timeout=5)

    assert response.status_code == 400
    assert response.json() == {
        "error": "fault kind must be one of latency, error, rate_limit, malformed, lost_response, got 'meteor'"
    }


def test_clear_faults_over_http(simulator: Simulator) -> None:
    simulator.inject("error", count=3)

    response = requests.delete(simulator.url + "/_sim/faults", timeout=5)

    assert response.json() == {"pending": 0}
    assert simulator.pending_faults() == 0


def test_keys_over_http_include_public_keys(simulator: Simulator) -> None:
    key, _ = simulator.add_key()

    listed = requests.get(simulator.url + "/_sim/keys", timeout=5).json()["data"]

    assert listed == [{"id": key.kid, "created_at": str(key.created_at), "public_key": key.public_pem()}]


def test_lost_response_closes_connection(simulator: Simulator) -> None:
    simulator.inject("lost_response", "create")

    try:
        requests.post(simulator.url + "/system/v1/signing-keys", auth=auth(simulator), timeout=5)
        outcome = "answered"
    except requests.ConnectionError:
        outcome = "connection closed"

    assert outcome == "connection closed"
    assert len(simulator.key_ids()) == 1


def test_command_line_prints_url() -> None:
    command = [
        sys.executable, "-m", "gateway.keys.simulator", "--token-id", "cli-id", "--token-secret", "cli-secret",
    ]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            first_line = process.stdout.readline().strip()
            url = first_line.rsplit(" ", 1)[-1]
            response = requests.get(url + "/system/v1/signing-keys", auth=("cli-id", "cli-secret"), timeout=5)
        finally:
            process.terminate()
            process.wait(timeout=10)

    assert first_line.startswith("System API simulator listening on http://127.0.0.1:")
    assert response.status_code == 200
    assert response.json() == {"data": []}
