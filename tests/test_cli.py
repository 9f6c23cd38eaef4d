"""The command line: mint, verify and clients new-key, run as a user would run them."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jwt
import pytest

from gateway.keys.material import SigningKey, pkcs1_pem
from tests.support.gateway_process import PROJECT_ROOT

FREE_ID = "KRlqd83vjZzJDcWN85w32YRaDLwlHoGd6e7D5IsT8swO"
PREMIUM_ID = "bClFOym71oXJa3YGFaVtjjzwUghtlWJEiTUvaRRWFHeC"


def run_cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    clean = {key: value for key, value in os.environ.items() if not key.startswith(("GATEWAY_", "MUX_"))}
    clean["GATEWAY_POLICY_PATH"] = str(PROJECT_ROOT / "policies")
    clean["GATEWAY_DATA_DIR"] = str(cwd / "data")
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], env={**clean, **env}, cwd=cwd,
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def key_env(signing_key: SigningKey) -> dict[str, str]:
    return {
        "MUX_SIGNING_KEY": signing_key.kid,
        "MUX_PRIVATE_KEY": base64.b64encode(pkcs1_pem(signing_key.private_key)).decode(),
    }


def test_mint_prints_tokens(tmp_path: Path, key_env: dict[str, str], signing_key: SigningKey) -> None:
    result = run_cli(["mint", PREMIUM_ID, "--audience", "video", "--viewer-id", "v1", "--entitlement", "premium"],
                     key_env, tmp_path)

    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)
    assert output["rule"] == "premium-subscribers"
    claims = jwt.decode(output["tokens"]["video"], signing_key.private_key.public_key(), algorithms=["RS256"],
                        options={"verify_aud": False})
    assert claims["sub"] == PREMIUM_ID
    assert claims["aud"] == "v"
    assert claims["kid"] == signing_key.kid
    assert claims["max_resolution"] == "1080p"


def test_mint_denied_exits_1(tmp_path: Path, key_env: dict[str, str]) -> None:
    result = run_cli(["mint", PREMIUM_ID, "--audience", "gif"], key_env, tmp_path)

    assert result.returncode == 1
    assert result.stderr.strip().endswith(
        "denied: Rule 'premium-preview' does not grant gif: request only the audiences it grants, or ask the "
        "policy owner for a rule that grants these.")


def test_mint_invalid_playback_id_exits_1(tmp_path: Path, key_env: dict[str, str]) -> None:
    result = run_cli(["mint", "not valid!"], key_env, tmp_path)

    assert result.returncode == 1
    assert "error: playback_id must be a Mux playback ID: letters and digits only" in result.stderr


def _token(key: SigningKey, claims: dict[str, Any], kid: str | None = None) -> str:
    return jwt.encode(claims, key.private_key, algorithm="RS256", headers={"kid": kid or key.kid})


def test_verify_accepts_minted_token(tmp_path: Path, key_env: dict[str, str], signing_key: SigningKey) -> None:
    token = _token(signing_key, {"sub": FREE_ID, "aud": "t", "exp": int(time.time()) + 600, "kid": signing_key.kid,
                                 "time": 5})
    result = run_cli(["verify", token], key_env, tmp_path)

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["accepted"] is True
    assert report["problems"] == []
    assert report["claims"]["time"] == 5


@pytest.mark.parametrize(
    ("claims", "problems"),
    [
        ({"sub": FREE_ID, "aud": "v", "exp": 1000, "kid": None}, ["expired"]),
        ({"sub": FREE_ID, "aud": "video", "exp": None, "kid": None},
         ["aud is 'video'; Mux expects one of v, t, s, g, d"]),
        ({"sub": FREE_ID, "aud": "v", "exp": None, "kid": None, "time": 3},
         ["claim time is not a Mux claim for video tokens"]),
        ({"sub": FREE_ID, "aud": "v", "exp": None, "kid": None, "iat": 1},
         ["iat is present; Mux's SDKs never send it, remove it"]),
        ({"sub": FREE_ID, "aud": "v", "exp": None, "kid": None, "params": {"max_resolution": "720p"}},
         ["modifiers are nested under 'params'; Mux reads them only at the top level"]),
        ({"sub": FREE_ID, "aud": "v", "exp": 99999999999999, "kid": None},
         ["exp is more than ten years away; it looks like milliseconds, not seconds"]),
    ],
)
def test_verify_reports_what_mux_rejects(
    tmp_path: Path, key_env: dict[str, str], signing_key: SigningKey, claims: dict[str, Any], problems: list[str]
) -> None:
    if claims["exp"] is None:
        claims["exp"] = int(time.time()) + 600
    claims["kid"] = signing_key.kid
    result = run_cli(["verify", _token(signing_key, claims)], key_env, tmp_path)

    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["accepted"] is False
    assert len(report["problems"]) == len(problems)
    for found, expected in zip(report["problems"], problems, strict=True):
        assert found.startswith(expected)


def test_verify_unknown_kid(tmp_path: Path, key_env: dict[str, str], signing_key: SigningKey) -> None:
    token = _token(signing_key, {"sub": FREE_ID, "aud": "v", "exp": int(time.time()) + 60, "kid": "otherKey"},
                   kid="otherKey")
    result = run_cli(["verify", token], key_env, tmp_path)

    assert result.returncode == 1
    assert json.loads(result.stdout)["problems"] == [
        "signing key 'otherKey' is not held by this gateway (unknown, revoked or retired)"]


def test_verify_not_a_jwt(tmp_path: Path, key_env: dict[str, str]) -> None:
    result = run_cli(["verify", "hello"], key_env, tmp_path)

    assert result.returncode == 1
    assert json.loads(result.stdout)["problems"][0].startswith("not a JWT:")


def test_clients_new_key(tmp_path: Path) -> None:
    result = run_cli(["clients", "new-key"], {}, tmp_path)

    assert result.returncode == 0
    lines = result.stdout.splitlines()
    key = lines[0].removeprefix("api_key: ")
    digest = lines[1].removeprefix("key_sha256: ")
    assert key.startswith("pgw_")
    assert len(key) > 40
    assert digest == hashlib.sha256(key.encode()).hexdigest()


def test_no_command_prints_help(tmp_path: Path) -> None:
    result = run_cli([], {}, tmp_path)

    assert result.returncode == 1
    assert "usage: playback-gateway" in result.stdout
