"""Retirement, revocation and reconcile against the simulator, with faults at each step."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.keys.errors import (
    MuxUnavailableError,
    PartialFailureError,
    RevokeRefusedError,
    UnknownKeyError,
)
from gateway.keys.keyring import CreateIntent
from gateway.keys.material import SigningKey
from gateway.keys.provider import load_or_create_dev_key
from gateway.tokens.cache import InProcessBackend, TokenCache, cache_key
from gateway.tokens.signer import sign
from tests.keys.conftest import MAX_TOKEN_TTL, Rig

RigFactory = Callable[..., Rig]
GRACE = MAX_TOKEN_TTL + 300


@pytest.fixture
def rotated(make_rig: RigFactory, mux_env_key: tuple[SigningKey, str]) -> tuple[Rig, str, str]:
    """A gateway after one rotation: (rig, retiring env key id, active key id)."""
    rig = make_rig(env_key=mux_env_key[0])
    active = rig.manager.rotate("ops")["active"]
    return rig, mux_env_key[0].kid, active


# Retirement


def test_retire_keeps_keys_in_grace_period(rotated: tuple[Rig, str, str]) -> None:
    rig, retiring, active = rotated
    rig.clock.advance(GRACE - 1)

    result = rig.manager.retire("ops")

    assert result == {
        "retired": [], "kept": [{"id": retiring, "retire_after": int(rig.clock()) + 1}],
        "failed": [], "repaired": [],
    }
    assert rig.simulator.key_ids() == [retiring, active]


def test_retire_deletes_keys_past_grace(rotated: tuple[Rig, str, str], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    rig, retiring, active = rotated
    rig.clock.advance(GRACE)

    result = rig.manager.retire("cron")

    assert result["retired"] == [retiring]
    assert rig.simulator.key_ids() == [active]
    assert rig.keyring() == {active: "active"}
    assert rig.provider.get(retiring) is None
    assert rig.provider.active().kid == active
    events = [r for r in caplog.records if getattr(r, "event", None) == "audit.keys.retire"]
    assert [(e.actor, e.result, e.retired) for e in events] == [("cron", "ok", [retiring])]  # type: ignore[attr-defined]


def test_retire_never_touches_active_key(rotated: tuple[Rig, str, str]) -> None:
    rig, _, active = rotated
    rig.clock.advance(GRACE * 10)

    rig.manager.retire("ops")
    result = rig.manager.retire("ops")

    assert result["retired"] == []
    assert rig.simulator.key_ids() == [active]
    assert rig.keyring() == {active: "active"}


def test_retire_counts_key_gone_at_mux_as_deleted(rotated: tuple[Rig, str, str]) -> None:
    rig, retiring, active = rotated
    rig.manager.client.delete_signing_key(retiring)
    rig.clock.advance(GRACE)

    result = rig.manager.retire("ops")

    assert result["retired"] == [retiring]
    assert rig.keyring() == {active: "active"}


def test_retire_with_mux_failing_keeps_key(rotated: tuple[Rig, str, str]) -> None:
    rig, retiring, active = rotated
    rig.clock.advance(GRACE)
    rig.simulator.inject("error", "delete", count=3, status=500)

    with pytest.raises(PartialFailureError) as raised:
        rig.manager.retire("ops")

    assert raised.value.result["retired"] == []
    assert [item["id"] for item in raised.value.result["failed"]] == [retiring]  # type: ignore[index]
    assert str(raised.value) == (
        "1 of 1 retiring keys could not be deleted at Mux and stay in the keyring; run retire again"
    )
    assert rig.keyring() == {retiring: "retiring", active: "active"}
    assert rig.simulator.key_ids() == [retiring, active]

    assert rig.manager.retire("ops")["retired"] == [retiring]
    assert rig.simulator.key_ids() == [active]


def test_retire_with_delete_response_lost(rotated: tuple[Rig, str, str]) -> None:
    rig, retiring, active = rotated
    rig.clock.advance(GRACE)
    rig.simulator.inject("lost_response", "delete")

    result = rig.manager.retire("ops")

    # The retried DELETE finds the key gone (404), which counts as deleted.
    assert result["retired"] == [retiring]
    assert rig.simulator.key_ids() == [active]
    assert rig.keyring() == {active: "active"}


# Revocation


def test_revoke_retiring_key(rotated: tuple[Rig, str, str], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    rig, retiring, active = rotated

    result = rig.manager.revoke(retiring, "security-team")

    assert result == {"revoked": retiring, "active": active, "deleted_at_mux": True}
    assert rig.simulator.key_ids() == [active]
    assert rig.keyring() == {active: "active"}
    assert rig.provider.get(retiring) is None
    assert rig.revoked == [retiring]
    events = [r for r in caplog.records if getattr(r, "event", None) == "audit.keys.revoke"]
    assert [(e.actor, e.result, e.key_id) for e in events] == [("security-team", "ok", retiring)]  # type: ignore[attr-defined]


def test_revoke_key_gone_at_mux(rotated: tuple[Rig, str, str]) -> None:
    rig, retiring, active = rotated
    rig.manager.client.delete_signing_key(retiring)

    result = rig.manager.revoke(retiring, "ops")

    assert result == {"revoked": retiring, "active": active, "deleted_at_mux": True}
    assert rig.keyring() == {active: "active"}


def test_revoke_active_promotes_retiring(rotated: tuple[Rig, str, str]) -> None:
    rig, retiring, active = rotated

    result = rig.manager.revoke(active, "security-team")

    assert result == {"revoked": active, "active": retiring, "deleted_at_mux": True}
    assert rig.keyring() == {retiring: "active"}
    assert rig.store.read().find(retiring).retire_after is None  # type: ignore[union-attr]
    assert rig.provider.active().kid == retiring
    assert rig.simulator.key_ids() == [retiring]


def test_revoke_only_key_rotates(rotated: tuple[Rig, str, str]) -> None:
    rig, retiring, active = rotated
    rig.manager.revoke(retiring, "ops")

    result = rig.manager.revoke(active, "ops")

    replacement = result["active"]
    assert replacement not in (retiring, active)
    assert rig.keyring() == {replacement: "active"}
    assert rig.simulator.key_ids() == [replacement]
    assert rig.provider.active().kid == replacement


def test_revoke_only_key_refused_when_create_fails(rotated: tuple[Rig, str, str]) -> None:
    rig, retiring, active = rotated
    rig.manager.revoke(retiring, "ops")
    rig.simulator.inject("error", "create", count=3, status=503)

    with pytest.raises(RevokeRefusedError) as raised:
        rig.manager.revoke(active, "ops")

    assert raised.value.http_status == 503
    assert str(raised.value) == (
        f"refusing to revoke {active}: it is the only key and creating a replacement failed "
        "(System API create (POST /system/v1/signing-keys) returned 503 injected_fault: Injected error "
        "fault); it stays active"
    )
    assert rig.keyring() == {active: "active"}
    assert rig.simulator.key_ids() == [active]
    assert rig.provider.active().kid == active
    assert rig.revoked == [retiring]


def test_revoke_with_mux_delete_failing(rotated: tuple[Rig, str, str]) -> None:
    rig, retiring, active = rotated
    rig.simulator.inject("error", "delete", count=3, status=502)

    with pytest.raises(PartialFailureError) as raised:
        rig.manager.revoke(active, "ops")

    assert raised.value.result == {
        "revoked": active, "active": retiring, "deleted_at_mux": False,
        "error": "System API delete (DELETE /system/v1/signing-keys/" + active
        + ") returned 502 injected_fault: Injected error fault",
    }
    # The key no longer signs, but Mux still has it: the keyring keeps a tombstone.
    assert rig.keyring() == {retiring: "active", active: "revoked"}
    assert rig.provider.get(active) is None
    assert rig.provider.active().kid == retiring
    assert rig.revoked == [active]
    assert rig.store.read().find(active).sealed_key is None  # type: ignore[union-attr]

    result = rig.manager.retire("ops")

    assert result["repaired"] == [active]
    assert rig.simulator.key_ids() == [retiring]
    assert rig.keyring() == {retiring: "active"}


def test_revoke_env_key_while_keyring_empty(make_rig: RigFactory, mux_env_key: tuple[SigningKey, str]) -> None:
    env_key = mux_env_key[0]
    rig = make_rig(env_key=env_key)

    result = rig.manager.revoke(env_key.kid, "ops")

    replacement = result["active"]
    assert rig.keyring() == {replacement: "active"}
    assert rig.simulator.key_ids() == [replacement]
    assert rig.provider.active().kid == replacement
    assert rig.provider.get(env_key.kid) is None


def test_revoke_unknown_key(rotated: tuple[Rig, str, str]) -> None:
    rig, _, _ = rotated

    with pytest.raises(UnknownKeyError) as raised:
        rig.manager.revoke("NoSuchKey", "ops")

    assert raised.value.http_status == 404
    assert str(raised.value) == "no held signing key has id NoSuchKey"


def test_revoke_invalid_key_id_is_unknown(rotated: tuple[Rig, str, str]) -> None:
    rig, _, _ = rotated

    with pytest.raises(UnknownKeyError, match=r"^no held signing key has id \(5 characters\)$"):
        rig.manager.revoke("../..", "ops")


def test_revoke_dev_key_refused(make_rig: RigFactory, data_dir: Path) -> None:
    dev_key = load_or_create_dev_key(data_dir)
    rig = make_rig(fallback=dev_key)

    with pytest.raises(RevokeRefusedError) as raised:
        rig.manager.revoke(dev_key.kid, "ops")

    assert raised.value.http_status == 400
    assert str(raised.value) == f"{dev_key.kid} is the embedded dev key, which Mux never had: rotate to replace it"


def test_revoked_key_cached_tokens_unreachable(rotated: tuple[Rig, str, str]) -> None:
    rig, retiring, active = rotated
    cache = TokenCache(InProcessBackend())
    rig.manager.add_revocation_listener(cache.drop_key_id)
    claims = {"sub": "playback-1", "aud": "v", "kid": active}
    key = cache_key(active, 600, claims)
    exp = int(rig.clock()) + 600
    first, _ = cache.get_or_sign(key, 600, exp, lambda: sign({**claims, "exp": exp}, rig.provider.active()))

    rig.manager.revoke(active, "security-team")

    again, _ = cache.get_or_sign(key, 600, exp, lambda: "freshly-signed")
    assert again == "freshly-signed"
    assert first != again
    assert rig.provider.active().kid == retiring


# Reconcile


def test_reconcile_reports_both_differences(rotated: tuple[Rig, str, str]) -> None:
    rig, retiring, _ = rotated
    foreign, _ = rig.simulator.add_key()
    rig.clock.advance(3600)
    rig.manager.client.delete_signing_key(retiring)

    report = rig.manager.reconcile(False, "ops")

    assert report == {
        "unknown_at_mux": [{"id": foreign.kid, "created_at": foreign.created_at, "ours": False}],
        "missing_at_mux": [{"id": retiring, "state": "retiring"}],
        "pending_deletion": [],
        "pending_creates": 0,
        "deleted": [],
    }


def test_reconcile_fix_adopts_and_deletes_nothing_foreign(rotated: tuple[Rig, str, str]) -> None:
    rig, retiring, active = rotated
    foreign, _ = rig.simulator.add_key()

    report = rig.manager.reconcile(True, "ops")

    assert report["deleted"] == []
    assert report["unknown_at_mux"] == [{"id": foreign.kid, "created_at": foreign.created_at, "ours": False}]
    assert rig.simulator.key_ids() == [retiring, active, foreign.kid]
    assert rig.keyring() == {retiring: "retiring", active: "active"}


def test_reconcile_fix_deletes_lost_keys_of_ours(rotated: tuple[Rig, str, str]) -> None:
    rig, retiring, active = rotated
    started = int(rig.clock())
    intent = CreateIntent(id="crashed", actor="cli:ops", started_at=started, deadline=started + 60)
    rig.store.update(lambda state: state.__class__(
        version=state.version, keys=state.keys, intents=(intent,), check=state.check,
    ))
    orphan, _ = rig.simulator.add_key()
    rig.clock.advance(61)

    before = rig.manager.reconcile(False, "ops")
    after = rig.manager.reconcile(True, "ops")

    assert before["unknown_at_mux"] == [{"id": orphan.kid, "created_at": orphan.created_at, "ours": True}]
    assert before["pending_creates"] == 1
    assert after["deleted"] == [orphan.kid]
    assert after["unknown_at_mux"] == []
    assert rig.simulator.key_ids() == [retiring, active]
    assert rig.store.read().intents == ()


def test_reconcile_fix_finishes_revocation(rotated: tuple[Rig, str, str]) -> None:
    rig, retiring, active = rotated
    rig.simulator.inject("error", "delete", count=3, status=503)
    with pytest.raises(PartialFailureError):
        rig.manager.revoke(retiring, "ops")

    report = rig.manager.reconcile(True, "ops")

    assert report["deleted"] == [retiring]
    assert report["pending_deletion"] == []
    assert rig.simulator.key_ids() == [active]
    assert rig.keyring() == {active: "active"}


def test_reconcile_when_mux_unreachable(rotated: tuple[Rig, str, str]) -> None:
    rig, _, _ = rotated
    rig.simulator.inject("error", "list", count=3, status=503)

    with pytest.raises(MuxUnavailableError) as raised:
        rig.manager.reconcile(False, "ops")

    assert raised.value.http_status == 503
