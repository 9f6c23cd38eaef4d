"""The keyring every replica shares: key records, pending-create markers and the rotation lock.

The whole keyring is one small JSON document with a version that grows by one on every write.
Redis writes are compare-and-set on that version and file writes hold an exclusive lock, so two
writers never lose each other's change.
`RedisKeyringStore` keeps it in Redis and announces each write on a pub/sub channel;
`FileKeyringStore` keeps it in a file under GATEWAY_DATA_DIR, replaced atomically under an
advisory lock. Private keys inside records are sealed (see `gateway.keys.sealing`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import socket
import tempfile
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.keys.errors import (
    KeyringConfigError,
    KeyringUnavailableError,
    LockLostError,
    RotationInProgressError,
)
from gateway.keys.provider import KeyInfo, KeyState
from gateway.observability.logging import log_event
from gateway.observability.metrics import REDIS_ERRORS
from gateway.redis_client import REDIS_ERRORS as REDIS_EXCEPTIONS
from gateway.redis_client import connect

KEYRING_FORMAT = 1
KEYRING_FILE = "keyring.json"
RETIRED_FILE = "keyring-retired.json"
REDIS_PREFIX = "pgw:{keyring}:"  # one hash tag, so every key lands in one Redis Cluster slot
REDIS_CHANNEL = "pgw:keyring:changes"
_UPDATE_ATTEMPTS = 20
# Retry-After for a held rotation lock. A rotation takes about a second, so the lock's remaining
# lifetime (up to its whole TTL) would tell callers to wait far longer than needed.
LOCK_RETRY_AFTER_SECONDS = 5
_STATES = ("active", "retiring", "revoked")

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class KeyRecord:
    """One key in the keyring.

    `ours` marks keys this gateway created through the System API; reconcile --fix deletes only
    those. A `revoked` record is a tombstone without its private key, kept until Mux confirms
    the deletion.
    """

    kid: str
    state: KeyState
    source: str
    ours: bool
    created_at: int | None = None
    retire_after: int | None = None
    revoked_at: int | None = None
    sealed_key: str | None = field(default=None, repr=False)

    def info(self) -> KeyInfo:
        return KeyInfo(self.kid, self.state, self.source, self.created_at, self.retire_after)

    def to_json(self) -> dict[str, Any]:
        return {
            "kid": self.kid,
            "state": self.state,
            "source": self.source,
            "ours": self.ours,
            "created_at": self.created_at,
            "retire_after": self.retire_after,
            "revoked_at": self.revoked_at,
            "sealed_key": self.sealed_key,
        }

    @classmethod
    def from_json(cls, item: Any, where: str) -> KeyRecord:
        if not isinstance(item, dict) or not isinstance(item.get("kid"), str):
            raise KeyringConfigError(f"the keyring in {where} has a key record without a kid")
        if item.get("state") not in _STATES:
            raise KeyringConfigError(
                f"the keyring in {where} has key {item['kid']} in unknown state {item.get('state')!r}"
            )
        return cls(
            kid=item["kid"],
            state=item["state"],
            source=str(item.get("source", "mux")),
            ours=bool(item.get("ours", False)),
            created_at=_optional_int(item.get("created_at")),
            retire_after=_optional_int(item.get("retire_after")),
            revoked_at=_optional_int(item.get("revoked_at")),
            sealed_key=item.get("sealed_key") if isinstance(item.get("sealed_key"), str) else None,
        )


@dataclass(frozen=True)
class CreateIntent:
    """A marker written before asking Mux to create a key.

    If the create's response is lost or the process dies before storing the key, Mux may have a
    key that no keyring contains. Keys that Mux created between `started_at` and the end of the window, and
    that the keyring does not hold, are that key. The window ends at `ended_at` when the creator
    saw its call end, else at `deadline`, the latest moment its call could still have run.
    """

    id: str
    actor: str
    started_at: int
    deadline: int
    ended_at: int | None = None

    @property
    def window_end(self) -> int:
        return self.ended_at if self.ended_at is not None else self.deadline

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, item: Any, where: str) -> CreateIntent:
        try:
            return cls(
                id=str(item["id"]),
                actor=str(item["actor"]),
                started_at=int(item["started_at"]),
                deadline=int(item["deadline"]),
                ended_at=_optional_int(item.get("ended_at")),
            )
        except (KeyError, TypeError, ValueError):
            raise KeyringConfigError(f"the keyring in {where} has an invalid create marker") from None


@dataclass(frozen=True)
class KeyringState:
    """One version of the keyring document."""

    version: int = 0
    keys: tuple[KeyRecord, ...] = ()
    intents: tuple[CreateIntent, ...] = ()
    check: str | None = field(default=None, repr=False)

    def active(self) -> KeyRecord | None:
        return next((record for record in self.keys if record.state == "active"), None)

    def find(self, kid: str) -> KeyRecord | None:
        return next((record for record in self.keys if record.kid == kid), None)

    def held_ids(self) -> set[str]:
        return {record.kid for record in self.keys}

    def without_key(self, kid: str) -> KeyringState:
        return dataclasses.replace(self, keys=tuple(r for r in self.keys if r.kid != kid))

    def with_key(self, record: KeyRecord) -> KeyringState:
        """Return the state with `record` added, or replacing the record of the same kid."""
        others = tuple(r for r in self.keys if r.kid != record.kid)
        return dataclasses.replace(self, keys=(*others, record))

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": KEYRING_FORMAT,
                "version": self.version,
                "check": self.check,
                "keys": [record.to_json() for record in self.keys],
                "intents": [intent.to_json() for intent in self.intents],
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | bytes, where: str) -> KeyringState:
        try:
            document = json.loads(text)
        except ValueError:
            raise KeyringConfigError(f"the keyring in {where} is not valid JSON") from None
        if not isinstance(document, dict) or document.get("format") != KEYRING_FORMAT:
            raise KeyringConfigError(
                f"the keyring in {where} has an unknown format; this gateway reads format {KEYRING_FORMAT}"
            )
        return cls(
            version=int(document.get("version", 0)),
            keys=tuple(KeyRecord.from_json(item, where) for item in document.get("keys") or []),
            intents=tuple(CreateIntent.from_json(item, where) for item in document.get("intents") or []),
            check=document.get("check") if isinstance(document.get("check"), str) else None,
        )


def retired_by(current: KeyringState, stored: KeyringState) -> set[str]:
    """Return the key ids that the write of `stored` over `current` revokes or removes."""
    revoked = {record.kid for record in stored.keys if record.state == "revoked"}
    return revoked | (current.held_ids() - stored.held_ids())


def _optional_int(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    return int(value)


Change = Callable[[KeyringState], "KeyringState | None"]


class KeyringStore(ABC):
    """Storage of the keyring. Every method raises KeyringUnavailableError when storage fails.

    Next to the keyring each store keeps the set of retired key ids: every key a write revoked or
    removed. It lives apart from the keyring document and only grows, so it outlasts a lost or
    rolled-back keyring and shows a process that its copy of the keyring is out of date.
    """

    where: str

    @abstractmethod
    def read(self) -> KeyringState:
        """Return the current keyring."""

    @abstractmethod
    def current_version(self) -> int:
        """Return the current version cheaply, for the periodic change check."""

    @abstractmethod
    def update(self, change: Change, *, min_version: int = 0) -> KeyringState:
        """Apply `change` to the current state and store the result with version + 1.

        The stored version is at least `min_version`, so a keyring restored after Redis lost it
        never reuses a version that replicas have already loaded. `change` returns None to leave
        the keyring as it is. It may run more than once when another writer got in first, so it
        must not have side effects. The write adds `retired_by(current, stored)` to the retired
        key ids in the same atomic step.
        """

    @abstractmethod
    def retired_kids(self) -> set[str]:
        """Return the ids of every key that a write revoked or removed."""

    @abstractmethod
    def record_retired(self, kids: set[str]) -> None:
        """Add `kids` to the retired key ids, for example after a rollback of the storage lost them."""

    @abstractmethod
    def acquire_lock(self, owner: str, ttl_seconds: int) -> None:
        """Take the rotation lock or raise RotationInProgressError with a retry_after."""

    @abstractmethod
    def extend_lock(self, owner: str, ttl_seconds: int) -> bool:
        """Push the lock's expiry out; False when `owner` no longer holds it."""

    @abstractmethod
    def release_lock(self, owner: str) -> None:
        """Drop the lock if `owner` still holds it."""

    @abstractmethod
    def watch(self, stop: threading.Event, interval: float, on_change: Callable[[], None]) -> None:
        """Call `on_change` when the keyring may have changed and at least every `interval` seconds,
        until `stop` is set."""

    def close(self) -> None:  # noqa: B027 - optional hook, most stores hold nothing to close
        """Release connections."""


class RotationLock:
    """The lock that lets one process at a time change keys. It expires, so a crashed holder
    blocks others for at most `ttl_seconds`; the holder extends it before every slow step."""

    def __init__(self, store: KeyringStore, ttl_seconds: int) -> None:
        self._store = store
        self._ttl = ttl_seconds
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"

    def __enter__(self) -> RotationLock:
        self._store.acquire_lock(self.owner, self._ttl)
        return self

    def ensure_held(self) -> None:
        """Raise LockLostError if the lock expired, before a step another holder must not race."""
        if not self._store.extend_lock(self.owner, self._ttl):
            raise LockLostError(
                "the rotation lock expired before this operation finished, so it stopped; the "
                "next rotate or reconcile repairs what was left"
            )

    def __exit__(self, *exc_info: object) -> None:
        try:
            self._store.release_lock(self.owner)
        except KeyringUnavailableError as error:
            # The lock expires by itself, so the operation's own result is kept.
            log_event(logger, "keyring.lock_release_failed", logging.WARNING, error=str(error))


class RedisKeyringStore(KeyringStore):
    """The keyring in Redis: a JSON document, its version, the lock, and a change channel."""

    # Compare-and-set: write the document only if the version is still the one that was read.
    # When only the version key was lost, the document's own version is the one `read` returned.
    # ARGV[5] onwards are the key ids that this write retires.
    _CAS_SCRIPT = """
local current = redis.call('GET', KEYS[2])
if not current then
  local document = redis.call('GET', KEYS[1])
  current = '0'
  if document then
    local version = cjson.decode(document)['version']
    if type(version) == 'number' then current = string.format('%d', version) end
  end
end
if current ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('SET', KEYS[2], ARGV[3])
if #ARGV > 4 then redis.call('SADD', KEYS[3], unpack(ARGV, 5)) end
redis.call('PUBLISH', ARGV[4], ARGV[3])
return 1
"""
    _EXTEND_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
    _RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

    def __init__(self, url: str, *, client: Any = None) -> None:
        self.where = "Redis (GATEWAY_REDIS_URL)"
        # Pub/sub and lock calls wait on the network, so they get more time than cache lookups.
        self._redis = client if client is not None else connect(url, socket_timeout=2.0)
        self._state_key = REDIS_PREFIX + "state"
        self._version_key = REDIS_PREFIX + "version"
        self._lock_key = REDIS_PREFIX + "lock"
        self._retired_key = REDIS_PREFIX + "retired"
        self._last_error_logged = 0.0

    def __repr__(self) -> str:
        return "RedisKeyringStore()"

    def read(self) -> KeyringState:
        with self._errors("read"):
            raw, raw_version = self._redis.mget(self._state_key, self._version_key)
        if raw is not None:
            return KeyringState.from_json(raw, self.where)
        # The document can be gone while its version key is still there (evicted, or deleted by
        # hand). An empty state at that version keeps compare-and-set writes possible.
        return KeyringState(version=int(raw_version) if raw_version is not None else 0)

    def current_version(self) -> int:
        """Return the stored version, or 0 when the keyring document is missing.

        Reporting 0 for a missing document makes every provider re-read the keyring when only
        the document was lost, so it notices the loss. A document without its version key
        reports the document's own version, as `read` and compare-and-set writes use it.
        """
        with self._errors("version"):
            pipeline = self._redis.pipeline(transaction=False)
            pipeline.get(self._version_key)
            pipeline.exists(self._state_key)
            raw, state_exists = pipeline.execute()
        if not state_exists:
            return 0
        if raw is None:
            return self.read().version
        return int(raw)

    def update(self, change: Change, *, min_version: int = 0) -> KeyringState:
        for _ in range(_UPDATE_ATTEMPTS):
            current = self.read()
            proposed = change(current)
            if proposed is None:
                return current
            stored = dataclasses.replace(proposed, version=max(current.version + 1, min_version))
            retired = sorted(retired_by(current, stored))
            with self._errors("update"):
                written = self._redis.eval(
                    self._CAS_SCRIPT, 3, self._state_key, self._version_key, self._retired_key,
                    str(current.version), stored.to_json(), str(stored.version), REDIS_CHANNEL,
                    *retired,
                )
            if written == 1:
                return stored
        raise KeyringUnavailableError(
            f"the keyring changed under this writer {_UPDATE_ATTEMPTS} times in a row; retry",
            retry_after=1,
        )

    def retired_kids(self) -> set[str]:
        with self._errors("read"):
            members = self._redis.smembers(self._retired_key)
        return {member.decode() if isinstance(member, bytes) else str(member) for member in members}

    def record_retired(self, kids: set[str]) -> None:
        if not kids:
            return
        with self._errors("update"):
            self._redis.sadd(self._retired_key, *sorted(kids))

    def acquire_lock(self, owner: str, ttl_seconds: int) -> None:
        with self._errors("lock"):
            taken = self._redis.set(self._lock_key, owner, nx=True, px=ttl_seconds * 1000)
        if taken:
            return
        raise RotationInProgressError(
            "another gateway process is changing keys right now; retry when it has finished",
            retry_after=LOCK_RETRY_AFTER_SECONDS,
        )

    def extend_lock(self, owner: str, ttl_seconds: int) -> bool:
        with self._errors("lock"):
            return bool(self._redis.eval(self._EXTEND_SCRIPT, 1, self._lock_key, owner, ttl_seconds * 1000))

    def release_lock(self, owner: str) -> None:
        with self._errors("lock"):
            self._redis.eval(self._RELEASE_SCRIPT, 1, self._lock_key, owner)

    def watch(self, stop: threading.Event, interval: float, on_change: Callable[[], None]) -> None:
        while not stop.is_set():
            pubsub = None
            try:
                pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(REDIS_CHANNEL)
                # A change may have been published while no subscription existed.
                on_change()
                while not stop.is_set():
                    pubsub.get_message(timeout=interval)
                    on_change()
            except REDIS_EXCEPTIONS as error:
                self._count_error("watch", error)
                stop.wait(interval)
            except Exception as error:  # noqa: BLE001 - the watcher thread must outlive any one failure
                # redis-py raises AttributeError when a connection is closed under a blocked read.
                if not stop.is_set():
                    self._count_error("watch", error)
                stop.wait(interval)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(*REDIS_EXCEPTIONS):
                        pubsub.close()

    def close(self) -> None:
        with contextlib.suppress(*REDIS_EXCEPTIONS):
            self._redis.close()

    @contextlib.contextmanager
    def _errors(self, operation: str) -> Iterator[None]:
        try:
            yield
        except REDIS_EXCEPTIONS as error:
            self._count_error(operation, error)
            raise KeyringUnavailableError(
                f"the keyring in Redis is unavailable ({type(error).__name__} during {operation}); "
                "retry when Redis is reachable",
                retry_after=5,
            ) from None

    def _count_error(self, operation: str, error: Exception) -> None:
        REDIS_ERRORS.labels("keyring").inc()
        # Logged at most every 10 s: a Redis outage would otherwise flood the log.
        now = time.monotonic()
        if now - self._last_error_logged >= 10.0:
            self._last_error_logged = now
            log_event(
                logger, "keyring.redis_error", logging.WARNING,
                operation=operation, error=type(error).__name__,
            )


class FileKeyringStore(KeyringStore):
    """The keyring in `<data_dir>/keyring.json`, for one machine without Redis.

    Every change and the rotation lock are serialized by flock on `keyring.lock`, and the file is
    replaced by rename, so readers never see half a document. Replicas on other machines cannot
    share it: use Redis for those.
    """

    def __init__(self, data_dir: Path) -> None:
        self._dir = data_dir
        self.path = data_dir / KEYRING_FILE
        self._retired_path = data_dir / RETIRED_FILE
        self._mutex_path = data_dir / "keyring.lock"
        self._lock_path = data_dir / "rotation.lock"
        self.where = str(self.path)
        self._cached_signature: tuple[int, int, int] | None = None
        self._cached_version = 0

    def __repr__(self) -> str:
        return f"FileKeyringStore({str(self.path)!r})"

    def read(self) -> KeyringState:
        try:
            text = self.path.read_bytes()
        except FileNotFoundError:
            return KeyringState()
        except OSError as error:
            raise KeyringUnavailableError(
                f"the keyring file {self.path} cannot be read: {error.strerror}", retry_after=5
            ) from None
        return KeyringState.from_json(text, self.where)

    def current_version(self) -> int:
        signature = self._signature()
        if signature != self._cached_signature:
            self._cached_version = self.read().version
            self._cached_signature = signature
        return self._cached_version

    def update(self, change: Change, *, min_version: int = 0) -> KeyringState:
        with self._mutex():
            current = self.read()
            proposed = change(current)
            if proposed is None:
                return current
            stored = dataclasses.replace(proposed, version=max(current.version + 1, min_version))
            # Retired ids first: a crash between the two writes then leaves an extra retired id
            # for a key still in the keyring. At worst that key is active, so providers warn
            # about it and do not write back a copy that signs with it.
            self._add_retired(retired_by(current, stored))
            self._write_atomically(self.path, stored.to_json().encode())
            return stored

    def retired_kids(self) -> set[str]:
        try:
            text = self._retired_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return set()
        except OSError as error:
            raise KeyringUnavailableError(
                f"the retired key file {self._retired_path} cannot be read: {error.strerror}", retry_after=5
            ) from None
        try:
            document = json.loads(text)
        except ValueError:
            raise KeyringConfigError(f"the retired key file {self._retired_path} is not valid JSON") from None
        kids = document.get("retired") if isinstance(document, dict) else None
        if not isinstance(kids, list) or not all(isinstance(kid, str) for kid in kids):
            raise KeyringConfigError(
                f"the retired key file {self._retired_path} must hold {{\"retired\": [key ids]}}"
            )
        return set(kids)

    def record_retired(self, kids: set[str]) -> None:
        if not kids:
            return
        with self._mutex():
            self._add_retired(kids)

    def _add_retired(self, kids: set[str]) -> None:
        known = self.retired_kids()
        if kids <= known:
            return
        document = json.dumps({"retired": sorted(known | kids)}).encode()
        self._write_atomically(self._retired_path, document)

    def acquire_lock(self, owner: str, ttl_seconds: int) -> None:
        with self._mutex():
            holder, expires_at = self._read_lock()
            now = time.time()
            if holder is not None and holder != owner and expires_at > now:
                raise RotationInProgressError(
                    "another gateway process is changing keys right now; retry when it has finished",
                    retry_after=LOCK_RETRY_AFTER_SECONDS,
                )
            self._write_lock(owner, now + ttl_seconds)

    def extend_lock(self, owner: str, ttl_seconds: int) -> bool:
        with self._mutex():
            holder, expires_at = self._read_lock()
            if holder != owner or expires_at <= time.time():
                return False
            self._write_lock(owner, time.time() + ttl_seconds)
            return True

    def release_lock(self, owner: str) -> None:
        with self._mutex():
            holder, _ = self._read_lock()
            if holder == owner:
                self._lock_path.unlink(missing_ok=True)

    def watch(self, stop: threading.Event, interval: float, on_change: Callable[[], None]) -> None:
        on_change()
        while not stop.wait(interval):
            on_change()

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return None
        except OSError as error:
            raise KeyringUnavailableError(
                f"the keyring file {self.path} cannot be read: {error.strerror}", retry_after=5
            ) from None
        return stat.st_ino, stat.st_mtime_ns, stat.st_size

    @contextlib.contextmanager
    def _mutex(self) -> Iterator[None]:
        try:
            self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            handle = self._mutex_path.open("a+")
        except OSError as error:
            raise KeyringUnavailableError(
                f"the keyring lock file {self._mutex_path} cannot be opened: {error.strerror}",
                retry_after=5,
            ) from None
        with handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def _read_lock(self) -> tuple[str | None, float]:
        try:
            document = json.loads(self._lock_path.read_text(encoding="utf-8"))
            return str(document["owner"]), float(document["expires_at"])
        except FileNotFoundError:
            return None, 0.0
        except (OSError, ValueError, KeyError, TypeError):
            # A damaged lock file protects nothing: treat the lock as free.
            return None, 0.0

    def _write_lock(self, owner: str, expires_at: float) -> None:
        document = json.dumps({"owner": owner, "expires_at": expires_at}).encode()
        self._write_atomically(self._lock_path, document)

    def _write_atomically(self, path: Path, content: bytes) -> None:
        try:
            fd, temporary = tempfile.mkstemp(dir=self._dir, prefix=f".{path.name}.")
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(content)
                    handle.flush()
                    os.fsync(handle.fileno())
                Path(temporary).chmod(0o600)
                Path(temporary).replace(path)
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
            directory = os.open(self._dir, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        except OSError as error:
            raise KeyringUnavailableError(
                f"the keyring file {path} cannot be written: {error.strerror}", retry_after=5
            ) from None
