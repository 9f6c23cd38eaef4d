"""Key providers: the source of the one active signing key and of older keys still valid at Mux.

`StaticKeyProvider` serves the key from MUX_SIGNING_KEY/MUX_PRIVATE_KEY or the embedded dev
key. The keyring-backed provider in `gateway.keys.keyring` implements the same interface.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from cryptography.hazmat.primitives import serialization

from gateway.keys.material import SigningKey, generate_rsa_key, parse_private_key

KeyState = Literal["active", "retiring", "revoked"]

DEV_KEY_FILE = "dev-signing-key.pem"
DEV_KEY_WARNING = (
    "signing with the embedded dev key: Mux rejects its tokens. Set MUX_SIGNING_KEY and "
    "MUX_PRIVATE_KEY to a signing key from your Mux environment"
)


class NoSigningKeyError(RuntimeError):
    """No usable signing key is held, so no token can be minted (HTTP 503)."""


@dataclass(frozen=True)
class KeyInfo:
    """The public facts of a held key, never key material."""

    kid: str
    state: KeyState
    source: str
    created_at: int | None = None
    retire_after: int | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.kid,
            "state": self.state,
            "source": self.source,
            "created_at": self.created_at,
            "retire_after": self.retire_after,
        }


class KeyProvider(Protocol):
    """The signing keys a gateway process may use right now."""

    def active(self) -> SigningKey:
        """Return the key that signs new tokens. Raises NoSigningKeyError."""
        ...

    def get(self, kid: str) -> SigningKey | None:
        """Return a held, unrevoked key by id (for verification), or None."""
        ...

    def infos(self) -> list[KeyInfo]:
        """Return every held key's public facts."""
        ...

    def warnings(self) -> list[str]:
        """Return operator warnings, such as signing with the dev key."""
        ...


class StaticKeyProvider:
    """One fixed key, from the environment or the embedded dev key."""

    def __init__(self, key: SigningKey, created_at: int | None = None) -> None:
        self._key = key
        self._created_at = created_at

    def active(self) -> SigningKey:
        return self._key

    def get(self, kid: str) -> SigningKey | None:
        return self._key if kid == self._key.kid else None

    def infos(self) -> list[KeyInfo]:
        return [KeyInfo(self._key.kid, "active", self._key.source, self._created_at)]

    def warnings(self) -> list[str]:
        return [DEV_KEY_WARNING] if self._key.source == "dev" else []


def key_from_environment(kid: str, private_key_text: str) -> SigningKey:
    """Parse the MUX_SIGNING_KEY / MUX_PRIVATE_KEY pair. Raises KeyMaterialError."""
    return SigningKey(kid=kid, private_key=parse_private_key(private_key_text), source="env")


def load_or_create_dev_key(data_dir: Path) -> SigningKey:
    """Return the dev key under `data_dir`, generating it once.

    Several gunicorn workers may start at once, so the file is written to a temporary name and
    linked into place: exactly one writer wins and the others read its key.
    """
    path = data_dir / DEV_KEY_FILE
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        pem = generate_rsa_key().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        fd, temporary = tempfile.mkstemp(dir=data_dir, prefix=".dev-key-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(pem)
            Path(temporary).chmod(0o600)
            with contextlib.suppress(FileExistsError):
                os.link(temporary, path)
        finally:
            Path(temporary).unlink()

    private_key = parse_private_key(path.read_bytes())
    public_der = private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    kid = "dev" + hashlib.sha256(public_der).hexdigest()[:21]
    return SigningKey(kid=kid, private_key=private_key, source="dev")
