"""Service clients from GATEWAY_CLIENTS_FILE: API keys stored as SHA-256, scopes per client."""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gateway.auth.principal import Client
from gateway.observability.logging import audit, log_event
from gateway.policy.lastgood import LastGoodCopy, LastGoodError, LastGoodFiles
from gateway.reloading import ReloadThread

SCOPES: frozenset[str] = frozenset(
    {"tokens:mint", "viewer:assert", "keys:read", "keys:rotate", "keys:revoke"}
)
API_KEY_PREFIX = "pgw_"

_CLIENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_RELOAD_INTERVAL_SECONDS = 1.0
# Reads of a file that changes during every one of them give up until the next check.
_MAX_READ_ATTEMPTS = 3

FileSignature = tuple[int, int] | None

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

    Requests check the file at most once a second. A daemon thread checks it every second as
    well, so a worker without requests does not keep clients that were removed long ago. The
    thread starts in the process that serves: on the first request, or on the first read of
    `.clients` in a process forked after construction (a gunicorn worker), never in the process
    that built the registry.

    With `last_good_dir`, every valid file loaded is copied there, and a process that rejects a
    broken file moves to that copy when it differs from its own clients. So a worker that never
    saw the last valid edit, or was forked from a master that loaded an older file, still drops
    a removed key.
    """

    def __init__(
        self, path: Path | None, *, last_good_dir: Path | None = None, reload_in_background: bool = True
    ) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._signature: FileSignature = None
        self._checked_at = 0.0
        self._clients: tuple[Client, ...] = ()
        self._digest: str | None = None
        self._rejected = False
        self._last_good_error: str | None = None
        self._last_good = LastGoodCopy(last_good_dir, kind="clients") if last_good_dir is not None else None
        self._reload_thread = ReloadThread(
            self, name="clients-reload", interval=_RELOAD_INTERVAL_SECONDS,
            failure_event="clients.reload_failed", enabled=reload_in_background,
        )
        if path is not None:
            loaded = _read_clients_file(path)
            self._apply(loaded)
            self._share_last_good(path, loaded)

    @property
    def clients(self) -> tuple[Client, ...]:
        if self._reload_thread.in_forked_process:
            self._ensure_watcher()
        return self._clients

    def start_reload_thread(self) -> None:
        """Start this process's reload thread now, for a gunicorn worker that may get no requests.

        Call it in the worker after the fork, never in the process that forks: the thread would
        not survive the fork, and the master has no use for the clients.
        """
        if self._path is not None:
            self._ensure_watcher()

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
        """Reload the file if it changed; checks at most once a second. Returns True on reload.

        A rejected file also counts as a reload when this process moves to the shared last-good
        copy instead.
        """
        if self._path is None:
            return False
        self._ensure_watcher()
        if time.monotonic() - self._checked_at < _RELOAD_INTERVAL_SECONDS:
            return False

        with self._lock:
            self._checked_at = time.monotonic()
            return self._reload_if_changed(self._path)

    def _reload_if_changed(self, path: Path) -> bool:
        signature = file_signature(path)
        if signature == self._signature:
            return self._rejected and self._adopt_last_good(path)

        try:
            loaded = _read_clients_file(path)
        except ClientsFileError as error:
            # Keep serving the previous clients, and do not read the file again until it changes.
            self._signature = signature
            self._rejected = True
            audit("clients.reload", actor="file", result="rejected", reason=str(error))
            return self._adopt_last_good(path)

        self._rejected = False
        self._share_last_good(path, loaded)
        changed = loaded.digest != self._digest
        self._apply(loaded)
        if changed:
            audit("clients.reload", actor="file", result="loaded", clients=len(loaded.clients), source="file")
        return changed

    def _apply(self, loaded: _LoadedClients) -> None:
        self._clients = loaded.clients
        self._digest = loaded.digest
        self._signature = loaded.signature

    def _share_last_good(self, path: Path, loaded: _LoadedClients) -> None:
        """Copy a valid file to the shared folder, if the file still contains what was loaded."""
        if self._last_good is None:
            return
        copy = LastGoodFiles(version=loaded.digest, path=str(path), sources=((str(path), loaded.data),))
        try:
            self._last_good.write_if_current(copy, lambda: file_signature(path) == loaded.signature)
        except LastGoodError as error:
            log_event(logger, "clients.last_good_failed", logging.ERROR, error=str(error))

    def _adopt_last_good(self, path: Path) -> bool:
        """Put the shared copy in force when it differs from the clients in force. Returns whether it did."""
        if self._last_good is None:
            return False
        try:
            if self._last_good.read_version(path) in (None, self._digest):
                return False
            copy = self._last_good.read(path)
            if copy is None or len(copy.sources) != 1:
                return False
            clients = _parse_copy(copy)
        except (LastGoodError, ClientsFileError) as error:
            self._log_last_good_failure(str(error))
            return False

        if clients is None:
            self._log_last_good_failure(f"the clients copy in {self._last_good.directory} does not match its digest")
            return False
        self._clients = clients
        self._digest = copy.version
        audit("clients.reload", actor="file", result="loaded", clients=len(clients), source="last-good copy")
        return True

    def _log_last_good_failure(self, message: str) -> None:
        # The copy is looked at on every check while the file stays broken, so log each failure once.
        if message != self._last_good_error:
            log_event(logger, "clients.last_good_failed", logging.ERROR, error=message[:300])
        self._last_good_error = message

    def _ensure_watcher(self) -> None:
        if self._path is not None:
            self._reload_thread.ensure_started(on_new_process=self._replace_lock)

    def _replace_lock(self) -> None:
        self._lock = threading.Lock()


@dataclass(frozen=True)
class _LoadedClients:
    """A valid clients file: its clients, its bytes with their SHA-256, and its signature when read."""

    clients: tuple[Client, ...]
    data: bytes
    digest: str
    signature: FileSignature


def _read_clients_file(path: Path) -> _LoadedClients:
    """Read and parse the clients file. Raises ClientsFileError.

    The signature is taken before and after reading, and the read repeated when they differ:
    a signature recorded after an edit that landed mid-read would belong to content never
    parsed, and the edit would never be loaded.
    """
    for _ in range(_MAX_READ_ATTEMPTS):
        before = file_signature(path)
        data = _read_bytes(path)
        if file_signature(path) == before:
            break
    else:
        # The file kept changing: the next check finds a new signature and reads it again.
        before = None

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ClientsFileError(f"{path}: invalid UTF-8; save the file as UTF-8") from None
    clients = parse_clients(text, source=str(path))
    log_event(logger, "clients.loaded", path=str(path), clients=len(clients))
    return _LoadedClients(clients=clients, data=data, digest=hashlib.sha256(data).hexdigest(), signature=before)


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise ClientsFileError(f"GATEWAY_CLIENTS_FILE {path} cannot be read: {error.strerror}") from None


def _parse_copy(copy: LastGoodFiles) -> tuple[Client, ...] | None:
    """Return the clients in the shared copy, or None when its bytes do not match its digest."""
    _, data = copy.sources[0]
    if hashlib.sha256(data).hexdigest() != copy.version:
        return None
    return parse_clients(data.decode("utf-8", errors="replace"), source=f"last-good copy of {copy.path}")


def file_signature(path: Path) -> FileSignature:
    """Return the file's (mtime in ns, size), or None when it cannot be read."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size
