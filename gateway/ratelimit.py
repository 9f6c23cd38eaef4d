"""Rate limits per viewer, per API client and per client IP, shared by replicas through Redis.

The algorithm is GCRA (the generic cell rate algorithm, a token bucket kept as one timestamp).
For a limit of COUNT per PERIOD, each request pushes the identity's "theoretical arrival time"
(TAT) forward by PERIOD/COUNT, and a request is allowed while the TAT stays within PERIOD of now.
A caller with an unused allowance can send COUNT requests at once and then one every
PERIOD/COUNT seconds. Fixed windows were rejected because they let 2 x COUNT through within
moments around a window boundary. A sliding log was rejected because it stores every request,
which is COUNT entries per viewer. GCRA stores one number per identity, expires it after at most
PERIOD, and gives an exact Retry-After.

With Redis, the check runs as one Lua script, so replicas never race, and it reads Redis's clock,
so replica clock skew does not matter. Without Redis the limiter lives in this process: each
gunicorn worker of each replica then enforces the full limit on its own.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.config import RateLimit
from gateway.observability.logging import log_event
from gateway.observability.metrics import RATE_LIMIT_ERRORS, RATE_LIMITED, REDIS_ERRORS
from gateway.redis_client import REDIS_ERRORS as REDIS_EXCEPTIONS
from gateway.redis_client import connect

KINDS = frozenset({"viewer", "client", "ip"})
KEY_PREFIX = "gateway:ratelimit"
ERROR_LOG_INTERVAL_SECONDS = 30.0
# After a failure Redis is not asked for this long, so a Redis that times out instead of
# refusing connections costs one timeout per second, not one per request.
REDIS_RETRY_INTERVAL_SECONDS = 1.0
MAX_LOCAL_IDENTITIES = 100_000

_MICROSECONDS = 1_000_000

logger = logging.getLogger(__name__)

# KEYS[1]: the identity's TAT in microseconds since the epoch of Redis's clock.
# ARGV: emission interval (us), capacity = COUNT x interval (us), cost (requests).
# Returns {allowed 0|1, retry after (us), remaining requests}.
_GCRA_SCRIPT = """
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local interval = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])

local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then
  tat = now
end

local new_tat = tat + cost * interval
if new_tat - now > capacity then
  local remaining = math.floor((capacity - (tat - now)) / interval)
  return {0, new_tat - now - capacity, remaining}
end

redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
return {1, 0, math.floor((capacity - (new_tat - now)) / interval)}
"""


@dataclass(frozen=True)
class RateLimitResult:
    """The outcome of one check. `limit` is 0 when no limit is configured for the kind.

    `retry_after` is in whole seconds (0 when allowed); `remaining` is how many more requests
    of cost 1 would be allowed right now.
    """

    allowed: bool
    retry_after: int
    limit: int
    remaining: int

    def headers(self) -> dict[str, str]:
        """Return the response headers for a rejected request: `Retry-After`."""
        return {} if self.allowed else {"Retry-After": str(self.retry_after)}


@dataclass(frozen=True)
class _Bucket:
    interval_us: int
    capacity_us: int
    count: int


class RateLimiter:
    """Check limits of the kinds viewer, client and ip; fail open when Redis is unavailable.

    Identities are hashed before they become Redis keys, so viewer ids and IPs are not stored.
    """

    def __init__(
        self,
        redis_url: str | None,
        limits: dict[str, RateLimit],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Build a limiter for `limits`, kept in Redis when `redis_url` is set, else in process.

        `clock` returns monotonic seconds for the in-process limiter and the Redis retry
        interval. Limits kept in Redis use Redis's own clock instead.
        """
        unknown = sorted(set(limits) - KINDS)
        if unknown:
            raise ValueError(f"unknown rate limit kinds {unknown}; use viewer, client or ip")
        self._buckets = {kind: _bucket_for(limit) for kind, limit in limits.items()}
        self._redis: Any = connect(redis_url) if redis_url else None
        self._script: Any = self._redis.register_script(_GCRA_SCRIPT) if self._redis else None
        self._clock = clock
        self._local = _LocalGcra(clock)
        self._error_lock = threading.Lock()
        self._last_error_log: float | None = None
        self._retry_redis_at: float | None = None
        self._failing = False

    @property
    def shared(self) -> bool:
        """True when limits are shared through Redis, False when they are per process."""
        return self._redis is not None

    def check(self, kind: str, identity: str, cost: int = 1) -> RateLimitResult:
        """Count `cost` requests for `identity` against the `kind` limit and return the outcome.

        An `ip` identity is an address. IPv6 addresses are limited per /64 network, because one
        client usually gets a whole /64. A cost above the limit's count is charged as the
        count, so a batch larger than the limit still passes once the allowance is full (and
        empties it) instead of being rejected forever.
        """
        if kind not in KINDS:
            raise ValueError(f"unknown rate limit kind {kind!r}; use viewer, client or ip")
        if not isinstance(cost, int) or cost < 1:
            raise ValueError(f"cost must be a positive integer, got {cost!r}")

        bucket = self._buckets.get(kind)
        if bucket is None:
            return RateLimitResult(allowed=True, retry_after=0, limit=0, remaining=0)

        key = _redis_key(kind, _ip_network(identity) if kind == "ip" else identity)
        charged = min(cost, bucket.count)
        if self._redis is None:
            result = self._local.check(key, bucket, charged)
        else:
            result = self._check_redis(key, bucket, charged)

        if not result.allowed:
            RATE_LIMITED.labels(kind=kind).inc()
        return result

    def _check_redis(self, key: str, bucket: _Bucket, cost: int) -> RateLimitResult:
        # Fail open: a Redis outage must not turn into an outage of playback.
        fail_open = RateLimitResult(allowed=True, retry_after=0, limit=bucket.count, remaining=bucket.count)
        retry_at = self._retry_redis_at
        if retry_at is not None and self._clock() < retry_at:
            RATE_LIMIT_ERRORS.inc()
            return fail_open

        try:
            allowed, retry_after_us, remaining = self._script(
                keys=[key], args=[bucket.interval_us, bucket.capacity_us, cost]
            )
        except REDIS_EXCEPTIONS as error:
            self._record_failure(error)
            return fail_open

        self._record_success()
        return RateLimitResult(
            allowed=bool(allowed),
            retry_after=0 if allowed else _seconds_rounded_up(int(retry_after_us)),
            limit=bucket.count,
            remaining=max(0, int(remaining)),
        )

    def _record_failure(self, error: Exception) -> None:
        RATE_LIMIT_ERRORS.inc()
        REDIS_ERRORS.labels(component="ratelimit").inc()

        now = self._clock()
        with self._error_lock:
            self._failing = True
            self._retry_redis_at = now + REDIS_RETRY_INTERVAL_SECONDS
            due = self._last_error_log is None or now - self._last_error_log >= ERROR_LOG_INTERVAL_SECONDS
            if due:
                self._last_error_log = now
        if due:
            log_event(
                logger, "ratelimit.redis_failed", logging.WARNING,
                error=f"{error.__class__.__name__}: {error}"[:300],
                detail="Redis is unavailable: rate limits are not enforced until it recovers",
            )

    def _record_success(self) -> None:
        if not self._failing:
            return
        with self._error_lock:
            recovered, self._failing = self._failing, False
            self._retry_redis_at = None
        if recovered:
            log_event(logger, "ratelimit.redis_recovered")


class _LocalGcra:
    """The same GCRA in process memory, for deployments without Redis.

    Entries expire once their TAT has passed. Beyond MAX_LOCAL_IDENTITIES live entries, the
    least recently checked one is dropped, which can only make the limiter more lenient.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._tats: dict[str, int] = {}

    def check(self, key: str, bucket: _Bucket, cost: int) -> RateLimitResult:
        now = int(self._clock() * _MICROSECONDS)
        with self._lock:
            tat = max(self._tats.pop(key, now), now)
            new_tat = tat + cost * bucket.interval_us

            if new_tat - now > bucket.capacity_us:
                self._tats[key] = tat
                remaining = (bucket.capacity_us - (tat - now)) // bucket.interval_us
                return RateLimitResult(
                    allowed=False,
                    retry_after=_seconds_rounded_up(new_tat - now - bucket.capacity_us),
                    limit=bucket.count,
                    remaining=max(0, remaining),
                )

            self._tats[key] = new_tat
            self._evict(now)
            remaining = (bucket.capacity_us - (new_tat - now)) // bucket.interval_us
            return RateLimitResult(allowed=True, retry_after=0, limit=bucket.count, remaining=remaining)

    def _evict(self, now: int) -> None:
        if len(self._tats) <= MAX_LOCAL_IDENTITIES:
            return
        self._tats = {key: tat for key, tat in self._tats.items() if tat > now}
        while len(self._tats) > MAX_LOCAL_IDENTITIES:
            del self._tats[next(iter(self._tats))]


def _bucket_for(limit: RateLimit) -> _Bucket:
    if limit.count < 1 or limit.period < 1:
        raise ValueError(f"rate limit needs count and period of at least 1, got {limit}")
    # Whole microseconds keep the Lua arithmetic exact. Rounding down speeds refill by < 1 us per request.
    interval = max(1, limit.period * _MICROSECONDS // limit.count)
    return _Bucket(interval_us=interval, capacity_us=interval * limit.count, count=limit.count)


def _seconds_rounded_up(microseconds: int) -> int:
    return max(1, math.ceil(microseconds / _MICROSECONDS))


def _redis_key(kind: str, identity: str) -> str:
    digest = hashlib.sha256(identity.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"{KEY_PREFIX}:{kind}:{digest}"


def _ip_network(address: str) -> str:
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(parsed, ipaddress.IPv4Address):
        return str(parsed)
    if parsed.ipv4_mapped is not None:
        return str(parsed.ipv4_mapped)
    return str(ipaddress.IPv6Network((parsed, 64), strict=False))


def client_ip(remote_addr: str, forwarded_for: str | None, trusted_proxies: int) -> str:
    """Return the client's IP address, trusting `trusted_proxies` X-Forwarded-For hops.

    Each trusted proxy appends the address it received the request from, so with N trusted
    proxies the client is the Nth entry from the right. Entries further left are whatever the
    client sent and cannot be trusted. With no trusted proxies, fewer entries than N, or an entry
    that is not an IP address, the peer address `remote_addr` is returned. When a request carries
    several X-Forwarded-For headers, join them with ", " in order before calling.
    """
    if trusted_proxies < 1 or not forwarded_for:
        return remote_addr

    entries = [entry.strip() for entry in forwarded_for.split(",")]
    if len(entries) < trusted_proxies:
        return remote_addr

    candidate = _parse_forwarded_address(entries[-trusted_proxies])
    return candidate if candidate is not None else remote_addr


def _parse_forwarded_address(entry: str) -> str | None:
    """Return the IP in one X-Forwarded-For entry, allowing `[v6]:port` and `v4:port` forms."""
    text = entry
    if text.startswith("[") and "]" in text:
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None
