"""A KeyProvider backed by the shared keyring, kept current in every worker of every replica.

Signing reads an immutable snapshot, so it never waits on Redis or the file system. A daemon
thread, started on first use in each process (so gunicorn's forked workers each get their own),
refreshes the snapshot when a change is announced and at least every `refresh_interval` seconds.
Each private key is decrypted and parsed once per process, when its record first appears.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.keys.errors import KeyManagementError, KeyringUnavailableError
from gateway.keys.keyring import KeyRecord, KeyringState, KeyringStore
from gateway.keys.material import KeyMaterialError, SigningKey, parse_private_key
from gateway.keys.provider import DEV_KEY_WARNING, KeyInfo, NoSigningKeyError
from gateway.keys.sealing import KeyringCipher
from gateway.observability.logging import log_event
from gateway.observability.metrics import ACTIVE_KEY_CREATED, DEV_KEY_IN_USE, SIGNING_KEY_USABLE

REFRESH_INTERVAL_SECONDS = 2.0

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Snapshot:
    """What one keyring version means for signing. Replaced whole, never changed in place."""

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
        self._stop = threading.Event()
        self._start_lock = threading.Lock()

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
            if self._fallback is None:
                raise NoSigningKeyError("the keyring is empty and no MUX_SIGNING_KEY is set")
            return self._fallback
        if snapshot.active is None:
            raise NoSigningKeyError(
                "the keyring holds no active key: run `playback-gateway keys rotate`"
            )
        return snapshot.active

    def get(self, kid: str) -> SigningKey | None:
        self._ensure_watcher()
        snapshot = self._snapshot
        if snapshot.version >= 0 and not snapshot.records:
            return self._fallback if self._fallback is not None and self._fallback.kid == kid else None
        return snapshot.keys.get(kid)

    def infos(self) -> list[KeyInfo]:
        self._ensure_watcher()
        snapshot = self._snapshot
        if snapshot.version >= 0 and not snapshot.records and self._fallback is not None:
            return [KeyInfo(self._fallback.kid, "active", self._fallback.source)]
        order = {"active": 0, "retiring": 1, "revoked": 2}
        records = sorted(snapshot.records, key=lambda r: (order[r.state], -(r.created_at or 0), r.kid))
        return [record.info() for record in records]

    def warnings(self) -> list[str]:
        snapshot = self._snapshot
        warnings: list[str] = []
        if self._unavailable_since is not None:
            age = int(time.time() - self._unavailable_since)
            warnings.append(
                f"the keyring in {self.store.where} has been unreachable for {age} s; "
                "signing with the keys loaded before"
            )
        if snapshot.version >= 0 and not snapshot.records and self._fallback is not None:
            if self._fallback.source == "dev":
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
            self._apply(state)
            self._unavailable_since = None
            return True

    def close(self) -> None:
        """Stop this process's watcher thread."""
        self._stop.set()

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
            raise KeyManagementError(f"keyring record {record.kid} holds an unusable key: {error}") from None
        return SigningKey(kid=record.kid, private_key=private_key, source=record.source)

    def _update_gauges(self, active_record: KeyRecord | None) -> None:
        snapshot = self._snapshot
        using_fallback = not snapshot.records and self._fallback is not None
        usable = snapshot.active is not None or using_fallback
        SIGNING_KEY_USABLE.set(1 if usable else 0)
        DEV_KEY_IN_USE.set(1 if using_fallback and self._fallback is not None and self._fallback.source == "dev" else 0)
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
            self._watcher_pid = pid

    def _refresh_from_watcher(self) -> None:
        try:
            self.refresh()
        except KeyringUnavailableError as error:
            self._note_unavailable(error)
        except KeyManagementError as error:
            # A keyring this process cannot read keeps the previous snapshot in force.
            log_event(logger, "keyring.refresh_failed", logging.ERROR, error=str(error))
