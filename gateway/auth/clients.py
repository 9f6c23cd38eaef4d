"""Service clients from GATEWAY_CLIENTS_FILE: API keys stored as SHA-256, scopes per client."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import yaml

from gateway.auth.principal import Client
from gateway.observability.logging import audit, log_event

SCOPES: frozenset[str] = frozenset(
    {"tokens:mint", "viewer:assert", "keys:read", "keys:rotate", "keys:revoke"}
)
API_KEY_PREFIX = "pgw_"

_CLIENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_RELOAD_INTERVAL_SECONDS = 1.0

logger = logging.getLogger(__name__)


class ClientsFileError(ValueError):
    """The clients file cannot be used. The message names the file, entry and fix."""


def new_api_key() -> tuple[str, str]:
    """Return a fresh random API key and its SHA-256 hex digest for the clients file."""
    key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    return key, hash_api_key(key)


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def parse_clients(text: str, source: str = "clients file") -> tuple[Client, ...]:
    """Parse and validate clients YAML. Raises ClientsFileError."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ClientsFileError(f"{source}: invalid YAML ({error.__class__.__name__})") from None

    if document is None:
        return ()
    if not isinstance(document, dict) or set(document) - {"clients"}:
        raise ClientsFileError(f"{source}: expected a mapping with the single key 'clients'")

    entries = document.get("clients") or []
    if not isinstance(entries, list):
        raise ClientsFileError(f"{source}: 'clients' must be a list")

    clients: list[Client] = []
    seen_ids: set[str] = set()
    seen_hashes: set[str] = set()
    for index, entry in enumerate(entries):
        client = _parse_entry(entry, f"{source}: clients[{index}]")
        if client.id in seen_ids:
            raise ClientsFileError(f"{source}: client id {client.id!r} appears twice")
        if client.key_sha256 in seen_hashes:
            raise ClientsFileError(f"{source}: client {client.id!r} reuses another client's key")
        seen_ids.add(client.id)
        seen_hashes.add(client.key_sha256)
        clients.append(client)
    return tuple(clients)


def _parse_entry(entry: Any, where: str) -> Client:
    if not isinstance(entry, dict):
        raise ClientsFileError(f"{where}: expected a mapping with id, key_sha256 and scopes")

    unknown = set(entry) - {"id", "key_sha256", "scopes"}
    if unknown:
        raise ClientsFileError(f"{where}: unknown keys {sorted(unknown)}; allowed: id, key_sha256, scopes")

    client_id = entry.get("id")
    if not isinstance(client_id, str) or not _CLIENT_ID.match(client_id):
        raise ClientsFileError(
            f"{where}: id must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )

    digest = entry.get("key_sha256")
    if not isinstance(digest, str) or not _SHA256_HEX.match(digest.lower()):
        raise ClientsFileError(
            f"{where} ({client_id}): key_sha256 must be 64 hex characters; "
            "create one with `playback-gateway clients new-key`"
        )

    scopes = entry.get("scopes")
    if not isinstance(scopes, list) or not scopes or not all(isinstance(s, str) for s in scopes):
        raise ClientsFileError(f"{where} ({client_id}): scopes must be a non-empty list of strings")
    unknown_scopes = sorted(set(scopes) - SCOPES)
    if unknown_scopes:
        raise ClientsFileError(
            f"{where} ({client_id}): unknown scopes {unknown_scopes}; allowed: {sorted(SCOPES)}"
        )
    return Client(id=client_id, scopes=frozenset(scopes), key_sha256=digest.lower())


class ClientRegistry:
    """The clients file, reloaded when it changes. An invalid change keeps the previous clients.

    Requests check the file at most once a second. A daemon thread, started by the first check
    in each process (so every forked gunicorn worker gets its own), checks it every second as
    well, so a worker without requests does not keep clients that were removed long ago.
    """

    def __init__(self, path: Path | None, *, reload_in_background: bool = True) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._signature: tuple[int, int] | None = None
        self._checked_at = 0.0
        self._clients: tuple[Client, ...] = ()
        self._reload_in_background = reload_in_background
        self._watcher_pid: int | None = None
        self._watcher_start_lock = threading.Lock()
        if path is not None:
            self._clients = self._load(path)

    @property
    def clients(self) -> tuple[Client, ...]:
        return self._clients

    def authenticate(self, api_key: str) -> Client | None:
        """Return the client whose key hashes to `api_key`'s SHA-256, else None.

        Every entry is compared with hmac.compare_digest, so timing does not reveal which
        client's hash shares a prefix with the presented key's.
        """
        self.maybe_reload()
        presented = hash_api_key(api_key)
        found: Client | None = None
        for client in self._clients:
            if hmac.compare_digest(presented, client.key_sha256):
                found = client
        return found

    def maybe_reload(self) -> bool:
        """Reload the file if it changed; checks at most once a second. Returns True on reload."""
        if self._path is None:
            return False
        self._ensure_watcher()
        if time.monotonic() - self._checked_at < _RELOAD_INTERVAL_SECONDS:
            return False

        with self._lock:
            self._checked_at = time.monotonic()
            signature = self._file_signature(self._path)
            if signature == self._signature:
                return False
            try:
                self._clients = self._load(self._path)
            except ClientsFileError as error:
                # Keep serving the previous clients, and do not retry until the file changes again.
                self._signature = signature
                audit("clients.reload", actor="file", result="rejected", reason=str(error))
                return False
            audit("clients.reload", actor="file", result="loaded", clients=len(self._clients))
            return True

    def _ensure_watcher(self) -> None:
        pid = os.getpid()
        if self._watcher_pid == pid or not self._reload_in_background:
            return
        with self._watcher_start_lock:
            if self._watcher_pid == pid:
                return
            # A parent's thread may have held the reload lock at the moment of the fork, and
            # nothing in this process would ever release it, so a forked child takes a fresh lock.
            if self._watcher_pid is not None:
                self._lock = threading.Lock()
            thread = threading.Thread(
                target=_watch_clients_file, args=(weakref.ref(self),), name="clients-reload", daemon=True
            )
            thread.start()
            self._watcher_pid = pid

    def _load(self, path: Path) -> tuple[Client, ...]:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as error:
            raise ClientsFileError(
                f"GATEWAY_CLIENTS_FILE {path} cannot be read: {error.strerror}"
            ) from None
        self._signature = self._file_signature(path)
        clients = parse_clients(text, source=str(path))
        log_event(logger, "clients.loaded", path=str(path), clients=len(clients))
        return clients

    @staticmethod
    def _file_signature(path: Path) -> tuple[int, int] | None:
        try:
            stat = path.stat()
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size


def _watch_clients_file(registry_ref: weakref.ref[ClientRegistry]) -> None:
    """Check the clients file every second until the registry is garbage-collected."""
    while True:
        time.sleep(_RELOAD_INTERVAL_SECONDS)
        registry = registry_ref()
        if registry is None:
            return
        try:
            registry.maybe_reload()
        except Exception as error:  # noqa: BLE001 - the thread must keep running for later changes
            log_event(logger, "clients.reload_failed", logging.ERROR, error_type=type(error).__name__)
        del registry
