"""A KeyProvider backed by the shared keyring, kept current in every worker of every replica.

Signing reads an immutable snapshot, so it never waits on Redis or the file system. A daemon
thread, started on first use in each process (so gunicorn's forked workers each get their own),
refreshes the snapshot when a change is announced and at least every `refresh_interval` seconds.
Each private key is decrypted and parsed once per process, when its record first appears.

A provider never loads a keyring whose version went backwards, or an empty keyring after one
that held keys: that means the storage lost the keyring (Redis restarted without persistence,
an eviction, FLUSHALL, a rollback to an old copy). It keeps signing with its last good snapshot,
reports the loss in `warnings()`, and writes that snapshot back under the rotation lock, so the
keyring heals itself as long as one process still holds it. A snapshot whose active key is among
the store's retired key ids is out of date and is never written back (see `_without_retired`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from gateway.keys.errors import (
    KeyManagementError,
    KeyringUnavailableError,
    LockLostError,
    RotationInProgressError,
)
from gateway.keys.keyring import KeyRecord, KeyringState, KeyringStore, RotationLock
from gateway.keys.material import KeyMaterialError, SigningKey, parse_private_key
from gateway.keys.provider import DEV_KEY_WARNING, KeyInfo, NoSigningKeyError
from gateway.keys.sealing import KeyringCipher
from gateway.observability.logging import audit, log_event
from gateway.observability.metrics import (
    ACTIVE_KEY_CREATED,
    DEV_KEY_IN_USE,
    KEYRING_REGRESSIONS,
    SIGNING_KEY_USABLE,
)

REFRESH_INTERVAL_SECONDS = 2.0
RESTORE_LOCK_TTL_SECONDS = 30
# Covers one change-check interval plus a Redis read at its 2 s socket timeout.
WATCHER_JOIN_TIMEOUT_SECONDS = 10.0
REGRESSION_LOG_INTERVAL_SECONDS = 60.0

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Snapshot:
    """One keyring version as signing uses it. Replaced whole, never changed in place."""

    version: int
    records: tuple[KeyRecord, ...] = ()
    keys: dict[str, SigningKey] = field(default_factory=dict, repr=False)
    active: SigningKey | None = field(default=None, repr=False)


_UNLOADED = _Snapshot(version=-1)


class KeyringProvider:
    """Serve the keyring's active key and its still-valid retiring keys.

    While the keyring is empty, `fallback` (the MUX_SIGNING_KEY key, or the embedded dev key)
    signs, so a gateway with System API credentials works before its first rotation.
    """

    def __init__(
        self,
        store: KeyringStore,
        cipher: KeyringCipher,
        fallback: SigningKey | None,
        *,
        refresh_interval: float = REFRESH_INTERVAL_SECONDS,
    ) -> None:
        self.store = store
        self._cipher = cipher
        self._fallback = fallback
        self._refresh_interval = refresh_interval
        self._snapshot = _UNLOADED
        self._refresh_lock = threading.Lock()
        self._listeners: list[Callable[[str], None]] = []
        self._unavailable_since: float | None = None
        self._watcher_pid: int | None = None
        self._watcher: threading.Thread | None = None
        self._stop = threading.Event()
        self._start_lock = threading.Lock()
        # The last keyring this process applied, kept whole (sealed keys, markers, check value)
        # so it can be written back if the storage loses it.
        self._last_good: KeyringState | None = None
        self._ever_held_keys = False
        self._retired_kids: set[str] = set()
        self._regression: str | None = None
        self._regression_logged_at: float | None = None
        self._outdated_logged_at: float | None = None
        # Set while the loaded keyring's active key is among the store's retired key ids.
        self._retired_active: str | None = None

        # At start-up an undecryptable or malformed keyring must stop the process, so those
        # errors propagate; an unreachable Redis only delays loading to the watcher thread.
        try:
            self.refresh(force=True)
        except KeyringUnavailableError as error:
            self._note_unavailable(error)

    def __repr__(self) -> str:
        return f"KeyringProvider(store={self.store!r}, version={self._snapshot.version})"

    @property
    def version(self) -> int:
        """Return the keyring version loaded in this process (-1 before the first load)."""
        return self._snapshot.version

    @property
    def fallback(self) -> SigningKey | None:
        return self._fallback

    @property
    def regression(self) -> str | None:
        """Describe the keyring loss this process is riding out, or None while the keyring is sound."""
        return self._regression

    def add_removal_listener(self, listener: Callable[[str], None]) -> None:
        """Call `listener(kid)` whenever a key this process held is revoked or removed."""
        self._listeners.append(listener)

    def active(self) -> SigningKey:
        self._ensure_watcher()
        snapshot = self._snapshot
        if snapshot.version < 0:
            raise NoSigningKeyError(
                f"the keyring in {self.store.where} has not been loaded yet because it is unreachable"
            )
        if not snapshot.records:
            return self._usable_fallback()
        if snapshot.active is None:
            raise NoSigningKeyError(
                "the keyring contains no active key: run `playback-gateway keys rotate`"
            )
        return snapshot.active

    def get(self, kid: str) -> SigningKey | None:
        self._ensure_watcher()
        snapshot = self._snapshot
        if snapshot.version >= 0 and not snapshot.records:
            fallback = self._fallback_or_none()
            return fallback if fallback is not None and fallback.kid == kid else None
        return snapshot.keys.get(kid)

    def infos(self) -> list[KeyInfo]:
        self._ensure_watcher()
        snapshot = self._snapshot
        fallback = self._fallback_or_none()
        if snapshot.version >= 0 and not snapshot.records and fallback is not None:
            return [KeyInfo(fallback.kid, "active", fallback.source)]
        order = {"active": 0, "retiring": 1, "revoked": 2}
        records = sorted(snapshot.records, key=lambda r: (order[r.state], -(r.created_at or 0), r.kid))
        return [record.info() for record in records]

    def warnings(self) -> list[str]:
        snapshot = self._snapshot
        warnings: list[str] = []
        if self._regression is not None:
            warnings.append(self._regression)
        if self._retired_active is not None:
            warnings.append(
                f"the active key {self._retired_active} in {self.store.where} was revoked or "
                "retired by an earlier write, so the keyring is an old copy (a restored backup?) "
                "and Mux may reject its tokens: restore the newest keyring or run "
                "`playback-gateway keys rotate`"
            )
        if self._unavailable_since is not None:
            age = int(time.time() - self._unavailable_since)
            warnings.append(
                f"the keyring in {self.store.where} has been unreachable for {age} s; "
                "signing with the keys loaded before"
            )
        if snapshot.version >= 0 and not snapshot.records and self._fallback_or_none() is not None:
            if self._fallback is not None and self._fallback.source == "dev":
                warnings.append(DEV_KEY_WARNING)
        elif (
            self._fallback is not None
            and self._fallback.source == "env"
            and snapshot.records
            and snapshot.keys.get(self._fallback.kid) is None
        ):
            warnings.append(
                f"MUX_SIGNING_KEY {self._fallback.kid} is not in the keyring and is ignored; "
                "the keyring's active key signs"
            )
        return warnings

    def refresh(self, force: bool = False) -> bool:
        """Load the keyring if its version changed. Returns True when a new version was applied.

        Raises KeyringUnavailableError, and KeyringDecryptError or KeyringConfigError for a
        keyring this process cannot use.
        """
        with self._refresh_lock:
            version = self.store.current_version()
            if not force and version == self._snapshot.version:
                self._unavailable_since = None
                return False
            state = self.store.read()
            self._unavailable_since = None
            regression = self._describe_regression(state)
            if regression is not None:
                return self._handle_regression(state, regression)
            self._apply(state)
            self._check_active_not_retired(state)
            return True

    def close(self) -> None:
        """Stop this process's watcher thread and wait for it to end.

        Waiting matters because a watcher still running after close could find the keyring gone
        (for example when the next owner deletes it) and write its old snapshot back.
        """
        self._stop.set()
        watcher = self._watcher
        if watcher is not None and watcher is not threading.current_thread() and self._watcher_pid == os.getpid():
            watcher.join(timeout=WATCHER_JOIN_TIMEOUT_SECONDS)

    def _usable_fallback(self) -> SigningKey:
        fallback = self._fallback_or_none()
        if fallback is not None:
            return fallback
        if self._fallback is None:
            raise NoSigningKeyError("the keyring is empty and no MUX_SIGNING_KEY is set")
        raise NoSigningKeyError(
            f"the keyring is empty, and MUX_SIGNING_KEY {self._fallback.kid} is not used because "
            "the keyring held keys before or revoked it: restore the keyring or run "
            "`playback-gateway keys rotate`"
        )

    def _fallback_or_none(self) -> SigningKey | None:
        """Return the fallback key while it may sign: never once this process saw the keyring
        hold keys, and never a key the keyring revoked or removed."""
        if self._fallback is None or self._ever_held_keys or self._fallback.kid in self._retired_kids:
            return None
        return self._fallback

    def _describe_regression(self, state: KeyringState) -> str | None:
        """Return why `state` cannot follow the loaded keyring, or None when it can."""
        last = self._last_good
        if last is None:
            return None
        if state.version < last.version:
            return (
                f"the keyring in {self.store.where} went back from version {last.version} to "
                f"{state.version}"
            )
        # Every write raises the version, so an empty keyring at the same version was not written
        # by a gateway: its document was deleted or evicted.
        if last.keys and not state.keys and state.version <= last.version:
            return f"the keyring in {self.store.where} lost all its keys at version {state.version}"
        return None

    def _handle_regression(self, state: KeyringState, regression: str) -> bool:
        """Keep the last good snapshot in force and try to write it back. Returns True when restored."""
        assert self._last_good is not None
        if self._regression is None:
            KEYRING_REGRESSIONS.labels("detected").inc()
        self._regression = (
            f"{regression}, so it was lost in storage (Redis restarted without persistence, an "
            "eviction or FLUSHALL); this process signs with the keys it loaded before and writes "
            "them back. Give Redis persistence (AOF or RDB) and maxmemory-policy noeviction"
        )
        self._log_regression(state)

        self._share_retired_kids()
        restored = self._restore(self._last_good)
        if restored is None:
            return False
        self._regression = None
        self._regression_logged_at = None
        self._retired_active = None  # the restore checked that its active key is not retired
        self._apply(restored)
        return True

    def _log_regression(self, state: KeyringState) -> None:
        # Logged at most once a minute per process: the watcher finds the loss every few seconds.
        now = time.monotonic()
        last_logged = self._regression_logged_at
        if last_logged is not None and now - last_logged < REGRESSION_LOG_INTERVAL_SECONDS:
            return
        self._regression_logged_at = now
        assert self._last_good is not None
        log_event(
            logger, "keyring.regressed", logging.ERROR, where=self.store.where,
            loaded_version=self._last_good.version, stored_version=state.version,
            stored_keys=len(state.keys), loaded_keys=len(self._last_good.keys),
        )

    def _check_active_not_retired(self, state: KeyringState) -> None:
        """Warn when `state` signs with a key an earlier write retired: nothing older than this
        process noticed the loss, for example a replica that started after Redis was rolled back."""
        active = state.active()
        if active is None:
            self._retired_active = None
            return
        try:
            retired = self.store.retired_kids()
        except KeyringUnavailableError as error:
            # The next change check looks again; signing goes on with the loaded keyring.
            log_event(logger, "keyring.refresh_failed", logging.WARNING, error=error.message)
            return
        self._retired_active = active.kid if active.kid in retired else None
        if self._retired_active is not None:
            log_event(logger, "keyring.active_key_retired", logging.ERROR, kid=active.kid, version=state.version)

    def _share_retired_kids(self) -> None:
        """Add the keys this process saw retired to the store's retired key ids.

        A storage rollback also rolls back those ids, and a process that loaded the old keyring
        checks them before it writes its out-of-date copy back.
        """
        try:
            self.store.record_retired(set(self._retired_kids))
        except KeyringUnavailableError as error:
            log_event(logger, "keyring.restore_failed", logging.ERROR, error=error.message)

    def _restore(self, snapshot: KeyringState) -> KeyringState | None:
        """Write `snapshot` back when `_restorable` allows it over the stored keyring.

        Runs under the rotation lock, so it never races a rotation, and compare-and-set, so it
        never overwrites a keyring another process wrote meanwhile. Returns the stored state,
        or None when it did not write.
        """
        actor = f"keyring-provider:{os.getpid()}"
        written: list[bool] = []

        outdated: list[str] = []

        def restore_if_allowed(current: KeyringState) -> KeyringState | None:
            written.clear()
            outdated.clear()
            retired = self._retired_kids | self.store.retired_kids()
            merged = _without_retired(snapshot, retired)
            if merged is None:
                outdated.append(snapshot.active().kid)  # type: ignore[union-attr]
                restored = None
            else:
                restored = _restorable(current, merged, retired)
            written.append(restored is not None)
            return restored

        try:
            with RotationLock(self.store, RESTORE_LOCK_TTL_SECONDS) as lock:
                lock.ensure_held()
                stored = self.store.update(restore_if_allowed, min_version=snapshot.version + 1)
        except (RotationInProgressError, LockLostError):
            return None  # the lock holder may be restoring already; the next check looks again
        except KeyringUnavailableError as error:
            log_event(logger, "keyring.restore_failed", logging.ERROR, error=error.message)
            return None

        if outdated:
            self._note_outdated(outdated)
            return None
        if written != [True]:
            # Another process restored or rotated meanwhile; the next check loads its keyring.
            return None
        KEYRING_REGRESSIONS.labels("restored").inc()
        audit(
            "keys.restore", actor=actor, result="ok", version=stored.version,
            key_ids=sorted(stored.held_ids()), where=self.store.where,
        )
        return stored

    def _note_outdated(self, kids: list[str]) -> None:
        """Extend the warning: this copy is older than what other processes wrote, so it stays unwritten."""
        self._regression = (
            f"{self._regression}. This process does not write back its copy (version "
            f"{self._snapshot.version}) because its active key {', '.join(kids)} was revoked or "
            "retired by another process, so the copy is out of date. It loads the keyring once a "
            "process with a newer copy writes it back"
        )

        # Logged at most once a minute per process, like the loss itself.
        now = time.monotonic()
        last_logged = self._outdated_logged_at
        if last_logged is not None and now - last_logged < REGRESSION_LOG_INTERVAL_SECONDS:
            return
        self._outdated_logged_at = now
        log_event(logger, "keyring.restore_skipped", logging.ERROR, version=self._snapshot.version, key_ids=kids)

    def _apply(self, state: KeyringState) -> None:
        if state.check is not None:
            self._cipher.verify_check_value(state.check, self.store.where)

        previous = self._snapshot
        keys: dict[str, SigningKey] = {}
        for record in state.keys:
            if record.state == "revoked" or record.sealed_key is None:
                continue
            held = previous.keys.get(record.kid)
            keys[record.kid] = held if held is not None else self._unseal(record)

        active_record = state.active()
        active = keys.get(active_record.kid) if active_record is not None else None
        self._snapshot = _Snapshot(state.version, state.keys, keys, active)
        self._last_good = state
        self._regression = None
        if state.keys:
            self._ever_held_keys = True
        self._retired_kids.update(record.kid for record in state.keys if record.state == "revoked")
        self._retired_kids.update(previous.keys.keys() - keys.keys())

        if previous.version >= 0 and state.version != previous.version:
            log_event(
                logger, "keyring.loaded", version=state.version,
                active=active.kid if active is not None else None, keys=len(keys),
            )
        self._update_gauges(active_record)
        for kid in previous.keys.keys() - keys.keys():
            self._notify_removed(kid)

    def _unseal(self, record: KeyRecord) -> SigningKey:
        assert record.sealed_key is not None
        pem = self._cipher.open(record.kid, record.sealed_key)
        try:
            private_key = parse_private_key(pem)
        except KeyMaterialError as error:
            raise KeyManagementError(f"keyring record {record.kid} contains an invalid key: {error}") from None
        return SigningKey(kid=record.kid, private_key=private_key, source=record.source)

    def _update_gauges(self, active_record: KeyRecord | None) -> None:
        snapshot = self._snapshot
        fallback = self._fallback_or_none()
        using_fallback = not snapshot.records and fallback is not None
        usable = snapshot.active is not None or using_fallback
        SIGNING_KEY_USABLE.set(1 if usable else 0)
        DEV_KEY_IN_USE.set(1 if using_fallback and fallback is not None and fallback.source == "dev" else 0)
        if active_record is not None and active_record.created_at is not None:
            ACTIVE_KEY_CREATED.set(active_record.created_at)

    def _notify_removed(self, kid: str) -> None:
        log_event(logger, "keyring.key_removed", kid=kid)
        for listener in self._listeners:
            try:
                listener(kid)
            except Exception as error:  # noqa: BLE001 - one failing listener must not stop the others
                log_event(logger, "keyring.listener_failed", logging.ERROR, kid=kid, error=type(error).__name__)

    def _note_unavailable(self, error: KeyringUnavailableError) -> None:
        if self._unavailable_since is None:
            self._unavailable_since = time.time()
            log_event(logger, "keyring.unavailable", logging.WARNING, error=str(error))
        if self._snapshot.version < 0:
            SIGNING_KEY_USABLE.set(0)

    def _ensure_watcher(self) -> None:
        pid = os.getpid()
        if self._watcher_pid == pid:
            return
        with self._start_lock:
            if self._watcher_pid == pid:
                return
            # After a fork the parent's thread does not exist in this process: start a new one.
            # The parent's watcher may have held the refresh lock at the moment of the fork, and
            # nothing in this process would ever release it, so the child takes a fresh lock.
            if self._watcher_pid is not None:
                self._refresh_lock = threading.Lock()
            self._stop = threading.Event()
            thread = threading.Thread(
                target=self.store.watch,
                args=(self._stop, self._refresh_interval, self._refresh_from_watcher),
                name="keyring-watcher",
                daemon=True,
            )
            thread.start()
            self._watcher = thread
            self._watcher_pid = pid

    def _refresh_from_watcher(self) -> None:
        if self._stop.is_set():
            return
        try:
            self.refresh()
        except KeyringUnavailableError as error:
            self._note_unavailable(error)
        except KeyManagementError as error:
            # A keyring this process cannot read keeps the previous snapshot in force.
            log_event(logger, "keyring.refresh_failed", logging.ERROR, error=str(error))


def _without_retired(snapshot: KeyringState, retired: set[str]) -> KeyringState | None:
    """Return `snapshot` without its retiring keys that are in `retired`, or None when its active
    key is in `retired`.

    A process that missed the last writes before a loss may hold a key retired since, which is
    dropped so it cannot come back. A copy whose active key was retired is older than what
    another process wrote: writing it back would sign with a key Mux may have deleted.
    """
    active = snapshot.active()
    if active is not None and active.kid in retired:
        return None
    kept = tuple(record for record in snapshot.keys if record.state == "revoked" or record.kid not in retired)
    return replace(snapshot, keys=kept)


def _restorable(current: KeyringState, snapshot: KeyringState, retired: set[str]) -> KeyringState | None:
    """Return `snapshot` when it may replace `current`, else None to leave the keyring alone.

    `retired` contains the keys known to be revoked or removed. An older keyring may hold such
    keys (a storage rollback brings back keys revoked since), and dropping them loses nothing.
    A key that is neither in the snapshot nor retired was written by someone who never saw the
    snapshot, for example a rotation after the loss, so the keyring that contains it is kept.
    """
    if not current.keys:
        return snapshot
    if current.version < snapshot.version and current.held_ids() - snapshot.held_ids() <= retired:
        return snapshot
    return None
