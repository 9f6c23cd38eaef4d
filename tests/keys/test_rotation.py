"""Rotation against the simulator, with a fault at each step, for the Redis and the file keyring.

After each fault the test checks both sides: the keyring's records and markers, and the keys the
simulator (Mux) holds. The invariants: once repaired, Mux keeps no key left by a failed create,
and the active key is always one that Mux has.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.keys.errors import (
    KeyringUnavailableError,
    LockLostError,
    MuxResponseError,
    MuxUnavailableError,
    RotationInProgressError,
)
from gateway.keys.keyring import CreateIntent, KeyringStore
from gateway.keys.material import SigningKey
from gateway.keys.provider import load_or_create_dev_key
from gateway.keys.simulator import Simulator
from tests.keys.conftest import MAX_TOKEN_TTL, Rig
from tests.support.redis_server import RedisServer

RigFactory = Callable[..., Rig]


@pytest.fixture
def env_rig(make_rig: RigFactory, mux_env_key: tuple[SigningKey, str]) -> Rig:
    """A gateway that starts from MUX_SIGNING_KEY, a key the simulator holds."""
    return make_rig(env_key=mux_env_key[0])


def env_kid(rig: Rig) -> str:
    return rig.simulator.key_ids()[0]


def audit_events(caplog: pytest.LogCaptureFixture, event: str) -> list[logging.LogRecord]:
    return [record for record in caplog.records if getattr(record, "event", None) == event]


def leave_crashed_create(rig: Rig, *, started_offset: int = 0) -> str:
    """Reproduce what a process that died mid-rotation leaves: its marker, and a key at Mux."""
    started = int(rig.clock()) + started_offset
    intent = CreateIntent(id="crashed", actor="cli:crashed", started_at=started, deadline=started + 60)
    rig.store.update(lambda state: state.__class__(
        version=state.version, keys=state.keys, intents=(*state.intents, intent), check=state.check,
    ))
    orphan, _ = rig.simulator.add_key()
    return orphan.kid


def test_first_rotation_starts_from_env_key(env_rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    old = env_kid(env_rig)

    result = env_rig.manager.rotate("security-team")

    new = result["active"]
    retire_after = int(env_rig.clock()) + MAX_TOKEN_TTL + 300
    assert result == {
        "active": new,
        "created_at": int(env_rig.clock()),
        "retiring": [{"id": old, "retire_after": retire_after}],
        "repaired": [],
    }
    assert env_rig.keyring() == {old: "retiring", new: "active"}
    assert env_rig.store.read().find(old).retire_after == retire_after  # type: ignore[union-attr]
    assert env_rig.simulator.key_ids() == [old, new]
    assert env_rig.provider.active().kid == new
    assert env_rig.provider.get(old) is not None
    [event] = audit_events(caplog, "audit.keys.rotate")
    assert (event.actor, event.result, event.key_id, event.previous) == ("security-team", "ok", new, [old])  # type: ignore[attr-defined]


def test_rotation_from_dev_key_drops_it(make_rig: RigFactory, data_dir: Path) -> None:
    dev_key = load_or_create_dev_key(data_dir)
    rig = make_rig(fallback=dev_key)

    result = rig.manager.rotate("ops")

    assert result["retiring"] == []
    assert rig.keyring() == {result["active"]: "active"}
    assert rig.provider.get(dev_key.kid) is None
    assert rig.provider.warnings() == []


def test_second_rotation_keeps_one_active(env_rig: Rig) -> None:
    first = env_rig.manager.rotate("ops")["active"]
    second = env_rig.manager.rotate("ops")["active"]

    assert env_rig.keyring() == {env_kid(env_rig): "retiring", first: "retiring", second: "active"}
    assert [info.state for info in env_rig.provider.infos()] == ["active", "retiring", "retiring"]


def test_lock_held_refuses_rotation(env_rig: Rig) -> None:
    env_rig.store.acquire_lock("another-replica", 60)

    with pytest.raises(RotationInProgressError) as raised:
        env_rig.manager.rotate("ops")

    assert raised.value.http_status == 409
    assert raised.value.retry_after == 5
    assert env_rig.simulator.count_requests("POST") == 0
    assert env_rig.keyring() == {}


def test_concurrent_rotations_create_one_key(make_rig: RigFactory, mux_env_key: tuple[SigningKey, str]) -> None:
    rigs = [make_rig(env_key=mux_env_key[0]) for _ in range(2)]
    rigs[0].simulator.inject("latency", "create", seconds=0.5)
    outcomes: list[str] = []

    def rotate(rig: Rig) -> None:
        try:
            rig.manager.rotate("ops")
            outcomes.append("rotated")
        except RotationInProgressError:
            outcomes.append("busy")

    threads = [threading.Thread(target=rotate, args=(rig,)) for rig in rigs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(outcomes) == ["busy", "rotated"]
    assert rigs[0].simulator.count_requests("POST", 201) == 1
    assert len(rigs[0].simulator.key_ids()) == 2


def test_create_5xx_through_retries(env_rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    env_rig.simulator.inject("error", "create", count=3, status=503)

    with pytest.raises(MuxUnavailableError):
        env_rig.manager.rotate("ops")

    assert env_rig.simulator.key_ids() == [env_kid(env_rig)]
    assert env_rig.keyring() == {}
    assert env_rig.store.read().intents == ()
    assert env_rig.provider.active().kid == env_kid(env_rig)
    [event] = audit_events(caplog, "audit.keys.rotate")
    assert (event.result, event.error_code) == ("error", "mux-api-unavailable")  # type: ignore[attr-defined]


def test_create_response_lost_once(env_rig: Rig) -> None:
    env_rig.simulator.inject("lost_response", "create")

    result = env_rig.manager.rotate("ops")

    assert env_rig.simulator.count_requests("POST", 201) == 1
    assert env_rig.simulator.key_ids() == [env_kid(env_rig), result["active"]]
    assert env_rig.keyring() == {env_kid(env_rig): "retiring", result["active"]: "active"}
    assert env_rig.store.read().intents == ()


def test_create_response_lost_every_time(env_rig: Rig) -> None:
    env_rig.simulator.inject("lost_response", "create", count=3)

    with pytest.raises(MuxUnavailableError):
        env_rig.manager.rotate("ops")

    assert env_rig.simulator.key_ids() == [env_kid(env_rig)]
    assert env_rig.simulator.count_requests("DELETE", 204) == 3
    assert env_rig.keyring() == {}
    assert env_rig.store.read().intents == ()


def test_create_latency_past_timeout(make_rig: RigFactory, mux_env_key: tuple[SigningKey, str]) -> None:
    rig = make_rig(env_key=mux_env_key[0], read_timeout=0.3)
    rig.simulator.inject("latency", "create", count=3, seconds=0.6)

    with pytest.raises(MuxUnavailableError, match=r"timed out after 0\.3 s on each of 3 attempts$"):
        rig.manager.rotate("ops")

    assert rig.simulator.key_ids() == [mux_env_key[0].kid]
    assert rig.store.read().intents == ()
    assert rig.provider.active().kid == mux_env_key[0].kid


def test_malformed_create_response(env_rig: Rig) -> None:
    env_rig.simulator.inject("malformed", "create")

    with pytest.raises(MuxResponseError):
        env_rig.manager.rotate("ops")

    assert env_rig.simulator.key_ids() == [env_kid(env_rig)]
    assert env_rig.keyring() == {}
    assert env_rig.store.read().intents == ()


def test_rate_limited_create_is_retried(env_rig: Rig) -> None:
    env_rig.simulator.inject("rate_limit", "create", count=2)

    result = env_rig.manager.rotate("ops")

    assert env_rig.simulator.count_requests("POST", 429) == 2
    assert env_rig.simulator.key_ids() == [env_kid(env_rig), result["active"]]
    assert env_rig.store.read().intents == ()


def test_lost_create_and_failed_listing_leave_marker(env_rig: Rig) -> None:
    env_rig.simulator.inject("lost_response", "create", count=3)
    env_rig.simulator.inject("error", "list", count=3)

    with pytest.raises(MuxUnavailableError):
        env_rig.manager.rotate("ops")

    [marker] = env_rig.store.read().intents
    assert marker.ended_at is not None
    orphans = env_rig.simulator.key_ids()[1:]
    assert len(orphans) == 3

    result = env_rig.manager.rotate("ops")

    assert sorted(result["repaired"]) == sorted(orphans)
    assert env_rig.simulator.key_ids() == [env_kid(env_rig), result["active"]]
    assert env_rig.store.read().intents == ()


def test_crash_after_create_is_repaired_by_rotate(env_rig: Rig) -> None:
    orphan = leave_crashed_create(env_rig)
    env_rig.clock.advance(61)

    result = env_rig.manager.rotate("ops")

    assert result["repaired"] == [orphan]
    assert env_rig.simulator.key_ids() == [env_kid(env_rig), result["active"]]
    assert env_rig.store.read().intents == ()


def test_crash_marker_waits_for_its_deadline(env_rig: Rig) -> None:
    orphan = leave_crashed_create(env_rig)

    result = env_rig.manager.rotate("ops")

    # The crashed call could still be running until its deadline, so nothing is deleted yet.
    assert result["repaired"] == []
    assert orphan in env_rig.simulator.key_ids()
    assert [intent.id for intent in env_rig.store.read().intents] == ["crashed"]


def test_keys_outside_marker_window_are_kept(env_rig: Rig) -> None:
    orphan = leave_crashed_create(env_rig, started_offset=120)
    env_rig.clock.advance(200)

    result = env_rig.manager.rotate("ops")

    assert result["repaired"] == []
    assert orphan in env_rig.simulator.key_ids()
    assert env_rig.store.read().intents == ()


def test_listing_failure_during_repair_creates_nothing(env_rig: Rig) -> None:
    orphan = leave_crashed_create(env_rig)
    env_rig.clock.advance(61)
    env_rig.simulator.inject("error", "list", count=3)

    with pytest.raises(MuxUnavailableError):
        env_rig.manager.rotate("ops")

    assert env_rig.simulator.count_requests("POST") == 0
    assert env_rig.simulator.key_ids() == [env_kid(env_rig), orphan]
    assert [intent.id for intent in env_rig.store.read().intents] == ["crashed"]


def test_lock_lost_during_create(make_rig: RigFactory, mux_env_key: tuple[SigningKey, str]) -> None:
    rig = make_rig(env_key=mux_env_key[0], lock_ttl=1, read_timeout=5)
    rig.simulator.inject("latency", "create", seconds=1.5)

    with pytest.raises(LockLostError):
        rig.manager.rotate("ops")

    # The key Mux made is deleted again, because this process may no longer store it.
    assert rig.simulator.key_ids() == [mux_env_key[0].kid]
    assert rig.keyring() == {}
    assert rig.provider.active().kid == mux_env_key[0].kid


@pytest.mark.parametrize("store", ["redis"], indirect=True)
def test_redis_down_refuses_rotation(
    make_rig: RigFactory, store: KeyringStore, redis_server: RedisServer, mux_env_key: tuple[SigningKey, str]
) -> None:
    rig = make_rig(env_key=mux_env_key[0])
    redis_server.stop()

    with pytest.raises(KeyringUnavailableError) as raised:
        rig.manager.rotate("ops")

    assert raised.value.http_status == 503
    assert rig.simulator.count_requests("POST") == 0
    assert rig.provider.active().kid == mux_env_key[0].kid


@pytest.mark.parametrize("store", ["redis"], indirect=True)
def test_redis_lost_after_create_deletes_key(
    make_rig: RigFactory, store: KeyringStore, redis_server: RedisServer, mux_env_key: tuple[SigningKey, str]
) -> None:
    rig = make_rig(env_key=mux_env_key[0], read_timeout=5)
    rig.simulator.inject("latency", "create", seconds=1.0)
    stopper = threading.Timer(0.3, redis_server.stop)
    stopper.start()

    with pytest.raises(KeyringUnavailableError):
        rig.manager.rotate("ops")
    stopper.join()

    assert rig.simulator.count_requests("POST", 201) == 1
    assert rig.simulator.key_ids() == [mux_env_key[0].kid]


def test_simulator_fixture_is_isolated(simulator: Simulator) -> None:
    assert simulator.key_ids() == []
    assert simulator.pending_faults() == 0
