"""Several gateway processes and replicas sharing one Redis keyring and one System API."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import jwt
import requests

from gateway.keys.keyring import RedisKeyringStore
from gateway.keys.keyring_provider import KeyringProvider
from gateway.keys.manager import KeyManager
from gateway.keys.material import SigningKey
from gateway.keys.sealing import KeyringCipher
from gateway.keys.simulator import Simulator
from gateway.tokens.signer import sign
from tests.keys.conftest import MAX_TOKEN_TTL, fast_client

ROTATE_SCRIPT = """
import sys, time
from pathlib import Path
from gateway.config import Settings
from gateway.keys.commands import keys_command

go = Path(sys.argv[1])
while not go.exists():
    time.sleep(0.01)
sys.exit(keys_command(["rotate"], Settings.from_env(), actor="replica"))
"""


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def test_two_processes_rotating_create_one_key(
    simulator: Simulator, redis_url: str, data_dir: Path, tmp_path: Path
) -> None:
    requests.post(
        simulator.url + "/_sim/faults",
        json={"kind": "latency", "operation": "create", "seconds": 1.5}, timeout=5,
    )
    keyring_key = os.urandom(32)
    env = {
        **os.environ,
        "MUX_TOKEN_ID": simulator.token_id,
        "MUX_TOKEN_SECRET": simulator.token_secret,
        "GATEWAY_MUX_API_URL": simulator.url,
        "GATEWAY_REDIS_URL": redis_url,
        "GATEWAY_DATA_DIR": str(data_dir),
        "GATEWAY_KEYRING_KEY": base64.b64encode(keyring_key).decode(),
    }
    go = tmp_path / "go"
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", ROTATE_SCRIPT, str(go)], env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for _ in range(2)
    ]
    go.touch()
    outputs = [process.communicate(timeout=60) for process in processes]
    codes = sorted(process.returncode for process in processes)

    assert codes == [0, 3], outputs
    assert simulator.count_requests("POST", 201) == 1
    [created] = simulator.key_ids()
    state = RedisKeyringStore(redis_url).read()
    assert [(record.kid, record.state) for record in state.keys] == [(created, "active")]
    busy_errors = [err for _, err in outputs if "another gateway process is changing keys" in err]
    assert len(busy_errors) == 1
    printed = "".join(out + err for out, err in outputs)
    assert "PRIVATE KEY" not in printed
    assert simulator.token_secret not in printed
    assert env["GATEWAY_KEYRING_KEY"] not in printed


def test_tokens_minted_during_rotation_verify(
    simulator: Simulator, redis_url: str, mux_env_key: tuple[SigningKey, str], clock: Callable[[], float]
) -> None:
    env_key = mux_env_key[0]
    cipher = KeyringCipher(os.urandom(32))
    stores = [RedisKeyringStore(redis_url) for _ in range(2)]
    replicas = [KeyringProvider(store, cipher, env_key, refresh_interval=0.2) for store in stores]
    manager = KeyManager(
        stores[0], cipher, fast_client(simulator), replicas[0], lambda: MAX_TOKEN_TTL,
        env_key=env_key, clock=clock,
    )
    tokens: list[str] = []
    stop = threading.Event()

    def mint(provider: KeyringProvider) -> None:
        number = 0
        while not stop.is_set():
            number += 1
            claims = {"sub": f"playback-{number}", "aud": "v", "exp": int(time.time()) + 600}
            key = provider.active()
            tokens.append(sign({**claims, "kid": key.kid}, key))

    minters = [threading.Thread(target=mint, args=(replicas[i % 2],)) for i in range(4)]
    for thread in minters:
        thread.start()
    try:
        rotations = [manager.rotate("load-test")["active"] for _ in range(3)]
        manager.retire("load-test")
        assert wait_until(lambda: all(replica.active().kid == rotations[-1] for replica in replicas))
    finally:
        stop.set()
        for thread in minters:
            thread.join()

    held_at_mux = set(simulator.key_ids())
    assert held_at_mux == {env_key.kid, *rotations}
    kids_seen: set[str] = set()
    for token in tokens:
        kid = jwt.get_unverified_header(token)["kid"]
        simulated = simulator.get_key(kid)
        assert simulated is not None, f"token signed with {kid}, which Mux does not hold"
        claims = jwt.decode(
            token, simulated.public_pem(), algorithms=["RS256"], audience="v",
            options={"require": ["exp", "sub", "aud", "kid"]},
        )
        assert claims["kid"] == kid
        kids_seen.add(kid)
    assert rotations[-1] in kids_seen
    for replica in replicas:
        replica.close()
    for store in stores:
        store.close()
    manager.client.close()


def test_replica_switches_after_rotation(
    simulator: Simulator, redis_url: str, mux_env_key: tuple[SigningKey, str], clock: Callable[[], float]
) -> None:
    env_key = mux_env_key[0]
    cipher = KeyringCipher(os.urandom(32))
    rotating = KeyringProvider(RedisKeyringStore(redis_url), cipher, env_key, refresh_interval=60)
    # A long periodic interval: only the pub/sub message can make this replica switch quickly.
    replica = KeyringProvider(RedisKeyringStore(redis_url), cipher, env_key, refresh_interval=60)
    # Starts the watcher; a change published before it subscribes is caught up right after.
    replica.active()
    manager = KeyManager(
        rotating.store, cipher, fast_client(simulator), rotating, lambda: MAX_TOKEN_TTL,
        env_key=env_key, clock=clock,
    )

    new = manager.rotate("ops")["active"]

    assert wait_until(lambda: replica.active().kid == new, timeout=5)
    assert replica.get(env_key.kid) is not None
    for provider in (rotating, replica):
        provider.close()
        provider.store.close()
    manager.client.close()
