"""Sealing, keyring stores, the rotation lock, the keyring provider and build_key_provider."""

from __future__ import annotations

import base64
import dataclasses
import os
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.config import ConfigError, Settings
from gateway.keys.errors import (
    KeyringConfigError,
    KeyringDecryptError,
    KeyringUnavailableError,
    RotationInProgressError,
)
from gateway.keys.keyring import (
    CreateIntent,
    FileKeyringStore,
    KeyRecord,
    KeyringState,
    KeyringStore,
    RedisKeyringStore,
    RotationLock,
)
from gateway.keys.keyring_provider import KeyringProvider
from gateway.keys.manager import KeyManager
from gateway.keys.material import SigningKey
from gateway.keys.provider import DEV_KEY_WARNING, NoSigningKeyError, StaticKeyProvider
from gateway.keys.sealing import KeyringCipher
from gateway.keys.setup import build_key_provider
from gateway.keys.simulator import Simulator
from tests.keys.conftest import settings_for
from tests.support.redis_server import RedisServer


def sealed_record(cipher: KeyringCipher, key: SigningKey, state: str = "active") -> KeyRecord:
    return KeyRecord(
        kid=key.kid, state=state, source="mux", ours=True, created_at=1_700_000_000,  # type: ignore[arg-type]
        sealed_key=cipher.seal(key.kid, key.private_pem()),
    )


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll `condition` until it holds; False if it never did within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


@pytest.fixture
def other_signing_key(other_rsa_key: object) -> SigningKey:
    return SigningKey("OtherKey01aBcDeFgHiJkLmNoPqRsTuVwXy", other_rsa_key, "mux")  # type: ignore[arg-type]


def add_intent(state: KeyringState, number: int) -> KeyringState:
    intent = CreateIntent(id=f"intent-{number}", actor="test", started_at=number, deadline=number)
    return dataclasses.replace(state, intents=(*state.intents, intent))


# Sealing


def test_seal_round_trip(cipher: KeyringCipher) -> None:
    sealed = cipher.seal("kid1", b"secret bytes")

    assert sealed.startswith("v1:")
    assert b"secret bytes" not in base64.b64decode(sealed[3:])
    assert cipher.open("kid1", sealed) == b"secret bytes"


def test_sealed_value_bound_to_kid(cipher: KeyringCipher) -> None:
    sealed = cipher.seal("kid1", b"secret bytes")

    with pytest.raises(KeyringDecryptError) as raised:
        cipher.open("kid2", sealed)

    assert str(raised.value) == (
        "keyring record kid2 cannot be decrypted with GATEWAY_KEYRING_KEY: the keyring was written "
        "with another key, or the record was altered"
    )


def test_other_keyring_key_cannot_open(cipher: KeyringCipher) -> None:
    sealed = cipher.seal("kid1", b"secret bytes")

    with pytest.raises(KeyringDecryptError):
        KeyringCipher(os.urandom(32)).open("kid1", sealed)


def test_nonce_differs_per_seal(cipher: KeyringCipher) -> None:
    assert cipher.seal("kid1", b"same") != cipher.seal("kid1", b"same")


def test_cipher_repr_hides_key(keyring_key: bytes) -> None:
    cipher = KeyringCipher(keyring_key)

    assert repr(cipher) == "KeyringCipher(AES-256-GCM)"
    assert base64.b64encode(keyring_key).decode() not in repr(cipher)


def test_check_value_detects_other_key(cipher: KeyringCipher) -> None:
    with pytest.raises(KeyringDecryptError) as raised:
        KeyringCipher(os.urandom(32)).verify_check_value(cipher.check_value(), "the test keyring")

    assert str(raised.value) == (
        "GATEWAY_KEYRING_KEY does not decrypt the keyring in the test keyring: it was written with "
        "another key. Set GATEWAY_KEYRING_KEY to the key that wrote it; the keyring is left untouched"
    )


# Stores


def test_update_increments_version(store: KeyringStore, cipher: KeyringCipher, signing_key: SigningKey) -> None:
    first = store.update(lambda state: state.with_key(sealed_record(cipher, signing_key)))
    unchanged = store.update(lambda state: None)

    assert first.version == 1
    assert unchanged.version == 1
    assert store.current_version() == 1
    assert store.read().keys == first.keys
    assert first.keys[0].kid == signing_key.kid


def test_concurrent_updates_all_apply(store: KeyringStore) -> None:
    def writer(offset: int) -> None:
        for number in range(10):
            store.update(lambda state, n=offset + number: add_intent(state, n))

    threads = [threading.Thread(target=writer, args=(offset * 100,)) for offset in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    state = store.read()
    assert state.version == 40
    assert len(state.intents) == 40


def test_writes_record_retired_keys(
    store: KeyringStore, cipher: KeyringCipher, signing_key: SigningKey, other_signing_key: SigningKey
) -> None:
    store.update(lambda state: state.with_key(sealed_record(cipher, signing_key)))
    store.update(lambda state: state.with_key(sealed_record(cipher, other_signing_key)))
    assert store.retired_kids() == set()

    revoked = KeyRecord(kid=signing_key.kid, state="revoked", source="mux", ours=True, revoked_at=1)
    store.update(lambda state: state.with_key(revoked))
    assert store.retired_kids() == {signing_key.kid}

    store.update(lambda state: state.without_key(other_signing_key.kid))
    assert store.retired_kids() == {signing_key.kid, other_signing_key.kid}

    store.record_retired({"RecordedByHand01aBcDeFgHiJkLmNoPqRs"})
    assert store.retired_kids() == {signing_key.kid, other_signing_key.kid, "RecordedByHand01aBcDeFgHiJkLmNoPqRs"}


def test_damaged_retired_file_is_reported(data_dir: Path) -> None:
    (data_dir / "keyring-retired.json").write_text('{"retired": "not a list"}')

    with pytest.raises(KeyringConfigError) as raised:
        FileKeyringStore(data_dir).retired_kids()

    assert str(raised.value) == (
        f"the retired key file {data_dir / 'keyring-retired.json'} must hold {{\"retired\": [key ids]}}"
    )


def test_lost_version_key_keeps_writes_working(
    redis_url: str, cipher: KeyringCipher, signing_key: SigningKey, other_signing_key: SigningKey
) -> None:
    store = RedisKeyringStore(redis_url)
    store.update(lambda state: state.with_key(sealed_record(cipher, signing_key)))
    store.update(lambda state: add_intent(state, 1))
    store._redis.delete("pgw:{keyring}:version")

    assert store.read().version == 2
    assert store.current_version() == 2

    written = store.update(lambda state: state.with_key(sealed_record(cipher, other_signing_key)))

    assert written.version == 3
    assert store._redis.get("pgw:{keyring}:version") == b"3"
    assert store.read().held_ids() == {signing_key.kid, other_signing_key.kid}
    store.close()


def test_file_keyring_is_private(data_dir: Path, cipher: KeyringCipher, signing_key: SigningKey) -> None:
    store = FileKeyringStore(data_dir)

    store.update(lambda state: state.with_key(sealed_record(cipher, signing_key)))

    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" not in store.path.read_bytes()
    assert [path.name for path in data_dir.iterdir() if path.name.startswith(".keyring.json")] == []


def test_redis_keyring_has_no_plaintext(redis_url: str, cipher: KeyringCipher, signing_key: SigningKey) -> None:
    store = RedisKeyringStore(redis_url)
    store.update(lambda state: state.with_key(sealed_record(cipher, signing_key)))

    raw = store._redis.get("pgw:{keyring}:state")

    assert b"PRIVATE KEY" not in raw
    assert b"LS0tLS1CRUdJTi" not in raw
    store.close()


def test_lock_excludes_second_owner(store: KeyringStore) -> None:
    store.acquire_lock("owner-a", 60)

    with pytest.raises(RotationInProgressError) as raised:
        store.acquire_lock("owner-b", 60)

    assert raised.value.http_status == 409
    assert raised.value.retry_after == 5
    assert store.extend_lock("owner-b", 60) is False
    assert store.extend_lock("owner-a", 60) is True


def test_lock_release_only_by_owner(store: KeyringStore) -> None:
    store.acquire_lock("owner-a", 60)
    store.release_lock("owner-b")

    with pytest.raises(RotationInProgressError):
        store.acquire_lock("owner-b", 60)

    store.release_lock("owner-a")
    store.acquire_lock("owner-b", 60)
    assert store.extend_lock("owner-b", 60) is True


def test_expired_file_lock_is_taken_over(data_dir: Path) -> None:
    store = FileKeyringStore(data_dir)
    store.acquire_lock("crashed-owner", 0)

    store.acquire_lock("new-owner", 60)

    assert store.extend_lock("crashed-owner", 60) is False
    assert store.extend_lock("new-owner", 60) is True


def test_expired_redis_lock_is_taken_over(redis_url: str) -> None:
    store = RedisKeyringStore(redis_url)
    store._redis.set("pgw:{keyring}:lock", "crashed-owner", px=1)
    threading.Event().wait(0.05)

    with RotationLock(store, 60) as lock:
        lock.ensure_held()
        assert store._redis.get("pgw:{keyring}:lock").decode() == lock.owner
    assert store._redis.get("pgw:{keyring}:lock") is None
    store.close()


def test_redis_down_is_unavailable(redis_server: RedisServer, redis_url: str) -> None:
    store = RedisKeyringStore(redis_url)
    redis_server.stop()

    with pytest.raises(KeyringUnavailableError) as raised:
        store.read()
    with pytest.raises(KeyringUnavailableError):
        store.acquire_lock("owner", 60)

    assert raised.value.http_status == 503
    assert raised.value.retry_after == 5
    assert str(raised.value) == (
        "the keyring in Redis is unavailable (ConnectionError during read); retry when Redis is reachable"
    )
    store.close()


def test_damaged_file_keyring_is_reported(data_dir: Path) -> None:
    (data_dir / "keyring.json").write_text("{not json")

    with pytest.raises(Exception, match=r"keyring\.json is not valid JSON$"):
        FileKeyringStore(data_dir).read()


# Provider


def test_provider_falls_back_while_empty(store: KeyringStore, cipher: KeyringCipher, signing_key: SigningKey) -> None:
    provider = KeyringProvider(store, cipher, signing_key, refresh_interval=0.1)

    assert provider.active() is signing_key
    assert provider.get(signing_key.kid) is signing_key
    assert [info.as_dict() for info in provider.infos()] == [{
        "id": signing_key.kid, "state": "active", "source": "env", "created_at": None, "retire_after": None,
    }]
    assert provider.warnings() == []
    provider.close()


def test_provider_serves_keyring_keys(
    store: KeyringStore, cipher: KeyringCipher, signing_key: SigningKey, rsa_key: object, other_rsa_key: object
) -> None:
    active = SigningKey("ActiveKey", other_rsa_key, "mux")  # type: ignore[arg-type]
    retiring = SigningKey("RetiringKey", rsa_key, "mux")  # type: ignore[arg-type]
    store.update(lambda state: state.with_key(sealed_record(cipher, retiring, "retiring")))
    store.update(lambda state: state.with_key(sealed_record(cipher, active)))

    provider = KeyringProvider(store, cipher, signing_key, refresh_interval=0.1)

    assert provider.active().kid == "ActiveKey"
    assert provider.active().public_pem() == active.public_pem()
    retired = provider.get("RetiringKey")
    assert retired is not None
    assert retired.public_pem() == retiring.public_pem()
    assert provider.get(signing_key.kid) is None
    assert [info.state for info in provider.infos()] == ["active", "retiring"]
    assert provider.warnings() == [
        f"MUX_SIGNING_KEY {signing_key.kid} is not in the keyring and is ignored; the keyring's active key signs"
    ]
    provider.close()


def test_provider_parses_each_key_once(store: KeyringStore, cipher: KeyringCipher, signing_key: SigningKey) -> None:
    store.update(lambda state: state.with_key(sealed_record(cipher, signing_key)))
    provider = KeyringProvider(store, cipher, None, refresh_interval=0.1)
    first = provider.active()

    store.update(lambda state: add_intent(state, 1))
    provider.refresh()  # the watcher thread may have applied version 2 already

    assert provider.version == 2
    assert provider.active() is first
    provider.close()


def test_provider_notices_removed_key(store: KeyringStore, cipher: KeyringCipher, signing_key: SigningKey) -> None:
    store.update(lambda state: state.with_key(sealed_record(cipher, signing_key, "retiring")))
    provider = KeyringProvider(store, cipher, None, refresh_interval=0.1)
    removed: list[str] = []
    provider.add_removal_listener(removed.append)

    store.update(lambda state: state.without_key(signing_key.kid))
    provider.refresh()

    assert removed == [signing_key.kid]
    assert provider.get(signing_key.kid) is None
    with pytest.raises(NoSigningKeyError, match=r"^the keyring is empty and no MUX_SIGNING_KEY is set$"):
        provider.active()
    provider.close()


def test_watcher_picks_up_changes(store: KeyringStore, cipher: KeyringCipher, signing_key: SigningKey) -> None:
    provider = KeyringProvider(store, cipher, None, refresh_interval=0.05)
    provider.infos()  # starts the watcher
    changed = threading.Event()
    provider.add_removal_listener(lambda kid: changed.set())

    store.update(lambda state: state.with_key(sealed_record(cipher, signing_key)))
    assert wait_until(lambda: provider.version == 1)
    store.update(lambda state: state.without_key(signing_key.kid))

    assert changed.wait(10)
    assert provider.version == 2
    provider.close()


def test_provider_without_redis_at_start(
    redis_server: RedisServer, redis_url: str, cipher: KeyringCipher, signing_key: SigningKey
) -> None:
    store = RedisKeyringStore(redis_url)
    redis_server.stop()

    provider = KeyringProvider(store, cipher, signing_key, refresh_interval=0.1)

    with pytest.raises(NoSigningKeyError, match=r"has not been loaded yet because it is unreachable$"):
        provider.active()
    redis_server.start()
    provider.refresh()
    assert provider.active() is signing_key
    provider.close()
    store.close()


# build_key_provider


def test_build_without_credentials_is_static(data_dir: Path) -> None:
    provider, manager = build_key_provider(Settings(data_dir=data_dir), lambda: 3600)

    assert isinstance(provider, StaticKeyProvider)
    assert manager is None
    assert provider.active().source == "dev"
    assert provider.warnings() == [DEV_KEY_WARNING]
    assert not (data_dir / "keyring.key").exists()


def test_build_with_credentials_in_dev_mode(simulator: Simulator, data_dir: Path) -> None:
    provider, manager = build_key_provider(settings_for(simulator, data_dir), lambda: 3600)

    assert isinstance(provider, KeyringProvider)
    assert isinstance(manager, KeyManager)
    assert provider.active().source == "dev"
    key_file = data_dir / "keyring.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(base64.b64decode(key_file.read_text())) == 32
    provider.close()


def test_build_needs_keyring_key_outside_dev_mode(
    simulator: Simulator, data_dir: Path, mux_env_key: tuple[SigningKey, str]
) -> None:
    env_key, private_key_b64 = mux_env_key
    settings = settings_for(simulator, data_dir, mux_signing_key=env_key.kid, mux_private_key=private_key_b64)

    with pytest.raises(ConfigError, match=r"^GATEWAY_KEYRING_KEY is missing: a managed keyring encrypts"):
        build_key_provider(settings, lambda: 3600)


def test_build_rejects_keyring_of_other_key(
    simulator: Simulator, data_dir: Path, keyring_key: bytes, cipher: KeyringCipher, signing_key: SigningKey
) -> None:
    record = sealed_record(cipher, signing_key)
    FileKeyringStore(data_dir).update(
        lambda state: dataclasses.replace(state.with_key(record), check=cipher.check_value())
    )
    settings = settings_for(simulator, data_dir, keyring_key=os.urandom(32))

    with pytest.raises(ConfigError) as raised:
        build_key_provider(settings, lambda: 3600)

    assert str(raised.value) == (
        f"GATEWAY_KEYRING_KEY does not decrypt the keyring in {data_dir / 'keyring.json'}: it was "
        "written with another key. Set GATEWAY_KEYRING_KEY to the key that wrote it; the keyring is "
        "left untouched"
    )


def test_build_serves_keyring_without_credentials(
    data_dir: Path, keyring_key: bytes, cipher: KeyringCipher, signing_key: SigningKey
) -> None:
    FileKeyringStore(data_dir).update(lambda state: state.with_key(sealed_record(cipher, signing_key)))

    provider, manager = build_key_provider(Settings(data_dir=data_dir, keyring_key=keyring_key), lambda: 3600)

    assert isinstance(provider, KeyringProvider)
    assert manager is None
    assert provider.active().kid == signing_key.kid
    provider.close()


def test_build_rejects_invalid_env_key(data_dir: Path) -> None:
    settings = Settings(data_dir=data_dir, mux_signing_key="kid", mux_private_key="not a key!")

    with pytest.raises(ConfigError, match=r"^MUX_PRIVATE_KEY is invalid: found 10 characters"):
        build_key_provider(settings, lambda: 3600)


def test_build_with_redis_needs_keyring_key(simulator: Simulator, data_dir: Path, redis_url: str) -> None:
    settings = settings_for(simulator, data_dir, redis_url=redis_url)

    with pytest.raises(ConfigError, match=r"^GATEWAY_KEYRING_KEY is missing: a managed keyring encrypts"):
        build_key_provider(settings, lambda: 3600)
    assert not (data_dir / "keyring.key").exists()
