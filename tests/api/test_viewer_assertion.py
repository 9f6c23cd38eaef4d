"""A viewer object and a viewer JWT in one request, through the app in-process."""

from __future__ import annotations

from pathlib import Path

import pytest
from flask.testing import FlaskClient

from gateway.app import create_app
from gateway.config import Settings
from gateway.keys.material import generate_rsa_key
from tests.support.gateway_process import PROJECT_ROOT
from tests.support.service_clients import new_client, write_clients_file
from tests.support.viewers import ViewerIssuer

PREMIUM_ID = "bClFOym71oXJa3YGFaVtjjzwUghtlWJEiTUvaRRWFHeC"
BFF = new_client("mobile-bff", "tokens:mint", "viewer:assert")


@pytest.fixture(scope="module")
def issuer() -> ViewerIssuer:
    return ViewerIssuer(generate_rsa_key())


@pytest.fixture
def client(tmp_path: Path, issuer: ViewerIssuer) -> FlaskClient:
    clients_file = tmp_path / "clients.yaml"
    write_clients_file(clients_file, [BFF])
    settings = Settings.from_env({
        "GATEWAY_POLICY_PATH": str(PROJECT_ROOT / "policies"),
        "GATEWAY_DATA_DIR": str(tmp_path / "data"),
        "GATEWAY_CLIENTS_FILE": str(clients_file),
        **issuer.settings_env(),
    })
    return create_app(settings).test_client()


def test_viewer_object_with_jwt_is_400(client: FlaskClient, issuer: ViewerIssuer) -> None:
    headers = {**BFF.headers, "Authorization": f"Bearer {issuer.token('viewer-1', ['premium'])}"}
    body = {"playback_id": PREMIUM_ID, "viewer": {"id": "someone-else", "entitlements": []}}
    response = client.post("/v1/tokens", json=body, headers=headers)

    assert response.status_code == 400
    assert response.get_json()["errors"] == [
        {"field": "viewer", "message": "cannot be combined with a viewer JWT in the Authorization header: send one "
         "of them"},
    ]


def test_viewer_object_alone_is_the_viewer(client: FlaskClient) -> None:
    body = {"playback_id": PREMIUM_ID, "viewer": {"id": "viewer-7", "entitlements": ["premium"]}}
    response = client.post("/v1/tokens", json=body, headers=BFF.headers)

    assert response.status_code == 200
    assert response.get_json()["rule"] == "premium-subscribers"


def test_forwarded_jwt_alone_is_the_viewer(client: FlaskClient, issuer: ViewerIssuer) -> None:
    headers = {**BFF.headers, "Authorization": f"Bearer {issuer.token('viewer-1', ['premium'])}"}
    response = client.post("/v1/tokens", json={"playback_id": PREMIUM_ID}, headers=headers)

    assert response.status_code == 200
    assert response.get_json()["rule"] == "premium-subscribers"


def test_batch_item_with_both_is_item_error(client: FlaskClient, issuer: ViewerIssuer) -> None:
    headers = {**BFF.headers, "Authorization": f"Bearer {issuer.token('viewer-1', ['premium'])}"}
    body = {"items": [{"playback_id": PREMIUM_ID}, {"playback_id": PREMIUM_ID, "viewer": {"id": "x"}}]}
    response = client.post("/v1/tokens/batch", json=body, headers=headers)

    assert response.status_code == 200
    items = response.get_json()["items"]
    assert items[0]["rule"] == "premium-subscribers"
    assert items[1]["error"]["errors"] == [
        {"field": "items[1].viewer", "message": "cannot be combined with a viewer JWT in the Authorization header: "
         "send one of them"},
    ]
