"""Session-wide fixtures: a private redis-server and generated RSA keys."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.keys.material import SigningKey, generate_rsa_key
from tests.support.redis_server import RedisServer


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server on a free port, never the machine's shared 6379."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """The private Redis, running and empty."""
    redis_server.start()
    redis_server.flush()
    yield redis_server.url
    redis_server.start()


@pytest.fixture(scope="session")
def rsa_key() -> rsa.RSAPrivateKey:
    return generate_rsa_key()


@pytest.fixture(scope="session")
def other_rsa_key() -> rsa.RSAPrivateKey:
    return generate_rsa_key()


@pytest.fixture(scope="session")
def signing_key(rsa_key: rsa.RSAPrivateKey) -> SigningKey:
    return SigningKey(kid="TestKey01aBcDeFgHiJkLmNoPqRsTuVwXyZ", private_key=rsa_key, source="env")


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path
