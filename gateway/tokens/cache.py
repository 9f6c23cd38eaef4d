"""Token cache: Redis when configured, in-process otherwise.

A cached token is served only while at least half of its lifetime remains, so a viewer never
gets a token about to expire. Entries are keyed by signing key id, lifetime and every claim but
`exp`: two viewers share a token only when their tokens would be identical anyway, and a new
active key makes every older entry unreachable.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any, Protocol

from gateway.observability.logging import log_event
from gateway.observability.metrics import CACHE_REQUESTS, REDIS_ERRORS
from gateway.redis_client import REDIS_ERRORS as REDIS_EXCEPTIONS
from gateway.redis_client import connect

KEY_PREFIX = "pgw:tok:"
_IN_PROCESS_MAX_ENTRIES = 50_000
_ERROR_LOG_INTERVAL_SECONDS = 30.0
# After a Redis failure, skip Redis this long so a dead server costs one timeout, not one per request.
_BREAKER_SECONDS = 1.0

logger = logging.getLogger(__name__)


def cache_key(kid: str, ttl: int, claims: Mapping[str, Any]) -> str:
    """Return the cache key for a token: kid, lifetime and every claim except `exp`."""
    material = {name: value for name, value in claims.items() if name != "exp"}
    digest = hashlib.sha256(
        json.dumps([ttl, material], sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()[:40]
    return f"{KEY_PREFIX}{kid}:{digest}"


class CacheBackend(Protocol):
    def get(self, key: str) -> str | None: ...

    def set(self, key: str, token: str, keep_seconds: int) -> None: ...

    def drop_prefix(self, prefix: str) -> int: ...


class InProcessBackend:
    """A bounded LRU dict of (token, valid-until) pairs, private to one worker process."""

    def __init__(self, max_entries: int = _IN_PROCESS_MAX_ENTRIES) -> None:
        self._entries: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._max_entries = max_entries
        self._lock = threading.Lock()

    def get(self, key: str) -> str | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry[1] <= time.time():
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return entry[0]

    def set(self, key: str, token: str, keep_seconds: int) -> None:
        with self._lock:
            self._entries[key] = (token, time.time() + keep_seconds)
            self._entries.move_to_end(key)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)

    def drop_prefix(self, prefix: str) -> int:
        with self._lock:
            doomed = [key for key in self._entries if key.startswith(prefix)]
            for key in doomed:
                del self._entries[key]
            return len(doomed)


class RedisBackend:
    """Entries shared by every worker and replica; Redis expires them at half-life."""

    def __init__(self, url: str) -> None:
        self._client = connect(url)

    def get(self, key: str) -> str | None:
        value = self._client.get(key)
        return value.decode() if isinstance(value, bytes) else value

    def set(self, key: str, token: str, keep_seconds: int) -> None:
        self._client.set(key, token, ex=max(1, keep_seconds))

    def drop_prefix(self, prefix: str) -> int:
        dropped = 0
        for key in self._client.scan_iter(match=prefix + "*", count=500):
            dropped += self._client.delete(key)
        return dropped


_HIT = CACHE_REQUESTS.labels(result="hit")
_MISS = CACHE_REQUESTS.labels(result="miss")
_ERROR = CACHE_REQUESTS.labels(result="error")

# How long a worker keeps a token from Redis in memory. Short, so that memory stays small.
_LOCAL_SECONDS = 30
_LOCAL_MAX_ENTRIES = 10_000


class TokenCache:
    """Get-or-sign with single flight: concurrent misses for one key sign once per process.

    With a shared backend (Redis), each worker also keeps recent tokens in memory, so a hot
    playback ID costs no Redis round trip. Revocation drops them; a rotation makes them
    unreachable because the signing key id is part of every key.
    """

    def __init__(self, backend: CacheBackend, *, component: str = "token_cache", local: bool = False) -> None:
        self._backend = backend
        self._local = InProcessBackend(_LOCAL_MAX_ENTRIES) if local else None
        self._component = component
        self._inflight: dict[str, Future[tuple[str, int]]] = {}
        self._inflight_lock = threading.Lock()
        self._bypass_until = 0.0
        self._last_error_log = 0.0

    def get_or_sign(self, key: str, ttl: int, expires_at: int, sign: Callable[[], str]) -> tuple[str, int]:
        """Return (token, its exp): a cached token with half its lifetime left, or a new one.

        `expires_at` is the exp that `sign` puts in a new token.
        """
        cached = self._lookup(key, ttl)
        if cached is not None:
            return cached

        with self._inflight_lock:
            future = self._inflight.get(key)
            leader = future is None
            if leader:
                future = Future()
                self._inflight[key] = future
        assert future is not None

        if not leader:
            return future.result()

        try:
            token = sign()
            future.set_result((token, expires_at))
        except BaseException as error:
            future.set_exception(error)
            raise
        finally:
            with self._inflight_lock:
                self._inflight.pop(key, None)

        self._store(key, f"{expires_at}.{token}", ttl // 2)
        return token, expires_at

    def drop_local_key_id(self, kid: str) -> None:
        """Forget this process's in-memory copies of tokens signed with `kid`.

        Every process calls this when it learns of a revocation. Only the process that ran the
        revocation also deletes the shared entries (drop_key_id), so Redis is scanned once.
        """
        if self._local is not None:
            self._local.drop_prefix(f"{KEY_PREFIX}{kid}:")

    def drop_key_id(self, kid: str) -> int:
        """Delete every cached token signed with `kid` (after a revocation). Returns the count."""
        if self._local is not None:
            self._local.drop_prefix(f"{KEY_PREFIX}{kid}:")
        try:
            return self._backend.drop_prefix(f"{KEY_PREFIX}{kid}:")
        except REDIS_EXCEPTIONS as error:
            self._record_error("drop", error)
            return 0

    def _lookup(self, key: str, ttl: int) -> tuple[str, int] | None:
        if self._local is not None:
            found = _usable(self._local.get(key), ttl)
            if found is not None:
                _HIT.inc()
                return found

        if time.monotonic() < self._bypass_until:
            _ERROR.inc()
            return None
        try:
            entry = self._backend.get(key)
        except REDIS_EXCEPTIONS as error:
            self._record_error("get", error)
            _ERROR.inc()
            return None

        found = _usable(entry, ttl)
        if found is None:
            _MISS.inc()
            return None
        _HIT.inc()
        if self._local is not None:
            self._keep_locally(key, entry, found[1], ttl)  # type: ignore[arg-type]
        return found

    def _keep_locally(self, key: str, value: str, exp: int, ttl: int) -> None:
        assert self._local is not None
        half_life_left = int(exp - ttl / 2 - time.time())
        if half_life_left >= 1:
            self._local.set(key, value, min(half_life_left, _LOCAL_SECONDS))

    def _store(self, key: str, value: str, keep_seconds: int) -> None:
        if self._local is not None and keep_seconds >= 1:
            self._local.set(key, value, min(keep_seconds, _LOCAL_SECONDS))
        if keep_seconds < 1 or time.monotonic() < self._bypass_until:
            return
        try:
            self._backend.set(key, value, keep_seconds)
        except REDIS_EXCEPTIONS as error:
            self._record_error("set", error)

    def _record_error(self, operation: str, error: BaseException) -> None:
        REDIS_ERRORS.labels(component=self._component).inc()
        self._bypass_until = time.monotonic() + _BREAKER_SECONDS
        now = time.monotonic()
        if now - self._last_error_log >= _ERROR_LOG_INTERVAL_SECONDS:
            self._last_error_log = now
            log_event(
                logger, "token_cache.redis_error", logging.WARNING,
                operation=operation, error=type(error).__name__,
                detail="minting continues without the cache until Redis answers again",
            )


def _usable(entry: str | None, ttl: int) -> tuple[str, int] | None:
    """Return (token, exp) from a stored `exp.token` value if half its lifetime remains."""
    if entry is None:
        return None
    exp_text, _, token = entry.partition(".")
    # Backends expire entries at half-life already; this check also covers clock drift.
    if exp_text.isdigit() and int(exp_text) - time.time() >= ttl / 2:
        return token, int(exp_text)
    return None


def build_token_cache(redis_url: str | None) -> TokenCache:
    """Return a Redis-backed cache (with a per-worker memory layer) when a URL is set, else an in-process one."""
    if redis_url:
        return TokenCache(RedisBackend(redis_url), local=True)
    return TokenCache(InProcessBackend())
