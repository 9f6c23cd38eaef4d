"""Fixtures for key management: the System API simulator, keyring stores and a wired manager."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.config import Settings
from gateway.keys.keyring import FileKeyringStore, KeyringStore, RedisKeyringStore
from gateway.keys.keyring_provider import KeyringProvider
from gateway.keys.manager import KeyManager
from gateway.keys.material import SigningKey, parse_private_key
from gateway.keys.sealing import KeyringCipher
from gateway.keys.simulator import Simulator
from gateway.keys.system_api import SystemApiClient
from tests.keys.support import ApiKeys, write_clients_file

MAX_TOKEN_TTL = 3600


class FakeClock:
    """A clock shared by the simulator and the manager, so tests can move past deadlines."""

    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def simulator(clock: FakeClock) -> Iterator[Simulator]:
    """A simulator with generous rate limits; rate limiting has its own tests."""
    with Simulator(post_rate=200, post_burst=200, other_rate=200, other_burst=200, clock=clock) as sim:
        yield sim


@pytest.fixture
def keyring_key() -> bytes:
    return os.urandom(32)


@pytest.fixture
def cipher(keyring_key: bytes) -> KeyringCipher:
    return KeyringCipher(keyring_key)


def fast_client(simulator: Simulator, *, read_timeout: float = 1.0, max_attempts: int = 3) -> SystemApiClient:
    """A client with short timeouts and backoff, so fault tests run quickly."""
    return SystemApiClient(
        simulator.url, simulator.token_id, simulator.token_secret,
        connect_timeout=1.0, read_timeout=read_timeout, max_attempts=max_attempts,
        backoff_base=0.01, backoff_max=0.02,
    )


@pytest.fixture(params=["redis", "file"])
def store(request: pytest.FixtureRequest, data_dir: Path) -> Iterator[KeyringStore]:
    """Each keyring store in turn: Redis (the private test server) and the file keyring."""
    if request.param == "redis":
        keyring: KeyringStore = RedisKeyringStore(request.getfixturevalue("redis_url"))
    else:
        keyring = FileKeyringStore(data_dir)
    yield keyring
    keyring.close()


@dataclass
class Rig:
    """A manager wired to a simulator, a store and a provider, as one gateway process has it."""

    simulator: Simulator
    store: KeyringStore
    cipher: KeyringCipher
    provider: KeyringProvider
    manager: KeyManager
    clock: FakeClock
    revoked: list[str]

    def keyring(self) -> dict[str, str]:
        """Return kid -> state of every record in the keyring."""
        return {record.kid: record.state for record in self.store.read().keys}


@pytest.fixture
def make_rig(
    simulator: Simulator, store: KeyringStore, cipher: KeyringCipher, clock: FakeClock, data_dir: Path
) -> Iterator[Callable[..., Rig]]:
    rigs: list[Rig] = []

    def build(
        env_key: SigningKey | None = None,
        fallback: SigningKey | None = None,
        lock_ttl: int | None = None,
        **client_options: float,
    ) -> Rig:
        provider = KeyringProvider(store, cipher, env_key or fallback, refresh_interval=0.1)
        revoked: list[str] = []
        client = fast_client(simulator, **client_options)  # type: ignore[arg-type]
        manager = KeyManager(
            store, cipher, client, provider, lambda: MAX_TOKEN_TTL,
            env_key=env_key, on_revoked=revoked.append, clock=clock, lock_ttl=lock_ttl,
        )
        rig = Rig(simulator, store, cipher, provider, manager, clock, revoked)
        rigs.append(rig)
        return rig

    yield build
    for rig in rigs:
        rig.provider.close()
        rig.manager.client.close()


@pytest.fixture
def mux_env_key(simulator: Simulator) -> tuple[SigningKey, str]:
    """A key that exists at the simulator, as MUX_SIGNING_KEY/MUX_PRIVATE_KEY would name it."""
    key, private_key_b64 = simulator.add_key()
    return SigningKey(kid=key.kid, private_key=parse_private_key(private_key_b64), source="env"), private_key_b64


def settings_for(simulator: Simulator, data_dir: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "mux_token_id": simulator.token_id,
        "mux_token_secret": simulator.token_secret,
        "mux_api_url": simulator.url,
        "data_dir": data_dir,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def api_keys(tmp_path: Path) -> tuple[ApiKeys, Path]:
    """Three service clients: security-team (all key scopes), dashboard (read), cron (rotate)."""
    return write_clients_file(tmp_path)
