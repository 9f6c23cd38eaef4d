"""The admin key routes on a small Flask app with real clients, keyring, manager and simulator."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from gateway.api.problems import PROBLEM_MEDIA_TYPE
from gateway.keys.material import SigningKey
from gateway.keys.provider import StaticKeyProvider
from tests.keys.conftest import Rig
from tests.keys.support import ApiKeys, build_app

RigFactory = Callable[..., Rig]


@pytest.fixture
def managed(
    make_rig: RigFactory, mux_env_key: tuple[SigningKey, str], api_keys: tuple[ApiKeys, Path]
) -> Iterator[tuple[FlaskClient, Rig, ApiKeys]]:
    rig = make_rig(env_key=mux_env_key[0])
    app = build_app(rig.provider, rig.manager, api_keys[1])
    yield app.test_client(), rig, api_keys[0]


def test_list_without_api_key(managed: tuple[FlaskClient, Rig, ApiKeys]) -> None:
    client, _, _ = managed

    response = client.get("/v1/keys")

    assert response.status_code == 401
    assert response.json == {
        "type": "https://playback-gateway.dev/problems/missing-api-key",
        "title": "Unauthorized",
        "status": 401,
        "detail": "This route needs an API key with scope keys:read: send it in the X-Api-Key header.",
    }


def test_rotate_needs_rotate_scope(managed: tuple[FlaskClient, Rig, ApiKeys]) -> None:
    client, rig, keys = managed

    response = client.post("/v1/keys/rotate", headers={"X-Api-Key": keys.reader})

    assert response.status_code == 403
    assert response.json["detail"] == (  # type: ignore[index]
        "Client 'dashboard' lacks scope keys:rotate: add it to the client's scopes in the clients file."
    )
    assert rig.simulator.count_requests("POST") == 0


def test_rotate_then_list(managed: tuple[FlaskClient, Rig, ApiKeys]) -> None:
    client, rig, keys = managed
    old = rig.simulator.key_ids()[0]

    rotated = client.post("/v1/keys/rotate", headers={"X-Api-Key": keys.admin})
    listed = client.get("/v1/keys", headers={"X-Api-Key": keys.reader})

    assert rotated.status_code == 200
    new = rotated.json["active"]  # type: ignore[index]
    assert listed.status_code == 200
    assert listed.json == {
        "keys": [
            {"id": new, "state": "active", "source": "mux", "created_at": int(rig.clock()), "retire_after": None},
            {"id": old, "state": "retiring", "source": "env", "created_at": None,
             "retire_after": int(rig.clock()) + 3600 + 300},
        ],
        "warnings": [],
        "management_enabled": True,
    }


def test_revoke_unknown_key(managed: tuple[FlaskClient, Rig, ApiKeys]) -> None:
    client, _, keys = managed

    response = client.post("/v1/keys/NoSuchKey/revoke", headers={"X-Api-Key": keys.admin})

    assert response.status_code == 404
    assert response.mimetype == PROBLEM_MEDIA_TYPE
    assert response.json == {
        "type": "https://playback-gateway.dev/problems/unknown-key",
        "title": "Not Found",
        "status": 404,
        "detail": "no held signing key has id NoSuchKey",
    }


def test_revoke_needs_revoke_scope(managed: tuple[FlaskClient, Rig, ApiKeys]) -> None:
    client, rig, keys = managed

    response = client.post(f"/v1/keys/{rig.simulator.key_ids()[0]}/revoke", headers={"X-Api-Key": keys.rotator})

    assert response.status_code == 403


def test_revoke_key(managed: tuple[FlaskClient, Rig, ApiKeys]) -> None:
    client, rig, keys = managed
    old = rig.simulator.key_ids()[0]
    new = client.post("/v1/keys/rotate", headers={"X-Api-Key": keys.admin}).json["active"]  # type: ignore[index]

    response = client.post(f"/v1/keys/{old}/revoke", headers={"X-Api-Key": keys.admin})

    assert response.status_code == 200
    assert response.json == {"revoked": old, "active": new, "deleted_at_mux": True}
    assert rig.revoked == [old]


def test_rotation_in_progress_is_409(managed: tuple[FlaskClient, Rig, ApiKeys]) -> None:
    client, rig, keys = managed
    rig.store.acquire_lock("other-replica", 60)

    response = client.post("/v1/keys/rotate", headers={"X-Api-Key": keys.rotator})

    assert response.status_code == 409
    assert response.headers["Retry-After"] == "5"
    assert response.json["type"] == "https://playback-gateway.dev/problems/rotation-in-progress"  # type: ignore[index]


def test_mux_unavailable_is_503(managed: tuple[FlaskClient, Rig, ApiKeys]) -> None:
    client, rig, keys = managed
    rig.simulator.inject("error", "create", count=3, status=503)

    response = client.post("/v1/keys/rotate", headers={"X-Api-Key": keys.rotator})

    assert response.status_code == 503
    assert response.json["type"] == "https://playback-gateway.dev/problems/mux-api-unavailable"  # type: ignore[index]


def test_retire_partial_failure_is_502(managed: tuple[FlaskClient, Rig, ApiKeys]) -> None:
    client, rig, keys = managed
    old = rig.simulator.key_ids()[0]
    client.post("/v1/keys/rotate", headers={"X-Api-Key": keys.rotator})
    rig.clock.advance(3600 + 300)
    rig.simulator.inject("error", "delete", count=3, status=500)

    response = client.post("/v1/keys/retire", headers={"X-Api-Key": keys.rotator})

    assert response.status_code == 502
    body = response.json
    assert body["type"] == "https://playback-gateway.dev/problems/key-operation-incomplete"  # type: ignore[index]
    assert [item["id"] for item in body["result"]["failed"]] == [old]  # type: ignore[index]


def test_reconcile_report(managed: tuple[FlaskClient, Rig, ApiKeys]) -> None:
    client, _, keys = managed

    response = client.get("/v1/keys/reconcile", headers={"X-Api-Key": keys.reader})

    assert response.status_code == 200
    assert response.json == {
        "unknown_at_mux": [], "missing_at_mux": [], "pending_deletion": [], "pending_creates": 0, "deleted": [],
    }


def test_reconcile_fix_needs_rotate_scope(managed: tuple[FlaskClient, Rig, ApiKeys]) -> None:
    client, _, keys = managed

    denied = client.get("/v1/keys/reconcile?fix=true", headers={"X-Api-Key": keys.reader})
    allowed = client.get("/v1/keys/reconcile?fix=true", headers={"X-Api-Key": keys.admin})

    assert denied.status_code == 403
    assert denied.json["detail"] == (  # type: ignore[index]
        "Client 'dashboard' lacks scope keys:rotate: add it to the client's scopes in the clients file."
    )
    assert allowed.status_code == 200


def test_reconcile_invalid_fix(managed: tuple[FlaskClient, Rig, ApiKeys]) -> None:
    client, _, keys = managed

    response = client.get("/v1/keys/reconcile?fix=maybe", headers={"X-Api-Key": keys.admin})

    assert response.status_code == 400
    assert response.json["detail"] == "fix must be true or false, got 'maybe'."  # type: ignore[index]


def test_disabled_management(signing_key: SigningKey, api_keys: tuple[ApiKeys, Path]) -> None:
    client = build_app(StaticKeyProvider(signing_key), None, api_keys[1]).test_client()
    keys = api_keys[0]

    listed = client.get("/v1/keys", headers={"X-Api-Key": keys.reader})
    rotated = client.post("/v1/keys/rotate", headers={"X-Api-Key": keys.admin})

    assert listed.status_code == 200
    assert listed.json == {
        "keys": [{"id": signing_key.kid, "state": "active", "source": "env", "created_at": None,
                  "retire_after": None}],
        "warnings": [],
        "management_enabled": False,
    }
    assert rotated.status_code == 503
    assert rotated.json["detail"] == (  # type: ignore[index]
        "key management is disabled: set MUX_TOKEN_ID and MUX_TOKEN_SECRET."
    )
