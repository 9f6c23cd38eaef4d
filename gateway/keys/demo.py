"""`make demo`: run the gateway against the local System API simulator, ready for key rotation.

The demo rotates once, so the gateway signs with a simulator key, and writes a clients file with
a `security-team` client. It prints that client's API key, the curl commands for the key routes
and the environment for `playback-gateway keys ...`. Then it runs `playback-gateway serve` until
it receives SIGINT or SIGTERM, which it forwards to the gateway.
"""

from __future__ import annotations

import errno
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from types import FrameType
from typing import TextIO

from gateway.auth.clients import new_api_key
from gateway.keys.simulator import HOST, Simulator

DEFAULT_GATEWAY_PORT = 8080
DEMO_CLIENT_ID = "security-team"
DEMO_CLIENT_SCOPES = ("keys:read", "keys:rotate", "keys:revoke")
SHUTDOWN_TIMEOUT_SECONDS = 30.0
TOKEN_SECRET_VARIABLE = "MUX_SIM_TOKEN_SECRET"  # noqa: S105 - the name of a variable, not a secret

# Variables of the caller's shell that would point the demo gateway at another key or keyring.
_CLEARED_VARIABLES = ("MUX_SIGNING_KEY", "MUX_PRIVATE_KEY", "GATEWAY_REDIS_URL", "GATEWAY_KEYRING_KEY")


class PortInUseError(Exception):
    """The gateway's port is taken, so `serve` would fail after gunicorn's bind retries."""


def run_demo(simulator: Simulator, gateway_port: int, out: TextIO, *, secret_from_environment: bool) -> int:
    """Prepare a data dir, rotate once, print how to use the demo, and serve until stopped.

    Returns the gateway's exit status, 1 when the first rotation failed, or 2 when the port is
    taken. `secret_from_environment` hides the simulator's token secret from the printed commands
    because the caller already has it in MUX_SIM_TOKEN_SECRET.
    """
    from gateway.config import Settings
    from gateway.keys.commands import keys_command
    from gateway.observability.logging import configure_logging

    try:
        ensure_port_free(gateway_port)
    except PortInUseError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 2

    data_dir = Path(os.environ.get("GATEWAY_DATA_DIR") or ".gateway") / "demo"
    # The simulator keeps keys in memory only, so a keyring from an earlier demo would be stale.
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True, mode=0o700)
    api_key, clients_file = write_demo_clients_file(data_dir)
    env = demo_environment(simulator, data_dir, clients_file)

    # Log lines (for example the generated dev keyring key) go to stderr as JSON, as the gateway's do.
    configure_logging(env.get("GATEWAY_LOG_LEVEL") or "INFO")
    settings = Settings.from_env(env)
    if keys_command(["rotate"], settings, out, actor="demo") != 0:
        return 1

    base_url = f"http://{HOST}:{gateway_port}"
    print_instructions(out, simulator, base_url, data_dir, api_key, secret_from_environment=secret_from_environment)
    return serve_gateway(env, gateway_port, out)


def ensure_port_free(port: int) -> None:
    """Raise PortInUseError when 127.0.0.1:`port` cannot be bound, the way gunicorn binds it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # gunicorn sets SO_REUSEADDR too, so a port in TIME_WAIT is not reported as taken.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise PortInUseError(
                    f"port {port} on {HOST} is already in use (is `make run` running?): stop that "
                    "process or pass --gateway-port with a free port"
                ) from None
            raise PortInUseError(f"port {port} on {HOST} cannot be bound: {error.strerror}") from None


def write_demo_clients_file(data_dir: Path) -> tuple[str, Path]:
    """Write a clients file with one client holding every key scope. Returns its API key and path."""
    api_key, key_sha256 = new_api_key()
    path = data_dir / "clients.yaml"
    scopes = ", ".join(DEMO_CLIENT_SCOPES)
    path.write_text(f"clients:\n  - {{id: {DEMO_CLIENT_ID}, key_sha256: {key_sha256}, scopes: [{scopes}]}}\n")
    path.chmod(0o600)
    return api_key, path


def demo_environment(simulator: Simulator, data_dir: Path, clients_file: Path) -> dict[str, str]:
    """Return the gateway's environment: this shell's, pointed at the simulator and the demo data dir."""
    env = dict(os.environ)
    env.update({
        "MUX_TOKEN_ID": simulator.token_id,
        "MUX_TOKEN_SECRET": simulator.token_secret,
        "GATEWAY_MUX_API_URL": simulator.url,
        "GATEWAY_DATA_DIR": str(data_dir),
        "GATEWAY_CLIENTS_FILE": str(clients_file),
    })
    for name in _CLEARED_VARIABLES:
        env.pop(name, None)
    env.pop(TOKEN_SECRET_VARIABLE, None)
    return env


def print_instructions(
    out: TextIO, simulator: Simulator, base_url: str, data_dir: Path, api_key: str,
    *, secret_from_environment: bool,
) -> None:
    """Print the demo client's API key, curl commands for the key routes, and the CLI environment."""
    header = f"X-Api-Key: {api_key}"
    curl = f"curl -sS -H {shlex.quote(header)}"
    # A throwaway credential of this local simulator, printed so the CLI can be pointed at it,
    # unless the caller supplied it through the environment and so already has it.
    secret = f'"${TOKEN_SECRET_VARIABLE}"' if secret_from_environment else shlex.quote(simulator.token_secret)
    cli_env = (
        f"MUX_TOKEN_ID={shlex.quote(simulator.token_id)} MUX_TOKEN_SECRET={secret} "
        f"GATEWAY_MUX_API_URL={simulator.url} GATEWAY_DATA_DIR={shlex.quote(str(data_dir))}"
    )
    lines = [
        "",
        f"Demo client {DEMO_CLIENT_ID} (scopes {', '.join(DEMO_CLIENT_SCOPES)}), API key: {api_key}",
        "",
        "Key routes:",
        f"  list:    {curl} {base_url}/v1/keys",
        f"  rotate:  {curl} -X POST {base_url}/v1/keys/rotate",
        f"  revoke:  {curl} -X POST {base_url}/v1/keys/KEY_ID/revoke",
        f"  retire:  {curl} -X POST {base_url}/v1/keys/retire",
        "",
        "The CLI against the same simulator and keyring (run from this directory):",
        f"  {cli_env} playback-gateway keys rotate",
        "",
        f"Starting the gateway on {base_url} (Ctrl-C or SIGTERM stops both)",
    ]
    print("\n".join(lines), file=out, flush=True)


def serve_gateway(env: dict[str, str], port: int, out: TextIO) -> int:
    """Run `playback-gateway serve` and forward SIGINT and SIGTERM to it. Returns its exit status."""
    executable = shutil.which("playback-gateway") or str(Path(sys.executable).with_name("playback-gateway"))
    process = subprocess.Popen([executable, "serve", "--bind", f"{HOST}:{port}"], env=env)  # noqa: S603

    def forward(signum: int, frame: FrameType | None) -> None:
        if process.poll() is None:
            process.send_signal(signum)

    previous = {number: signal.signal(number, forward) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        # The handler forwards the signal and returns, and wait() resumes (PEP 475), so the demo
        # ends only once the gateway has shut down.
        return process.wait()
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        _stop_child(process, out)


def _stop_child(process: subprocess.Popen[bytes], out: TextIO) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=SHUTDOWN_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        print(f"The gateway did not stop within {SHUTDOWN_TIMEOUT_SECONDS:.0f} s; killing it", file=out, flush=True)
        process.kill()
        process.wait()
