"""Start-up through `playback-gateway serve`: bad settings stop it, the dev key warns."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.support.gateway_process import PROJECT_ROOT, GatewayProcess

pytestmark = pytest.mark.e2e

API_SECRET = "xT9c2Lq0ZpRk8dYw3VbN7mHs1GfJeUaQoIiPlKjMnBvCxZsDfGhJkLqWeRtYuIoP+/aaaa"


def run_serve(env: dict[str, str], workdir: Path) -> subprocess.CompletedProcess[str]:
    process = GatewayProcess(env, workdir)
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--bind", f"127.0.0.1:{process.port}"],
        cwd=workdir, env=process.env, capture_output=True, text=True, timeout=60, check=False,
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MUX_SIGNING_KEY": "k1", "MUX_PRIVATE_KEY": API_SECRET},
         "error: MUX_PRIVATE_KEY is invalid: found 52 bytes of base64 binary that are not a private key (a Mux "
         "API token secret pasted here is a common mistake); expected the signing key's private key"),
        ({"MUX_SIGNING_KEY": "k1"},
         "error: MUX_PRIVATE_KEY is missing: set MUX_SIGNING_KEY and MUX_PRIVATE_KEY together, or neither to use "
         "the embedded dev key"),
        ({"GATEWAY_RATE_LIMITS": "ip=5"},
         "error: GATEWAY_RATE_LIMITS entry 'ip=5' is invalid: use KIND=COUNT/UNIT, for example viewer=120/minute"),
        ({"GATEWAY_KEYRING_KEY": base64.b64encode(b"x" * 16).decode()},
         "error: GATEWAY_KEYRING_KEY must decode to 32 bytes for AES-256-GCM, got 16 bytes"),
    ],
)
def test_bad_setting_stops_start_up(tmp_path: Path, env: dict[str, str], message: str) -> None:
    result = run_serve(env, tmp_path)

    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert API_SECRET not in result.stderr + result.stdout


def test_invalid_policy_stops_start_up(tmp_path: Path) -> None:
    policy = tmp_path / "broken.yaml"
    policy.write_text("version: 1\nrules:\n  - name: a\n    effect: maybe\n")
    result = run_serve({"GATEWAY_POLICY_PATH": str(policy)}, tmp_path)

    assert result.returncode == 2
    assert "GATEWAY_POLICY_PATH: the policy is invalid" in result.stderr
    assert str(policy) in result.stderr
    assert "Traceback" not in result.stderr


def test_dev_key_serves_and_warns(tmp_path: Path) -> None:
    gateway = GatewayProcess({}, tmp_path)
    gateway.start()
    try:
        ready = requests.get(f"{gateway.url}/readyz", timeout=10).json()
        minted = requests.post(f"{gateway.url}/v1/tokens",
                               json={"playback_id": "KRlqd83vjZzJDcWN85w32YRaDLwlHoGd6e7D5IsT8swO"}, timeout=10)
    finally:
        gateway.stop()

    assert ready["status"] == "ok"
    assert ready["signing_key"].startswith("dev")
    assert ready["warnings"] == [
        "signing with the embedded dev key: Mux rejects its tokens. Set MUX_SIGNING_KEY and MUX_PRIVATE_KEY to a "
        "signing key from your Mux environment"
    ]
    assert minted.status_code == 200
    assert (tmp_path / "data" / "dev-signing-key.pem").stat().st_mode & 0o777 == 0o600


def test_project_root_has_example_policy() -> None:
    assert (PROJECT_ROOT / "policies" / "example.yaml").is_file()
