"""A real gunicorn gateway with real Redis, the example policy and a test identity provider."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.keys.material import SigningKey, generate_rsa_key, pkcs1_pem
from tests.support.gateway_process import GatewayProcess
from tests.support.redis_server import RedisServer
from tests.support.viewers import ViewerIssuer

MUX_KID = "E2eSigningKeyId0123456789abcdef"
COUNTRY_HEADER = "X-Viewer-Country"

FREE_ID = "KRlqd83vjZzJDcWN85w32YRaDLwlHoGd6e7D5IsT8swO"
FREE_ID_2 = "PeZe3NPNCUfBimkHaInvSehMDuGtMGGzAtBgx2qv26l2"
PREMIUM_ID = "bClFOym71oXJa3YGFaVtjjzwUghtlWJEiTUvaRRWFHeC"
REGIONAL_ID = "hSFWPIBl2xaCuNyMzAalGUWWHCErbyWI2z2bE8WFHaFJ"
DRM_ID = "TylPcoF2TbbAqUPh1p0OzkYlSTYmNcXugwMgdi7SmQvL"
UNKNOWN_ID = "zzzzUnknownPlaybackId000000000000000000000000"


@pytest.fixture(scope="session")
def mux_key() -> SigningKey:
    return SigningKey(kid=MUX_KID, private_key=generate_rsa_key(), source="env")


@pytest.fixture(scope="session")
def issuer() -> ViewerIssuer:
    return ViewerIssuer(generate_rsa_key())


@pytest.fixture(scope="session")
def forger() -> ViewerIssuer:
    """Signs viewer JWTs with a key the gateway does not trust, under the same kid."""
    return ViewerIssuer(generate_rsa_key())


def gateway_env(mux_key: SigningKey, issuer: ViewerIssuer, redis_url: str) -> dict[str, str]:
    # The private key is passed exactly as the System API returns it: base64 of a PKCS#1 PEM.
    assert isinstance(mux_key.private_key, rsa.RSAPrivateKey)
    return {
        "MUX_SIGNING_KEY": mux_key.kid,
        "MUX_PRIVATE_KEY": base64.b64encode(pkcs1_pem(mux_key.private_key)).decode(),
        "GATEWAY_REDIS_URL": redis_url,
        "GATEWAY_COUNTRY_HEADER": COUNTRY_HEADER,
        **issuer.settings_env(),
    }


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer, mux_key: SigningKey, issuer: ViewerIssuer
) -> Iterator[GatewayProcess]:
    """One gateway for a test module: 2 workers x 4 threads, as in production."""
    redis_server.start()
    workdir: Path = tmp_path_factory.mktemp("gateway")
    process = GatewayProcess(gateway_env(mux_key, issuer, redis_server.url), workdir)
    process.start()
    yield process
    process.stop()
