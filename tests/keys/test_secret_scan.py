"""Every log line, response, output, error message and repr of a key lifecycle run, scanned for secrets."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from gateway.config import Settings
from gateway.keys.commands import keys_command
from gateway.keys.errors import KeyManagementError
from gateway.keys.material import SigningKey
from gateway.keys.setup import build_key_provider
from gateway.keys.simulator import Simulator
from gateway.observability.logging import JsonFormatter
from tests.keys.conftest import settings_for
from tests.keys.support import ApiKeys, build_app

PEM_MARKER = "PRIVATE KEY"
BASE64_PEM_PREFIX = "LS0tLS1CRUdJTi"  # base64 of "-----BEGIN"


def secrets_of(simulator: Simulator, api_keys: ApiKeys, keyring_key: bytes, private_key_b64: str) -> list[str]:
    return [
        PEM_MARKER,
        BASE64_PEM_PREFIX,
        simulator.token_secret,
        api_keys.admin,
        api_keys.reader,
        api_keys.rotator,
        base64.b64encode(keyring_key).decode(),
        private_key_b64[20:80],
    ]


def exercise_routes(client: FlaskClient, simulator: Simulator, keys: ApiKeys, texts: list[str]) -> None:
    def call(method: str, path: str, key: str) -> None:
        response = client.open(path, method=method, headers={"X-Api-Key": key})
        texts.append(response.get_data(as_text=True))
        texts.append(str(dict(response.headers)))

    call("GET", "/v1/keys", keys.reader)
    call("POST", "/v1/keys/rotate", keys.admin)
    simulator.inject("lost_response", "create")
    call("POST", "/v1/keys/rotate", keys.admin)
    simulator.inject("malformed", "create")
    call("POST", "/v1/keys/rotate", keys.admin)
    simulator.inject("error", "create", count=3, status=500)
    call("POST", "/v1/keys/rotate", keys.admin)
    call("GET", "/v1/keys", keys.reader)
    active = json.loads(client.get("/v1/keys", headers={"X-Api-Key": keys.reader}).get_data())["keys"][0]["id"]
    simulator.inject("error", "delete", count=3, status=502)
    call("POST", f"/v1/keys/{active}/revoke", keys.admin)
    call("POST", "/v1/keys/retire", keys.rotator)
    call("GET", "/v1/keys/reconcile?fix=true", keys.admin)
    call("POST", "/v1/keys/NoSuchKey/revoke", keys.admin)
    call("POST", "/v1/keys/rotate", "pgw_not-a-real-key")


def test_no_secret_anywhere(
    simulator: Simulator,
    data_dir: Path,
    api_keys: tuple[ApiKeys, Path],
    mux_env_key: tuple[SigningKey, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    env_key, private_key_b64 = mux_env_key
    keyring_key = os.urandom(32)
    settings = settings_for(
        simulator, data_dir, keyring_key=keyring_key, mux_signing_key=env_key.kid,
        mux_private_key=private_key_b64,
    )
    provider, manager = build_key_provider(settings, lambda: 600)
    assert manager is not None
    texts: list[str] = []

    exercise_routes(build_app(provider, manager, api_keys[1]).test_client(), simulator, api_keys[0], texts)

    for args in (["list"], ["rotate"], ["retire"], ["reconcile"], ["revoke", "NoSuchKey"]):
        out, err = io.StringIO(), io.StringIO()
        keys_command(args, settings, out, max_token_ttl=lambda: 600, actor="cli:scan", err=err)
        texts += [out.getvalue(), err.getvalue()]

    try:
        build_key_provider(Settings(**{**settings.__dict__, "keyring_key": os.urandom(32)}), lambda: 600)
    except Exception as error:  # noqa: BLE001 - the message itself is under test
        texts.append(str(error))
    try:
        manager.revoke("NoSuchKey", "scan")
    except KeyManagementError as error:
        texts += [str(error), repr(error)]

    texts += [repr(provider), repr(manager), repr(manager.client), repr(manager.store), repr(settings),
              repr(env_key), str(env_key), repr(provider.active()), str(provider.infos())]
    formatter = JsonFormatter()
    texts += [formatter.format(record) for record in caplog.records]
    texts.append((data_dir / "keyring.json").read_text())

    everything = "\n".join(texts)
    assert len(caplog.records) > 20
    for secret in secrets_of(simulator, api_keys[0], keyring_key, private_key_b64):
        assert secret not in everything, f"found secret text {secret[:6]}... in output"
    provider.close()  # type: ignore[attr-defined]
