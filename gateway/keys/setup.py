"""Build the key provider and, when System API credentials are set, the key manager.

| settings                                           | provider            | manager    |
| -------------------------------------------------- | ------------------- | ---------- |
| no MUX_TOKEN_ID/SECRET, keyring empty or absent    | StaticKeyProvider   | None       |
| no MUX_TOKEN_ID/SECRET, keyring contains keys      | KeyringProvider     | None       |
| MUX_TOKEN_ID and MUX_TOKEN_SECRET                  | KeyringProvider     | KeyManager |

The keyring lives in Redis when GATEWAY_REDIS_URL is set, else in GATEWAY_DATA_DIR/keyring.json.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from gateway.config import ConfigError, Settings
from gateway.keys.errors import KeyringConfigError, KeyringDecryptError, KeyringUnavailableError
from gateway.keys.keyring import FileKeyringStore, KeyringStore, RedisKeyringStore
from gateway.keys.keyring_provider import REFRESH_INTERVAL_SECONDS, KeyringProvider
from gateway.keys.manager import KeyManager
from gateway.keys.material import KeyMaterialError, SigningKey
from gateway.keys.provider import KeyProvider, StaticKeyProvider, key_from_environment, load_or_create_dev_key
from gateway.keys.sealing import KeyringCipher
from gateway.keys.system_api import SystemApiClient
from gateway.observability.logging import log_event

DEV_KEYRING_KEY_FILE = "keyring.key"

logger = logging.getLogger(__name__)


def build_key_provider(
    settings: Settings,
    max_token_ttl: Callable[[], int],
    *,
    on_revoked: Callable[[str], None] | None = None,
    refresh_interval: float = REFRESH_INTERVAL_SECONDS,
) -> tuple[KeyProvider, KeyManager | None]:
    """Return the provider the signer uses and the manager the admin routes use (or None).

    `max_token_ttl` returns the longest token lifetime, in seconds, the policy can grant; it
    sets how long a replaced key stays valid at Mux. Raises ConfigError for an invalid
    MUX_PRIVATE_KEY, a missing GATEWAY_KEYRING_KEY, or a keyring it cannot decrypt.
    """
    fallback = fallback_key(settings)
    store = open_keyring_store(settings)

    if not settings.rotation_enabled and not _keyring_in_use(store, settings):
        store.close()
        return StaticKeyProvider(fallback), None

    try:
        cipher = KeyringCipher(resolve_keyring_key(settings))
        provider = KeyringProvider(store, cipher, fallback, refresh_interval=refresh_interval)
    except (KeyringDecryptError, KeyringConfigError) as error:
        store.close()
        raise ConfigError(error.message) from None
    except ConfigError:
        store.close()
        raise

    if not (settings.mux_token_id and settings.mux_token_secret):
        return provider, None

    client = SystemApiClient(settings.mux_api_url, settings.mux_token_id, settings.mux_token_secret)
    manager = KeyManager(
        store, cipher, client, provider, max_token_ttl,
        env_key=fallback if fallback.source == "env" else None,
        on_revoked=on_revoked,
    )
    return provider, manager


def fallback_key(settings: Settings) -> SigningKey:
    """Return the MUX_SIGNING_KEY/MUX_PRIVATE_KEY key, or the embedded dev key when unset."""
    if settings.mux_signing_key and settings.mux_private_key:
        try:
            return key_from_environment(settings.mux_signing_key, settings.mux_private_key)
        except KeyMaterialError as error:
            raise ConfigError(f"MUX_PRIVATE_KEY is invalid: {error}") from None
    return load_or_create_dev_key(settings.data_dir)


def open_keyring_store(settings: Settings) -> KeyringStore:
    """Return the Redis keyring when GATEWAY_REDIS_URL is set, else the file keyring."""
    if settings.redis_url:
        return RedisKeyringStore(settings.redis_url)
    return FileKeyringStore(settings.data_dir)


def resolve_keyring_key(settings: Settings) -> bytes:
    """Return GATEWAY_KEYRING_KEY; in dev mode, a key generated once under GATEWAY_DATA_DIR.

    Dev mode means no MUX_SIGNING_KEY is set. Outside it, and with a Redis keyring, a missing key
    is a ConfigError, because a key generated on one replica's disk could not decrypt what
    another replica wrote.
    """
    if settings.keyring_key is not None:
        return settings.keyring_key
    if settings.mux_signing_key or settings.redis_url:
        raise ConfigError(
            "GATEWAY_KEYRING_KEY is missing: a managed keyring encrypts private keys with it. "
            "Generate one with `python -c 'import os,base64;print(base64.b64encode(os.urandom(32)).decode())'` "
            "and give every replica the same value"
        )
    return _load_or_create_dev_keyring_key(settings.data_dir)


def _load_or_create_dev_keyring_key(data_dir: Path) -> bytes:
    path = data_dir / DEV_KEYRING_KEY_FILE
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=data_dir, prefix=".keyring-key-")
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(base64.b64encode(os.urandom(32)).decode() + "\n")
            Path(temporary).chmod(0o600)
            # Several workers may start at once: linking lets exactly one writer win.
            with contextlib.suppress(FileExistsError):
                os.link(temporary, path)
        finally:
            Path(temporary).unlink()
        log_event(
            logger, "keyring.dev_key_generated", logging.WARNING, path=str(path),
            hint="set GATEWAY_KEYRING_KEY for any shared or production keyring",
        )

    try:
        key = base64.b64decode(path.read_text(encoding="ascii").strip(), validate=True)
    except (OSError, UnicodeDecodeError, binascii.Error, ValueError):
        raise ConfigError(f"the dev keyring key {path} is unreadable: delete it together with keyring.json") from None
    if len(key) != 32:
        raise ConfigError(f"the dev keyring key {path} is not 32 bytes: delete it together with keyring.json")
    return key


def _keyring_in_use(store: KeyringStore, settings: Settings) -> bool:
    """Return True when the keyring contains keys, so it must be served even without credentials."""
    try:
        return bool(store.read().keys)
    except KeyringUnavailableError:
        # The contents are unknown, but a configured keyring key shows that a managed keyring is intended.
        return settings.keyring_key is not None
    except KeyringConfigError as error:
        raise ConfigError(error.message) from None
