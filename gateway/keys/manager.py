"""Key lifecycle: rotate, retire, revoke and reconcile, through the System API and the keyring.

Every operation that changes keys runs under the rotation lock and is ordered so that a crash or
error after any step leaves a state the next rotate, retire or reconcile repairs:

- a create marker (`CreateIntent`) is written before Mux is asked to create a key, so a key whose
  response was lost, or that was created just before a crash, is found and deleted later;
- a key becomes active only after Mux returned it and its sealed copy is stored;
- a revoked key stops signing first and is then deleted at Mux. Until Mux confirms, the keyring
  keeps a tombstone without its private key, so the deletion is retried later.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from gateway.keys.errors import (
    KeyManagementError,
    KeyringUnavailableError,
    PartialFailureError,
    RevokeRefusedError,
    UnknownKeyError,
)
from gateway.keys.keyring import CreateIntent, KeyRecord, KeyringState, KeyringStore, RotationLock
from gateway.keys.keyring_provider import KeyringProvider
from gateway.keys.material import SigningKey
from gateway.keys.sealing import KeyringCipher
from gateway.keys.system_api import KEY_ID_PATTERN, CreatedKey, RemoteKey, SystemApiClient
from gateway.observability.logging import audit, log_event
from gateway.observability.metrics import KEY_OPERATIONS

# Added to the longest token lifetime before a retiring key is deleted: covers clock differences
# between the gateway and Mux, and replicas that switch keys a few seconds late.
RETIRE_SKEW_SECONDS = 300
# How far Mux's clock may differ from ours when matching a key's created_at to a create marker.
CREATE_WINDOW_SKEW_SECONDS = 15
# Beyond the longest System API call (with retries), so a create marker's deadline has passed
# by the time the lock of a crashed holder expires.
LOCK_MARGIN_SECONDS = 30

logger = logging.getLogger(__name__)


class KeyManager:
    """Change signing keys at Mux and in the shared keyring. Results are plain dicts for JSON."""

    def __init__(
        self,
        store: KeyringStore,
        cipher: KeyringCipher,
        client: SystemApiClient,
        provider: KeyringProvider,
        max_token_ttl: Callable[[], int],
        *,
        env_key: SigningKey | None = None,
        on_revoked: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.time,
        retire_skew: int = RETIRE_SKEW_SECONDS,
        lock_ttl: int | None = None,
    ) -> None:
        self.store = store
        self.client = client
        self.provider = provider
        self._cipher = cipher
        self._max_token_ttl = max_token_ttl
        self._env_key = env_key
        self._clock = clock
        self._retire_skew = retire_skew
        self._lock_ttl = lock_ttl if lock_ttl is not None else client.max_call_seconds + LOCK_MARGIN_SECONDS
        self.on_revoked = on_revoked
        self._revocation_listeners: list[Callable[[str], None]] = []

    def __repr__(self) -> str:
        return f"KeyManager(store={self.store!r}, client={self.client!r})"

    def add_revocation_listener(self, listener: Callable[[str], None]) -> None:
        """Call `listener(kid)` after every revoke, besides `on_revoked` (which may be reassigned)."""
        self._revocation_listeners.append(listener)

    def list_keys(self) -> list[dict[str, object]]:
        return [info.as_dict() for info in self.provider.infos()]

    # Rotation

    def rotate(self, actor: str) -> dict[str, Any]:
        """Create a key at Mux, make it the one active key and start the previous key's grace period.

        Raises RotationInProgressError, KeyringUnavailableError, MuxApiError, MuxUnavailableError.
        """
        with self._audited("rotate", actor) as details, self._locked() as lock:
            repaired = self._repair(lock)
            ttl = self._checked_max_token_ttl()
            created, intent = self._create_key(lock, actor)
            retire_after = int(self._clock()) + ttl + self._retire_skew
            change = self._rotation_change(created, intent, retire_after)
            stored = self._store_created(lock, created, intent, change)
            self._resolve_after_retries(lock, created)

            retiring = [
                record.kid for record in stored.keys
                if record.state == "retiring" and record.retire_after == retire_after
            ]
            details.update(key_id=created.kid, previous=retiring)
            return {
                "active": created.kid,
                "created_at": created.created_at,
                "retiring": [{"id": kid, "retire_after": retire_after} for kid in retiring],
                "repaired": repaired,
            }

    def _rotation_change(
        self, created: CreatedKey, intent: CreateIntent, retire_after: int
    ) -> Callable[[KeyringState], KeyringState]:
        new_record = self._record_for(created)
        env_record = self._env_record(retire_after)

        def change(state: KeyringState) -> KeyringState:
            records = [
                dataclasses.replace(record, state="retiring", retire_after=retire_after)
                if record.state == "active" else record
                for record in state.keys
            ]
            # The first rotation starts from MUX_SIGNING_KEY, which stays valid until its tokens end.
            if not state.keys and env_record is not None and env_record.kid != created.kid:
                records.append(env_record)
            records.append(new_record)
            return dataclasses.replace(
                state, keys=tuple(records), intents=self._settled_intents(state, intent, created)
            )

        return change

    # Retirement

    def retire(self, actor: str) -> dict[str, Any]:
        """Delete at Mux, then forget, every retiring key whose retire_after has passed.

        Raises PartialFailureError (with the result) when some deletions failed.
        """
        with self._audited("retire", actor) as details, self._locked() as lock:
            repaired = self._repair(lock, tolerate_errors=True)
            now = int(self._clock())
            state = self.store.read()
            retired: list[str] = []
            failed: list[dict[str, str]] = []
            kept: list[dict[str, Any]] = []

            for record in state.keys:
                if record.state != "retiring":
                    continue
                if record.retire_after is None or record.retire_after > now:
                    kept.append({"id": record.kid, "retire_after": record.retire_after})
                    continue
                try:
                    self._delete_at_mux(lock, record.kid)
                    self._update(lambda s, kid=record.kid: _forget_if_state(s, kid, "retiring"))
                except KeyManagementError as error:
                    failed.append({"id": record.kid, "error": error.message})
                    continue
                retired.append(record.kid)

            details.update(retired=retired, failed=[item["id"] for item in failed])
            result = {"retired": retired, "kept": kept, "failed": failed, "repaired": repaired}
            self._refresh_provider()
            if failed:
                raise PartialFailureError(
                    f"{len(failed)} of {len(failed) + len(retired)} retiring keys could not be "
                    "deleted at Mux and stay in the keyring; run retire again",
                    result,
                )
            return result

    # Revocation

    def revoke(self, kid: str, actor: str) -> dict[str, Any]:
        """Stop signing with `kid`, drop its cached tokens and delete it at Mux now.

        Revoking the active key activates the newest retiring key, or creates a new key when none
        is held. Raises UnknownKeyError, RevokeRefusedError, PartialFailureError (the key is no
        longer used but Mux still has it) and the errors of rotate.
        """
        with self._audited("revoke", actor, key_id=kid) as details, self._locked() as lock:
            state = self._state_with_env_key()
            record = state.find(kid) if KEY_ID_PATTERN.match(kid) else None
            if record is None:
                raise self._unknown_key(kid)

            if record.state == "active":
                replacement = self._activate_replacement(lock, actor, state, record)
                details.update(replacement=replacement)
            else:
                self._update(lambda s: _tombstone(self._with_env_key(s), kid, int(self._clock())))
                replacement = None

            self._refresh_provider()
            self._notify_revoked(kid)

            result: dict[str, Any] = {"revoked": kid, "active": replacement, "deleted_at_mux": False}
            try:
                # A key Mux no longer has (404) counts as deleted: either way Mux rejects its tokens.
                self._delete_at_mux(lock, kid)
                result["deleted_at_mux"] = True
            except KeyManagementError as error:
                result["error"] = error.message
                raise PartialFailureError(
                    f"key {kid} no longer signs and its cached tokens were dropped, but deleting it "
                    f"at Mux failed ({error.message}); run revoke again or retire to finish",
                    result,
                    retry_after=error.retry_after,
                ) from None
            self._update(lambda s: _forget_if_state(s, kid, "revoked"))
            self._refresh_provider()
            if result["active"] is None:
                active = self.store.read().active()
                result["active"] = active.kid if active is not None else None
            return result

    def _activate_replacement(
        self, lock: RotationLock, actor: str, state: KeyringState, record: KeyRecord
    ) -> str:
        """Make another key active in the same write that tombstones `record`; return its id."""
        now = int(self._clock())
        candidates = sorted(
            (r for r in state.keys if r.state == "retiring" and r.sealed_key is not None),
            key=lambda r: (r.created_at or 0, r.retire_after or 0),
            reverse=True,
        )
        if candidates:
            successor = candidates[0].kid

            def promote(current: KeyringState) -> KeyringState:
                current = _tombstone(self._with_env_key(current), record.kid, now)
                chosen = current.find(successor)
                if chosen is None or chosen.state != "retiring":
                    raise KeyringUnavailableError("the keyring changed during revoke; retry", retry_after=1)
                return current.with_key(dataclasses.replace(chosen, state="active", retire_after=None))

            self._update(promote)
            return successor

        try:
            created, intent = self._create_key(lock, actor)
        except KeyManagementError as error:
            refusal = RevokeRefusedError(
                f"refusing to revoke {record.kid}: it is the only key and creating a replacement "
                f"failed ({error.message}); it stays active",
                retry_after=error.retry_after,
            )
            refusal.http_status = error.http_status
            raise refusal from None

        new_record = self._record_for(created)

        def replace_revoked(current: KeyringState) -> KeyringState:
            current = _tombstone(self._with_env_key(current), record.kid, now).with_key(new_record)
            return dataclasses.replace(current, intents=self._settled_intents(current, intent, created))

        self._store_created(lock, created, intent, replace_revoked)
        self._resolve_after_retries(lock, created)
        return created.kid

    # Reconcile

    def reconcile(self, fix: bool, actor: str) -> dict[str, Any]:
        """Compare Mux's keys with the keyring, and with `fix` delete at Mux the keys that are ours and lost.

        Lost keys were left by an interrupted create, or revoked but not yet deleted at Mux.
        Keys someone else created are reported, never adopted or deleted.
        """
        with self._audited("reconcile", actor, fix=fix) as details:
            remote = self.client.list_signing_keys()
            state = self.store.read()
            report = self._differences(state, remote)
            if fix:
                with self._locked() as lock:
                    # Listed again under the lock: a create that ran since the first listing
                    # must be seen before its marker is cleared.
                    report["deleted"] = self._repair(lock)
                    self._refresh_provider()
                    deleted = set(report["deleted"])
                    report["unknown_at_mux"] = [
                        item for item in report["unknown_at_mux"] if item["id"] not in deleted
                    ]
                    report["pending_deletion"] = [
                        kid for kid in report["pending_deletion"] if kid not in deleted
                    ]
            details.update(
                unknown_at_mux=len(report["unknown_at_mux"]), missing_at_mux=len(report["missing_at_mux"]),
            )
            return report

    def _differences(self, state: KeyringState, remote: list[RemoteKey]) -> dict[str, Any]:
        state = self._with_env_key(state)
        held = {record.kid: record for record in state.keys}
        remote_ids = {key.kid for key in remote}
        return {
            "unknown_at_mux": [
                {"id": key.kid, "created_at": key.created_at, "ours": _matches_intent(state, key)}
                for key in remote if key.kid not in held
            ],
            "missing_at_mux": [
                {"id": record.kid, "state": record.state}
                for record in state.keys if record.kid not in remote_ids and record.state != "revoked"
            ],
            "pending_deletion": [
                record.kid for record in state.keys if record.state == "revoked" and record.kid in remote_ids
            ],
            "pending_creates": len(state.intents),
            "deleted": [],
        }

    # Repair of interrupted operations

    def _repair(self, lock: RotationLock, *, tolerate_errors: bool = False) -> list[str]:
        """Delete keys left at Mux by interrupted creates and revokes; return the deleted ids."""
        try:
            deleted = self._resolve_intents(lock)
            deleted += self._finish_revocations(lock)
        except KeyManagementError as error:
            if not tolerate_errors:
                raise
            log_event(logger, "keys.repair_failed", logging.WARNING, error=error.message)
            return []
        return deleted

    def _resolve_intents(self, lock: RotationLock) -> list[str]:
        now = int(self._clock())
        ready = [intent for intent in self.store.read().intents if intent.window_end <= now]
        if not ready:
            return []

        remote = self.client.list_signing_keys()
        held = self._with_env_key(self.store.read()).held_ids()
        deleted: list[str] = []
        for intent in ready:
            for key in remote:
                if key.kid in held or key.kid in deleted or not _in_window(intent, key):
                    continue
                self._delete_at_mux(lock, key.kid)
                deleted.append(key.kid)
                audit("keys.orphan_deleted", actor=intent.actor, result="ok", key_id=key.kid)
            self._update(lambda s, done=intent.id: _without_intent(s, done))
        return deleted

    def _finish_revocations(self, lock: RotationLock) -> list[str]:
        finished: list[str] = []
        for record in self.store.read().keys:
            if record.state != "revoked":
                continue
            self._delete_at_mux(lock, record.kid)
            self._update(lambda s, kid=record.kid: _forget_if_state(s, kid, "revoked"))
            finished.append(record.kid)
        return finished

    # Creating a key

    def _create_key(self, lock: RotationLock, actor: str) -> tuple[CreatedKey, CreateIntent]:
        now = int(self._clock())
        intent = CreateIntent(
            id=uuid.uuid4().hex, actor=actor, started_at=now, deadline=now + self.client.max_call_seconds,
        )
        lock.ensure_held()
        self._update(lambda s: dataclasses.replace(s, intents=(*s.intents, intent)))

        try:
            created = self.client.create_signing_key()
        except KeyManagementError:
            self._close_failed_intent(lock, intent)
            raise
        return created, intent

    def _close_failed_intent(self, lock: RotationLock, intent: CreateIntent) -> None:
        """After a failed create, delete whatever key it may have made, or leave that to later."""
        ended = dataclasses.replace(intent, ended_at=int(self._clock()))
        try:
            self._update(lambda s: _replace_intent(s, ended))
            self._resolve_intents(lock)
        except KeyManagementError as error:
            log_event(
                logger, "keys.create_marker_left", logging.WARNING, intent=intent.id, error=error.message
            )

    def _store_created(
        self,
        lock: RotationLock,
        created: CreatedKey,
        intent: CreateIntent,
        change: Callable[[KeyringState], KeyringState],
    ) -> KeyringState:
        """Store a just-created key; if that fails, delete it at Mux so no key is left unheld."""
        try:
            lock.ensure_held()
            stored = self._update(change)
        except KeyManagementError:
            try:
                self.client.delete_signing_key(created.kid)
            except KeyManagementError as error:
                # The create marker is still stored, so the next rotate or reconcile deletes it.
                log_event(
                    logger, "keys.unstored_key_left", logging.WARNING, kid=created.kid,
                    intent=intent.id, error=error.message,
                )
            raise
        self._refresh_provider()
        return stored

    def _resolve_after_retries(self, lock: RotationLock, created: CreatedKey) -> None:
        # A create that needed retries may have made a key on an earlier attempt.
        if created.attempts == 1:
            return
        try:
            self._resolve_intents(lock)
        except KeyManagementError as error:
            log_event(logger, "keys.create_marker_left", logging.WARNING, kid=created.kid, error=error.message)

    def _settled_intents(
        self, state: KeyringState, intent: CreateIntent, created: CreatedKey
    ) -> tuple[CreateIntent, ...]:
        if created.attempts == 1:
            return _without_intent(state, intent.id).intents
        ended = dataclasses.replace(intent, ended_at=int(self._clock()))
        return _replace_intent(state, ended).intents

    def _record_for(self, created: CreatedKey) -> KeyRecord:
        return KeyRecord(
            kid=created.kid,
            state="active",
            source="mux",
            ours=True,
            created_at=created.created_at,
            sealed_key=self._cipher.seal(created.kid, created.key.private_pem()),
        )

    # Helpers

    def _delete_at_mux(self, lock: RotationLock, kid: str) -> bool:
        lock.ensure_held()
        deleted = self.client.delete_signing_key(kid)
        log_event(logger, "keys.deleted_at_mux", kid=kid, already_gone=not deleted)
        return deleted

    def _env_record(self, retire_after: int | None, state: str = "retiring") -> KeyRecord | None:
        if self._env_key is None:
            return None
        return KeyRecord(
            kid=self._env_key.kid,
            state=state,  # type: ignore[arg-type]
            source="env",
            ours=False,
            retire_after=retire_after,
            sealed_key=self._cipher.seal(self._env_key.kid, self._env_key.private_pem()),
        )

    def _with_env_key(self, state: KeyringState) -> KeyringState:
        """Return the state with MUX_SIGNING_KEY as its active key while the keyring is empty."""
        if state.keys or self._env_key is None:
            return state
        record = self._env_record(None, state="active")
        assert record is not None
        return dataclasses.replace(state, keys=(record,))

    def _state_with_env_key(self) -> KeyringState:
        return self._with_env_key(self.store.read())

    def _unknown_key(self, kid: str) -> KeyManagementError:
        fallback = self.provider.fallback
        if fallback is not None and fallback.kid == kid and fallback.source == "dev":
            return RevokeRefusedError(
                f"{kid} is the embedded dev key, which Mux never had: rotate to replace it"
            )
        shown = kid if KEY_ID_PATTERN.match(kid) else f"({len(kid)} characters)"
        return UnknownKeyError(f"no held signing key has id {shown}")

    def _checked_max_token_ttl(self) -> int:
        ttl = int(self._max_token_ttl())
        if ttl < 0:
            raise KeyManagementError(f"the maximum token lifetime is invalid: expected 0 or more seconds, got {ttl}")
        return ttl

    def _update(self, change: Callable[[KeyringState], KeyringState | None]) -> KeyringState:
        def with_check(state: KeyringState) -> KeyringState | None:
            changed = change(state)
            if changed is not None and changed.check is None:
                changed = dataclasses.replace(changed, check=self._cipher.check_value())
            return changed

        return self.store.update(with_check)

    def _refresh_provider(self) -> None:
        try:
            self.provider.refresh()
        except KeyringUnavailableError as error:
            # The watcher thread retries; this process keeps signing with what it loaded.
            log_event(logger, "keyring.refresh_deferred", logging.WARNING, error=error.message)

    def _notify_revoked(self, kid: str) -> None:
        listeners = [self.on_revoked, *self._revocation_listeners] if self.on_revoked else self._revocation_listeners
        for listener in listeners:
            try:
                listener(kid)
            except Exception as error:  # noqa: BLE001 - a failing listener must not undo the revoke
                log_event(logger, "keys.revocation_listener_failed", logging.ERROR, kid=kid,
                          error=type(error).__name__)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[RotationLock]:
        # A keyring lost in storage must be restored before anything builds on it: a rotation
        # on the empty keyring would orphan every key this process still holds.
        self._refresh_provider()
        with RotationLock(self.store, self._lock_ttl) as lock:
            if self.provider.regression is not None:
                raise KeyringUnavailableError(
                    f"key operations are paused: {self.provider.regression}", retry_after=5
                )
            yield lock

    @contextlib.contextmanager
    def _audited(self, operation: str, actor: str, **fields: Any) -> Iterator[dict[str, Any]]:
        details: dict[str, Any] = dict(fields)
        try:
            yield details
        except KeyManagementError as error:
            KEY_OPERATIONS.labels(operation, "error").inc()
            audit(f"keys.{operation}", actor=actor, result="error", error=error.message,
                  error_code=error.code, **details)
            raise
        except Exception as error:
            KEY_OPERATIONS.labels(operation, "error").inc()
            audit(f"keys.{operation}", actor=actor, result="error", error=type(error).__name__, **details)
            raise
        KEY_OPERATIONS.labels(operation, "ok").inc()
        audit(f"keys.{operation}", actor=actor, result="ok", **details)


def _in_window(intent: CreateIntent, key: RemoteKey) -> bool:
    start = intent.started_at - CREATE_WINDOW_SKEW_SECONDS
    return start <= key.created_at <= intent.window_end + CREATE_WINDOW_SKEW_SECONDS


def _matches_intent(state: KeyringState, key: RemoteKey) -> bool:
    return any(_in_window(intent, key) for intent in state.intents)


def _without_intent(state: KeyringState, intent_id: str) -> KeyringState:
    return dataclasses.replace(state, intents=tuple(i for i in state.intents if i.id != intent_id))


def _replace_intent(state: KeyringState, intent: CreateIntent) -> KeyringState:
    others = tuple(i for i in state.intents if i.id != intent.id)
    return dataclasses.replace(state, intents=(*others, intent))


def _tombstone(state: KeyringState, kid: str, now: int) -> KeyringState:
    record = state.find(kid)
    if record is None:
        return state
    return state.with_key(
        dataclasses.replace(record, state="revoked", sealed_key=None, retire_after=None, revoked_at=now)
    )


def _forget_if_state(state: KeyringState, kid: str, expected: str) -> KeyringState | None:
    record = state.find(kid)
    if record is None or record.state != expected:
        return None
    return state.without_key(kid)
