"""Encryption of private keys at rest: AES-256-GCM under GATEWAY_KEYRING_KEY.

Each sealed value is `v1:` + base64(nonce || ciphertext || tag) with a fresh 12-byte random
nonce. The key id is the associated data, so a sealed key copied onto another record fails to
open instead of silently signing under the wrong id. This is the only module that decrypts.
"""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.keys.errors import KeyringDecryptError

_VERSION_PREFIX = "v1:"
_NONCE_BYTES = 12
# Sealed under this pseudo key id so that a wrong GATEWAY_KEYRING_KEY is detected even when the
# keyring contains no keys.
CHECK_KID = "keyring-check"
_CHECK_PLAINTEXT = b"playback-gateway keyring"


class KeyringCipher:
    """Seal and open private keys. Its repr never shows the key."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError(f"the keyring key must be 32 bytes for AES-256-GCM, got {len(key)}")
        self._aead = AESGCM(key)

    def __repr__(self) -> str:
        return "KeyringCipher(AES-256-GCM)"

    def seal(self, kid: str, plaintext: bytes) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        ciphertext = self._aead.encrypt(nonce, plaintext, kid.encode("utf-8"))
        return _VERSION_PREFIX + base64.b64encode(nonce + ciphertext).decode("ascii")

    def open(self, kid: str, sealed: str) -> bytes:
        """Decrypt a sealed value. Raises KeyringDecryptError naming the key id only."""
        if not sealed.startswith(_VERSION_PREFIX):
            raise KeyringDecryptError(f"keyring record {kid} has an unknown encryption format")
        try:
            blob = base64.b64decode(sealed[len(_VERSION_PREFIX) :], validate=True)
        except (binascii.Error, ValueError):
            raise KeyringDecryptError(f"keyring record {kid} is not valid base64") from None
        if len(blob) <= _NONCE_BYTES:
            raise KeyringDecryptError(f"keyring record {kid} is truncated")

        try:
            return self._aead.decrypt(blob[:_NONCE_BYTES], blob[_NONCE_BYTES:], kid.encode("utf-8"))
        except InvalidTag:
            raise KeyringDecryptError(
                f"keyring record {kid} cannot be decrypted with GATEWAY_KEYRING_KEY: the keyring "
                "was written with another key, or the record was altered"
            ) from None

    def check_value(self) -> str:
        """Return a sealed marker that proves which key wrote a keyring."""
        return self.seal(CHECK_KID, _CHECK_PLAINTEXT)

    def verify_check_value(self, sealed: str, where: str) -> None:
        """Raise KeyringDecryptError if `sealed` was not written under this cipher's key."""
        try:
            plaintext = self.open(CHECK_KID, sealed)
        except KeyringDecryptError:
            plaintext = b""
        if plaintext != _CHECK_PLAINTEXT:
            raise KeyringDecryptError(
                f"GATEWAY_KEYRING_KEY does not decrypt the keyring in {where}: it was written with "
                "another key. Set GATEWAY_KEYRING_KEY to the key that wrote it; the keyring is "
                "left untouched"
            )
