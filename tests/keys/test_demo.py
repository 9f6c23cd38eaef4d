"""`make demo`: the simulator's --demo mode, run as the real command line."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from tests.support.redis_server import free_port

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEMO_SECRET = "demo-secret-from-environment"


def demo_environment(tmp_path: Path) -> dict[str, str]:
    env = {
        name: value for name, value in os.environ.items()
        if not name.startswith(("GATEWAY_", "MUX_", "PROMETHEUS_"))
    }
    env.update({
        "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
        "GATEWAY_DATA_DIR": str(tmp_path / "data"),
        "GATEWAY_POLICY_PATH": str(PROJECT_ROOT / "policies"),
        "MUX_SIM_TOKEN_SECRET": DEMO_SECRET,
    })
    return env


def demo_command(port: int) -> list[str]:
    return [sys.executable, "-m", "gateway.keys.simulator", "--demo", "--gateway-port", str(port)]


def read_until_started(process: subprocess.Popen[str]) -> list[str]:
    """Return the demo's stdout lines up to the one announcing the gateway."""
    assert process.stdout is not None
    lines: list[str] = []
    for line in process.stdout:
        lines.append(line.rstrip("\n"))
        if line.startswith("Starting the gateway"):
            return lines
    return lines


def wait_until_ready(base_url: str, timeout: float = 60.0) -> int:
    """Poll /readyz until it returns 200. Returns the last status, 0 while nothing listens."""
    deadline = time.monotonic() + timeout
    status = 0
    while time.monotonic() < deadline:
        try:
            status = requests.get(base_url + "/readyz", timeout=2).status_code
        except requests.ConnectionError:
            status = 0
        if status == 200:
            return status
        time.sleep(0.2)
    return status


def port_accepts(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_demo_rejects_taken_port(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        result = subprocess.run(
            demo_command(port), env=demo_environment(tmp_path), cwd=PROJECT_ROOT,
            capture_output=True, text=True, timeout=60, check=False,
        )

    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: port {port} on 127.0.0.1 is already in use (is `make run` running?): stop that "
        "process or pass --gateway-port with a free port"
    )
    assert "Starting the gateway" not in result.stdout


def test_demo_serves_rotates_and_stops(tmp_path: Path) -> None:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = demo_environment(tmp_path)
    stderr_path = tmp_path / "demo.stderr"

    with stderr_path.open("w") as stderr, subprocess.Popen(
        demo_command(port), env=env, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True,
    ) as process:
        try:
            lines = read_until_started(process)
            ready = wait_until_ready(base_url)
            client_line = next(line for line in lines if line.startswith("Demo client security-team"))
            api_key = client_line.rsplit(" ", 1)[-1]
            headers = {"X-Api-Key": api_key}
            listed = requests.get(base_url + "/v1/keys", headers=headers, timeout=10)
            rotated = requests.post(base_url + "/v1/keys/rotate", headers=headers, timeout=30)
            cli_line = next(line.strip() for line in lines if line.strip().endswith("playback-gateway keys rotate"))
            cli = subprocess.run(
                ["bash", "-c", cli_line], env=env, cwd=PROJECT_ROOT,
                capture_output=True, text=True, timeout=60, check=False,
            )
        finally:
            process.send_signal(signal.SIGTERM)
            exit_code = process.wait(timeout=60)

    assert ready == 200
    assert client_line == (
        f"Demo client security-team (scopes keys:read, keys:rotate, keys:revoke), API key: {api_key}"
    )
    assert re.fullmatch(r"pgw_[A-Za-z0-9_-]{43}", api_key) is not None
    assert f"  list:    curl -sS -H 'X-Api-Key: {api_key}' {base_url}/v1/keys" in lines
    assert f"  rotate:  curl -sS -H 'X-Api-Key: {api_key}' -X POST {base_url}/v1/keys/rotate" in lines
    assert f"  revoke:  curl -sS -H 'X-Api-Key: {api_key}' -X POST {base_url}/v1/keys/KEY_ID/revoke" in lines
    assert f"  retire:  curl -sS -H 'X-Api-Key: {api_key}' -X POST {base_url}/v1/keys/retire" in lines
    assert 'MUX_TOKEN_SECRET="$MUX_SIM_TOKEN_SECRET"' in cli_line
    assert DEMO_SECRET not in "\n".join(lines)
    assert "keyring.dev_key_generated" not in lines

    assert listed.status_code == 200
    assert [key["state"] for key in listed.json()["keys"]] == ["active"]
    assert rotated.status_code == 200
    assert rotated.json()["active"] != listed.json()["keys"][0]["id"]
    assert cli.returncode == 0, cli.stderr

    assert exit_code == 0
    assert port_accepts(port) is False
