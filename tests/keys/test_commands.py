"""`playback-gateway keys ...` and `clients new-key` as functions, on the file keyring."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import pytest

from gateway.config import Settings
from gateway.keys.commands import EXIT_BUSY, EXIT_FAILED, EXIT_OK, EXIT_USAGE, clients_command, keys_command
from gateway.keys.keyring import FileKeyringStore
from gateway.keys.simulator import Simulator
from tests.keys.conftest import settings_for


@pytest.fixture
def settings(simulator: Simulator, data_dir: Path) -> Settings:
    return settings_for(simulator, data_dir, keyring_key=os.urandom(32), policy_path=data_dir / "missing")


def run(args: list[str], settings: Settings) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = keys_command(args, settings, out, max_token_ttl=lambda: 600, actor="cli:test", err=err)
    return code, out.getvalue(), err.getvalue()


def test_rotate_list_retire_reconcile(settings: Settings, simulator: Simulator) -> None:
    code, out, err = run(["rotate"], settings)
    assert (code, err) == (EXIT_OK, "")
    new = json.loads(out)["active"]
    assert simulator.key_ids() == [new]

    code, out, _ = run(["list"], settings)
    assert code == EXIT_OK
    assert json.loads(out)["keys"][0]["id"] == new
    assert json.loads(out)["warnings"] == []

    code, out, _ = run(["retire"], settings)
    assert (code, json.loads(out)["retired"]) == (EXIT_OK, [])

    code, out, _ = run(["reconcile", "--fix"], settings)
    assert (code, json.loads(out)["deleted"]) == (EXIT_OK, [])


def test_revoke_command(settings: Settings, simulator: Simulator) -> None:
    first = json.loads(run(["rotate"], settings)[1])["active"]
    second = json.loads(run(["rotate"], settings)[1])["active"]

    code, out, _ = run(["revoke", first], settings)

    assert code == EXIT_OK
    assert json.loads(out) == {"revoked": first, "active": second, "deleted_at_mux": True}
    assert simulator.key_ids() == [second]


def test_revoke_unknown_key_fails(settings: Settings) -> None:
    code, out, err = run(["revoke", "NoSuchKey"], settings)

    assert (code, out) == (EXIT_FAILED, "")
    assert err == "error: no held signing key has id NoSuchKey\n"


def test_busy_exit_code(settings: Settings) -> None:
    FileKeyringStore(settings.data_dir).acquire_lock("other", 60)

    code, _, err = run(["rotate"], settings)

    assert code == EXIT_BUSY
    assert err.startswith("error: another gateway process is changing keys right now; retry when it has finished")


def test_disabled_without_credentials(data_dir: Path) -> None:
    code, out, err = run(["rotate"], Settings(data_dir=data_dir))

    assert (code, out) == (EXIT_USAGE, "")
    assert err == "error: key management is disabled: set MUX_TOKEN_ID and MUX_TOKEN_SECRET\n"


def test_list_without_credentials(data_dir: Path) -> None:
    code, out, _ = run(["list"], Settings(data_dir=data_dir))

    listing = json.loads(out)
    assert code == EXIT_OK
    assert [key["source"] for key in listing["keys"]] == ["dev"]
    assert listing["warnings"][0].startswith("signing with the embedded dev key")


def test_usage_error(settings: Settings) -> None:
    assert run(["spin"], settings)[0] == EXIT_USAGE


def test_missing_policy_uses_default_grace(settings: Settings) -> None:
    out, err = io.StringIO(), io.StringIO()

    code = keys_command(["rotate"], settings, out, actor="cli:test", err=err)

    assert code == EXIT_OK
    assert err.getvalue() == (
        f"warning: the policy in {settings.policy_path} did not load (PolicyLoadError); replaced keys "
        "stay valid for the default 604800 s\n"
    )


def test_clients_new_key() -> None:
    out = io.StringIO()

    code = clients_command(["new-key"], out)

    lines = out.getvalue().splitlines()
    api_key = lines[0].removeprefix("api_key: ")
    assert code == EXIT_OK
    assert api_key.startswith("pgw_")
    assert lines[1] == "key_sha256: " + hashlib.sha256(api_key.encode()).hexdigest()
    assert lines[2] == "Give api_key to the client once; put only key_sha256 in GATEWAY_CLIENTS_FILE."
