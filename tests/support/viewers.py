"""Viewer session JWTs signed by a test identity provider."""

from __future__ import annotations

import time
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

ISSUER = "https://idp.test.example"
AUDIENCE = "playback-gateway"


class ViewerIssuer:
    """Signs viewer JWTs with its own RSA key; `public_pem` configures the gateway."""

    def __init__(self, key: rsa.RSAPrivateKey, kid: str = "idp-key-1") -> None:
        self.key = key
        self.kid = kid

    @property
    def public_pem(self) -> str:
        return self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()

    def token(self, sub: str = "viewer-1", entitlements: list[str] | None = None, **overrides: Any) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": ISSUER, "aud": AUDIENCE, "sub": sub, "iat": now, "exp": now + 600,
            "entitlements": entitlements if entitlements is not None else [],
        }
        claims.update(overrides)
        claims = {name: value for name, value in claims.items() if value is not None}
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": self.kid})

    def settings_env(self) -> dict[str, str]:
        return {
            "GATEWAY_VIEWER_PUBLIC_KEY": self.public_pem,
            "GATEWAY_VIEWER_ISSUER": ISSUER,
            "GATEWAY_VIEWER_AUDIENCE": AUDIENCE,
        }
