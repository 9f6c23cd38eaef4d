"""A keyring lost in storage: Redis restarted empty, FLUSHALL, an evicted document, a deleted file."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from prometheus_client import REGISTRY

from gateway.app import create_app
from gateway.keys.errors import KeyringUnavailableError
from gateway.keys.keyring import REDIS_PREFIX, FileKeyringStore, KeyRecord, KeyringStore, RedisKeyringStore
from gateway.keys.keyring_provider import KeyringProvider
from gateway.keys.manager import KeyManager
from gateway.keys.material import SigningKey
from gateway.keys.provider import NoSigningKeyError
from gateway.keys.sealing import KeyringCipher
from gateway.keys.simulator import Simulator
from tests.keys.conftest import FakeClock, fast_client, settings_for
from tests.support.redis_server import RedisServer

PROJECT_ROOT = Path(__file__).resolve().parents[2]
REGRESSION_METRIC = "playback_gateway_keyring_regressions_total"


def sealed_record(cipher: KeyringCipher, key: SigningKey, state: str = "active") -> KeyRecord:
    return KeyRecord(
        kid=key.kid, state=state, source=key.source, ours=key.source == "mux",  # type: ignore[arg-type]
        created_at=1_700_000_000, sealed_key=cipher.seal(key.kid, key.private_pem()),
    )


def regressions(outcome: str) -> float:
    return REGISTRY.get_sample_value(REGRESSION_METRIC, {"outcome": outcome}) or 0.0


def seed_two_versions(store: KeyringStore, cipher: KeyringCipher, key: SigningKey) -> None:
    """Store `key` as active at version 1, then a check value at version 2."""
    store.update(lambda state: state.with_key(sealed_record(cipher, key)))
    store.update(lambda state: state.__class__(state.version, state.keys, state.intents, cipher.check_value()))


def env_ignored(key: SigningKey) -> str:
    return f"MUX_SIGNING_KEY {key.kid} is not in the keyring and is ignored; the keyring's active key signs"


def lost_message(where: str, detail: str) -> str:
    return (
        f"the keyring in {where} {detail}, so it was lost in storage (Redis restarted without "
        "persistence, an eviction or FLUSHALL); this process signs with the keys it loaded before "
        "and writes them back. Give Redis persistence (AOF or RDB) and maxmemory-policy noeviction"
    )


@pytest.fixture
def cleanup() -> Iterator[list[Callable[[], None]]]:
    """Close calls run at teardown even when the test fails. A provider left running would see the
    next test's flushed Redis as a lost keyring and write its own keyring back into it."""
    calls: list[Callable[[], None]] = []
    yield calls
    for call in reversed(calls):
        call()


@pytest.fixture
def mux_key(other_rsa_key: object) -> SigningKey:
    return SigningKey("MuxKey01aBcDeFgHiJkLmNoPqRsTuVwXyZ", other_rsa_key, "mux")  # type: ignore[arg-type]


def test_redis_restart_restores_keyring(
    cleanup: list[Callable[[], None]],
    redis_server: RedisServer, redis_url: str, cipher: KeyringCipher, signing_key: SigningKey,
    mux_key: SigningKey, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    store = RedisKeyringStore(redis_url)
    cleanup.append(store.close)
    seed_two_versions(store, cipher, mux_key)
    provider = KeyringProvider(store, cipher, signing_key, refresh_interval=0.1)
    cleanup.append(provider.close)
    restored_before = regressions("restored")

    redis_server.stop()
    redis_server.start()  # no persistence: Redis comes back empty
    assert provider.refresh() is True

    stored = store.read()
    assert stored.version == 3
    assert stored.held_ids() == {mux_key.kid}
    assert stored.check is not None
    assert provider.version == 3
    assert provider.active().kid == mux_key.kid
    assert provider.warnings() == [env_ignored(signing_key)]
    assert regressions("restored") == restored_before + 1
    errors = [r for r in caplog.records if getattr(r, "event", None) == "keyring.regressed"]
    assert [(e.levelno, e.loaded_version, e.stored_version) for e in errors] == [(logging.ERROR, 2, 0)]  # type: ignore[attr-defined]
    audits = [r for r in caplog.records if getattr(r, "event", None) == "audit.keys.restore"]
    assert [(a.result, a.version, a.key_ids) for a in audits] == [("ok", 3, [mux_key.kid])]  # type: ignore[attr-defined]


def test_evicted_document_is_noticed_and_restored(
    cleanup: list[Callable[[], None]],
    redis_url: str, cipher: KeyringCipher, signing_key: SigningKey, mux_key: SigningKey
) -> None:
    store = RedisKeyringStore(redis_url)
    cleanup.append(store.close)
    seed_two_versions(store, cipher, mux_key)
    provider = KeyringProvider(store, cipher, signing_key, refresh_interval=0.1)
    cleanup.append(provider.close)
    client = redis.Redis.from_url(redis_url)
    cleanup.append(client.close)

    client.delete(REDIS_PREFIX + "state")  # the version key stays, as after an LRU eviction
    assert provider.refresh() is True

    assert store.read().version == 3
    assert store.read().held_ids() == {mux_key.kid}
    assert provider.active().kid == mux_key.kid


def test_deleted_file_keyring_is_restored(
    cleanup: list[Callable[[], None]],
    data_dir: Path, cipher: KeyringCipher, signing_key: SigningKey, mux_key: SigningKey
) -> None:
    store = FileKeyringStore(data_dir)
    seed_two_versions(store, cipher, mux_key)
    provider = KeyringProvider(store, cipher, signing_key, refresh_interval=0.1)
    cleanup.append(provider.close)

    store.path.unlink()
    assert provider.refresh() is True

    assert store.read().version == 3
    assert provider.active().kid == mux_key.kid


def test_conflicting_keyring_is_not_overwritten(
    cleanup: list[Callable[[], None]],
    redis_url: str, cipher: KeyringCipher, signing_key: SigningKey, mux_key: SigningKey, rsa_key: object
) -> None:
    store = RedisKeyringStore(redis_url)
    cleanup.append(store.close)
    seed_two_versions(store, cipher, mux_key)
    provider = KeyringProvider(store, cipher, signing_key, refresh_interval=0.1)
    cleanup.append(provider.close)
    detected_before = regressions("detected")
    stranger = SigningKey("StrangerKey01aBcDeFgHiJkLmNoPqRsTuV", rsa_key, "mux")  # type: ignore[arg-type]
    client = redis.Redis.from_url(redis_url)
    cleanup.append(client.close)

    client.flushall()
    store.update(lambda state: state.with_key(sealed_record(cipher, stranger)))  # version 1
    assert provider.refresh() is False
    assert provider.refresh() is False

    assert store.read().held_ids() == {stranger.kid}
    assert store.read().version == 1
    assert provider.version == 2
    assert provider.active().kid == mux_key.kid
    assert provider.get(signing_key.kid) is None
    assert provider.warnings() == [
        lost_message(store.where, "went back from version 2 to 1"), env_ignored(signing_key),
    ]
    assert regressions("detected") == detected_before + 1


def test_flushed_keyring_never_serves_fallback(
    cleanup: list[Callable[[], None]],
    redis_url: str, cipher: KeyringCipher, signing_key: SigningKey, mux_key: SigningKey
) -> None:
    store = RedisKeyringStore(redis_url)
    cleanup.append(store.close)
    seed_two_versions(store, cipher, mux_key)
    provider = KeyringProvider(store, cipher, signing_key, refresh_interval=0.1)
    cleanup.append(provider.close)
    client = redis.Redis.from_url(redis_url)
    cleanup.append(client.close)

    # Take the rotation lock, so this process cannot restore and must ride out the loss.
    client.flushall()
    client.set(REDIS_PREFIX + "lock", "another-process", px=60_000)
    assert provider.refresh() is False

    assert provider.active().kid == mux_key.kid
    assert [info.kid for info in provider.infos()] == [mux_key.kid]
    assert provider.warnings() == [
        lost_message(store.where, "went back from version 2 to 0"), env_ignored(signing_key),
    ]

    client.delete(REDIS_PREFIX + "lock")
    provider.refresh()  # the watcher thread may have restored it already
    assert provider.version == 3
    assert provider.warnings() == [env_ignored(signing_key)]
    assert store.read().held_ids() == {mux_key.kid}


def test_emptied_keyring_refuses_revoked_env_key(
    cleanup: list[Callable[[], None]],
    redis_url: str, cipher: KeyringCipher, signing_key: SigningKey, mux_key: SigningKey
) -> None:
    store = RedisKeyringStore(redis_url)
    cleanup.append(store.close)
    store.update(lambda state: state.with_key(sealed_record(cipher, signing_key)))
    provider = KeyringProvider(store, cipher, signing_key, refresh_interval=0.1)
    cleanup.append(provider.close)
    tombstone = KeyRecord(kid=signing_key.kid, state="revoked", source="env", ours=False, revoked_at=1)

    store.update(lambda state: state.with_key(tombstone).with_key(sealed_record(cipher, mux_key)))
    provider.refresh()
    store.update(lambda state: state.without_key(signing_key.kid).without_key(mux_key.kid))
    provider.refresh()

    with pytest.raises(NoSigningKeyError) as raised:
        provider.active()
    assert str(raised.value) == (
        f"the keyring is empty, and MUX_SIGNING_KEY {signing_key.kid} is not used because the keyring "
        "held keys before or revoked it: restore the keyring or run `playback-gateway keys rotate`"
    )
    assert provider.get(signing_key.kid) is None
    assert provider.infos() == []


def test_rotation_paused_while_keyring_lost(
    cleanup: list[Callable[[], None]],
    redis_url: str, simulator: Simulator, cipher: KeyringCipher, clock: FakeClock, rsa_key: object
) -> None:
    store = RedisKeyringStore(redis_url)
    cleanup.append(store.close)
    provider = KeyringProvider(store, cipher, None, refresh_interval=0.1)
    cleanup.append(provider.close)
    manager = KeyManager(store, cipher, fast_client(simulator), provider, lambda: 3600, clock=clock)
    cleanup.append(manager.client.close)
    first = manager.rotate(actor="test")["active"]
    loaded_version = provider.version
    stranger = SigningKey("StrangerKey01aBcDeFgHiJkLmNoPqRsTuV", rsa_key, "mux")  # type: ignore[arg-type]
    client = redis.Redis.from_url(redis_url)
    cleanup.append(client.close)

    client.flushall()
    store.update(lambda state: state.with_key(sealed_record(cipher, stranger)))  # cannot be overwritten
    keys_at_mux = simulator.key_ids()
    with pytest.raises(KeyringUnavailableError) as raised:
        manager.rotate(actor="test")

    assert raised.value.message == "key operations are paused: " + lost_message(
        store.where, f"went back from version {loaded_version} to 1"
    )
    assert raised.value.retry_after == 5
    assert simulator.key_ids() == keys_at_mux
    assert provider.active().kid == first
    assert store.read().held_ids() == {stranger.kid}


@pytest.mark.parametrize("with_env_key", [False, True], ids=["no-env-key", "env-key"])
def test_start_without_redis_is_not_ready(
    cleanup: list[Callable[[], None]],
    redis_server: RedisServer, redis_url: str, simulator: Simulator, data_dir: Path, with_env_key: bool,
    cipher: KeyringCipher, keyring_key: bytes, mux_key: SigningKey, mux_env_key: tuple[SigningKey, str],
) -> None:
    env_key, private_key_b64 = mux_env_key
    overrides: dict[str, object] = {"mux_signing_key": env_key.kid, "mux_private_key": private_key_b64}
    settings = settings_for(
        simulator, data_dir, redis_url=redis_url, keyring_key=keyring_key,
        policy_path=PROJECT_ROOT / "policies", **(overrides if with_env_key else {}),
    )
    redis_server.stop()

    app = create_app(settings)
    cleanup.append(app.extensions["gateway"].keys.close)
    client = app.test_client()
    response = client.get("/readyz")

    assert response.status_code == 503
    assert response.get_json()["signing_key"] is None
    assert response.get_json()["reasons"] == [
        "no usable signing key: the keyring in Redis (GATEWAY_REDIS_URL) has not been loaded yet "
        "because it is unreachable"
    ]

    redis_server.start()
    store = RedisKeyringStore(redis_url)
    cleanup.append(store.close)
    seed_two_versions(store, cipher, mux_key)
    app.extensions["gateway"].keys.refresh()
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json()["signing_key"] == mux_key.kid


STATE_KEY = REDIS_PREFIX + "state"
VERSION_KEY = REDIS_PREFIX + "version"


def revoked_after_backup(
    cleanup: list[Callable[[], None]], redis_url: str, simulator: Simulator, cipher: KeyringCipher,
    clock: FakeClock,
) -> tuple[RedisKeyringStore, KeyringProvider, KeyManager, list[bytes], str, str]:
    """Rotate, back up the keyring, rotate again and revoke the retiring key, as Redis stores it
    before an operator rolls it back. Returns the backup, the revoked kid and the active kid."""
    store = RedisKeyringStore(redis_url)
    cleanup.append(store.close)
    provider = KeyringProvider(store, cipher, None, refresh_interval=0.1)
    cleanup.append(provider.close)
    manager = KeyManager(store, cipher, fast_client(simulator), provider, lambda: 3600, clock=clock)
    cleanup.append(manager.client.close)
    client = redis.Redis.from_url(redis_url)
    cleanup.append(client.close)

    revoked = manager.rotate(actor="test")["active"]
    backup = client.mget(STATE_KEY, VERSION_KEY)
    active = manager.rotate(actor="test")["active"]
    manager.revoke(revoked, actor="test")
    assert simulator.key_ids() == [active]
    return store, provider, manager, backup, revoked, active


def test_rollback_past_revoke_is_restored(
    cleanup: list[Callable[[], None]],
    redis_url: str, simulator: Simulator, cipher: KeyringCipher, clock: FakeClock,
) -> None:
    store, provider, manager, backup, revoked, active = revoked_after_backup(
        cleanup, redis_url, simulator, cipher, clock
    )
    loaded_version = provider.version
    client = redis.Redis.from_url(redis_url)
    cleanup.append(client.close)

    client.mset({STATE_KEY: backup[0], VERSION_KEY: backup[1]})
    provider.refresh()  # the watcher thread may have restored it already

    stored = store.read()
    assert stored.version == loaded_version + 1
    assert stored.held_ids() == {active}
    assert provider.version == loaded_version + 1
    assert provider.active().kid == active
    assert provider.warnings() == []
    assert manager.reconcile(fix=False, actor="test")["unknown_at_mux"] == []

    newcomer = KeyringProvider(store, cipher, None, refresh_interval=0.1)
    cleanup.append(newcomer.close)
    assert newcomer.active().kid == active
    assert newcomer.get(revoked) is None


def test_stale_copy_is_not_written_back(
    cleanup: list[Callable[[], None]],
    redis_url: str, simulator: Simulator, cipher: KeyringCipher, clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    store, provider, _, backup, revoked, active = revoked_after_backup(
        cleanup, redis_url, simulator, cipher, clock
    )
    loaded_version = provider.version
    client = redis.Redis.from_url(redis_url)
    cleanup.append(client.close)
    # Without its watcher the up-to-date process restores only when the test calls refresh.
    provider.close()

    client.mset({STATE_KEY: backup[0], VERSION_KEY: backup[1]})
    stale = KeyringProvider(store, cipher, None, refresh_interval=0.1)
    cleanup.append(stale.close)
    stale_version = stale.version
    assert stale.get(revoked) is not None
    retired_active = (
        f"the active key {revoked} in {store.where} was revoked or retired by an earlier write, so "
        "the keyring is an old copy (a restored backup?) and Mux may reject its tokens: restore "
        "the newest keyring or run `playback-gateway keys rotate`"
    )
    assert stale.warnings() == [retired_active]

    # The runbook's repair: delete the document and its version, keep the retired key ids.
    client.delete(STATE_KEY, VERSION_KEY)
    assert stale.refresh() is False

    assert stale.refresh() is False
    assert store.read().keys == ()
    assert stale.version == stale_version
    skipped = [r for r in caplog.records if getattr(r, "event", None) == "keyring.restore_skipped"]
    assert [(r.levelno, r.version, r.key_ids) for r in skipped] == [(logging.ERROR, stale_version, [revoked])]  # type: ignore[attr-defined]
    assert stale.warnings() == [
        lost_message(store.where, f"went back from version {stale_version} to 0") + ". This process "
        f"does not write back its copy (version {stale_version}) because its active key {revoked} "
        "was revoked or retired by another process, so the copy is out of date. It loads the "
        "keyring once a process with a newer copy writes it back",
        retired_active,
    ]

    assert provider.refresh() is True
    assert store.read().held_ids() == {active}
    assert store.read().version == loaded_version + 1

    stale.refresh()  # its watcher thread may have loaded the restored keyring already
    assert stale.version == loaded_version + 1
    assert stale.get(revoked) is None
    assert stale.warnings() == []


def test_restore_records_retired_keys_again(
    cleanup: list[Callable[[], None]],
    redis_url: str, simulator: Simulator, cipher: KeyringCipher, clock: FakeClock,
) -> None:
    store, provider, _, _, revoked, active = revoked_after_backup(cleanup, redis_url, simulator, cipher, clock)
    client = redis.Redis.from_url(redis_url)
    cleanup.append(client.close)

    client.flushall()  # a rollback or a deletion of pgw:{keyring}:* loses the retired key ids too
    provider.refresh()

    assert store.read().held_ids() == {active}
    assert store.retired_kids() == {revoked}


def test_lost_version_key_allows_rotation(
    cleanup: list[Callable[[], None]],
    redis_url: str, simulator: Simulator, cipher: KeyringCipher, clock: FakeClock,
) -> None:
    store = RedisKeyringStore(redis_url)
    cleanup.append(store.close)
    provider = KeyringProvider(store, cipher, None, refresh_interval=0.1)
    cleanup.append(provider.close)
    manager = KeyManager(store, cipher, fast_client(simulator), provider, lambda: 3600, clock=clock)
    cleanup.append(manager.client.close)
    client = redis.Redis.from_url(redis_url)
    cleanup.append(client.close)
    first = manager.rotate(actor="test")["active"]
    loaded_version = provider.version

    client.delete(VERSION_KEY)
    assert provider.refresh() is False
    second = manager.rotate(actor="test")["active"]

    assert store.read().version > loaded_version
    assert int(client.get(VERSION_KEY)) == store.read().version
    assert {record.kid: record.state for record in store.read().keys} == {first: "retiring", second: "active"}
    assert provider.active().kid == second
    assert provider.warnings() == []


def test_newer_copy_overwrites_stale_restore(
    cleanup: list[Callable[[], None]],
    redis_url: str, simulator: Simulator, cipher: KeyringCipher, clock: FakeClock,
) -> None:
    store, provider, _, backup, revoked, active = revoked_after_backup(
        cleanup, redis_url, simulator, cipher, clock
    )
    loaded_version = provider.version
    client = redis.Redis.from_url(redis_url)
    cleanup.append(client.close)
    provider.close()

    client.mset({STATE_KEY: backup[0], VERSION_KEY: backup[1]})
    stale = KeyringProvider(store, cipher, None, refresh_interval=0.1)
    cleanup.append(stale.close)
    stale_version = stale.version

    # Deleting every pgw:{keyring}:* key drops the retired key ids, so the stale copy goes back first.
    client.flushall()
    stale.refresh()
    assert store.read().version == stale_version + 1
    assert store.read().active().kid == revoked  # type: ignore[union-attr]

    # The up-to-date process remembers that key as revoked, so it overwrites the stale copy.
    assert provider.refresh() is True
    assert store.read().version == loaded_version + 1
    assert store.read().held_ids() == {active}
    assert store.retired_kids() == {revoked}

    stale.refresh()
    assert stale.version == loaded_version + 1
    assert stale.get(revoked) is None
    assert stale.warnings() == []
