"""Admin routes count against the client rate limit."""

from __future__ import annotations

from pathlib import Path

from gateway.app import create_app
from gateway.config import Settings
from tests.support.gateway_process import PROJECT_ROOT
from tests.support.service_clients import new_client, write_clients_file


def test_key_routes_are_rate_limited(tmp_path: Path) -> None:
    security = new_client("security-team", "keys:read")
    clients_file = tmp_path / "clients.yaml"
    write_clients_file(clients_file, [security])
    settings = Settings.from_env({
        "GATEWAY_POLICY_PATH": str(PROJECT_ROOT / "policies"),
        "GATEWAY_DATA_DIR": str(tmp_path / "data"),
        "GATEWAY_CLIENTS_FILE": str(clients_file),
        "GATEWAY_RATE_LIMITS": "client=2/minute",
    })
    client = create_app(settings).test_client()

    statuses = [client.get("/v1/keys", headers=security.headers).status_code for _ in range(3)]
    limited = client.get("/v1/keys", headers=security.headers)

    assert statuses == [200, 200, 429]
    assert limited.status_code == 429
    assert limited.get_json()["type"] == "https://playback-gateway.dev/problems/rate-limited"
    assert int(limited.headers["Retry-After"]) >= 1
