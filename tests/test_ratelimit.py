"""RateLimiter against a real private Redis and in process, and client_ip."""

from __future__ import annotations

import hashlib
import logging

import pytest
import redis

from gateway import ratelimit
from gateway.config import RateLimit
from gateway.ratelimit import RateLimiter, RateLimitResult, client_ip
from tests.auth.jwks_server import FakeClock, metric
from tests.support.redis_server import RedisServer

THREE_PER_MINUTE = {"viewer": RateLimit(count=3, period=60)}


def allowed(remaining: int, limit: int = 3) -> RateLimitResult:
    return RateLimitResult(allowed=True, retry_after=0, limit=limit, remaining=remaining)


def test_kind_without_limit_is_always_allowed(redis_url: str) -> None:
    limiter = RateLimiter(redis_url, THREE_PER_MINUTE)

    results = [limiter.check("client", "mobile-bff") for _ in range(10)]

    assert results == [RateLimitResult(allowed=True, retry_after=0, limit=0, remaining=0)] * 10


def test_redis_limit_allows_count_then_rejects(redis_url: str) -> None:
    limiter = RateLimiter(redis_url, THREE_PER_MINUTE)
    rejected_before = metric("playback_gateway_rate_limited_total", kind="viewer")

    results = [limiter.check("viewer", "viewer-1") for _ in range(4)]

    assert limiter.shared is True
    assert results[:3] == [allowed(2), allowed(1), allowed(0)]
    assert results[3] == RateLimitResult(allowed=False, retry_after=20, limit=3, remaining=0)
    assert results[3].headers() == {"Retry-After": "20"}
    assert metric("playback_gateway_rate_limited_total", kind="viewer") == rejected_before + 1
    # Another identity has its own allowance.
    assert limiter.check("viewer", "viewer-2") == allowed(2)


def test_two_limiters_share_one_redis(redis_url: str) -> None:
    first = RateLimiter(redis_url, THREE_PER_MINUTE)
    second = RateLimiter(redis_url, THREE_PER_MINUTE)

    assert first.check("viewer", "viewer-1") == allowed(2)
    assert second.check("viewer", "viewer-1") == allowed(1)
    assert first.check("viewer", "viewer-1") == allowed(0)
    assert second.check("viewer", "viewer-1").allowed is False


def test_cost_counts_batch_items(redis_url: str) -> None:
    limiter = RateLimiter(redis_url, {"client": RateLimit(count=10, period=60)})

    assert limiter.check("client", "mobile-bff", cost=7) == allowed(3, limit=10)
    rejected = limiter.check("client", "mobile-bff", cost=4)
    assert rejected == RateLimitResult(allowed=False, retry_after=6, limit=10, remaining=3)
    assert limiter.check("client", "mobile-bff", cost=3) == allowed(0, limit=10)


def test_cost_above_count_needs_full_allowance(redis_url: str) -> None:
    limiter = RateLimiter(redis_url, {"client": RateLimit(count=10, period=60)})

    assert limiter.check("client", "feed", cost=100) == allowed(0, limit=10)
    assert limiter.check("client", "feed", cost=100) == RateLimitResult(
        allowed=False, retry_after=60, limit=10, remaining=0
    )


def test_redis_keys_hash_identities(redis_url: str) -> None:
    limiter = RateLimiter(redis_url, {"viewer": RateLimit(count=5, period=60), "ip": RateLimit(5, 60)})
    limiter.check("viewer", "alice@example.test")
    limiter.check("ip", "2001:db8:1:2:3:4:5:6")

    client = redis.Redis.from_url(redis_url)
    keys = sorted(key.decode() for key in client.keys("*"))
    viewer_digest = hashlib.sha256(b"alice@example.test").hexdigest()[:32]
    network_digest = hashlib.sha256(b"2001:db8:1:2::/64").hexdigest()[:32]

    assert keys == sorted(
        [f"gateway:ratelimit:viewer:{viewer_digest}", f"gateway:ratelimit:ip:{network_digest}"]
    )
    ttl = client.pttl(f"gateway:ratelimit:viewer:{viewer_digest}")
    assert 0 < ttl <= 12_000
    client.close()


def test_ipv6_addresses_share_their_64(redis_url: str) -> None:
    limiter = RateLimiter(redis_url, {"ip": RateLimit(count=2, period=60)})

    assert limiter.check("ip", "2001:db8::1").allowed is True
    assert limiter.check("ip", "2001:db8::ffff:2").allowed is True
    assert limiter.check("ip", "2001:db8::3").allowed is False
    assert limiter.check("ip", "2001:db8:0:1::1").allowed is True


def test_redis_outage_fails_open_and_recovers(
    redis_server: RedisServer, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    limiter = RateLimiter(redis_url, THREE_PER_MINUTE, clock=clock)
    for _ in range(3):
        limiter.check("viewer", "viewer-1")
    assert limiter.check("viewer", "viewer-1").allowed is False
    fail_open_before = metric("playback_gateway_rate_limit_fail_open_total")
    redis_errors_before = metric("playback_gateway_redis_errors_total", component="ratelimit")

    redis_server.stop()
    with caplog.at_level(logging.INFO, logger="gateway.ratelimit"):
        during_outage = [limiter.check("viewer", "viewer-1") for _ in range(5)]
        clock.advance(1.0)
        during_outage.append(limiter.check("viewer", "viewer-1"))
        redis_server.start()
        clock.advance(1.0)
        after_recovery = [limiter.check("viewer", "viewer-1") for _ in range(4)]

    assert during_outage == [allowed(3)] * 6
    assert metric("playback_gateway_rate_limit_fail_open_total") == fail_open_before + 6
    # Redis is asked again only once the retry interval has passed.
    assert metric("playback_gateway_redis_errors_total", component="ratelimit") == redis_errors_before + 2
    # The restarted Redis lost its state, so the allowance starts again, and limits apply again.
    assert after_recovery[:3] == [allowed(2), allowed(1), allowed(0)]
    assert after_recovery[3].allowed is False
    events = [getattr(record, "event", None) for record in caplog.records]
    assert events == ["ratelimit.redis_failed", "ratelimit.redis_recovered"]


def test_local_limiter_refills_over_time() -> None:
    clock = FakeClock()
    limiter = RateLimiter(None, THREE_PER_MINUTE, clock=clock)

    results = [limiter.check("viewer", "viewer-1") for _ in range(4)]
    assert limiter.shared is False
    assert results[:3] == [allowed(2), allowed(1), allowed(0)]
    assert results[3] == RateLimitResult(allowed=False, retry_after=20, limit=3, remaining=0)

    clock.advance(19.5)
    assert limiter.check("viewer", "viewer-1") == RateLimitResult(
        allowed=False, retry_after=1, limit=3, remaining=0
    )
    clock.advance(0.5)
    assert limiter.check("viewer", "viewer-1") == allowed(0)

    clock.advance(60)
    assert limiter.check("viewer", "viewer-1") == allowed(2)


def test_local_limiter_has_no_boundary_burst() -> None:
    clock = FakeClock()
    limiter = RateLimiter(None, {"ip": RateLimit(count=60, period=60)}, clock=clock)

    clock.advance(59.9)
    first_burst = sum(limiter.check("ip", "192.0.2.1").allowed for _ in range(60))
    clock.advance(0.2)
    second_burst = sum(limiter.check("ip", "192.0.2.1").allowed for _ in range(60))

    assert first_burst == 60
    assert second_burst == 0


def test_local_limiter_drops_least_recent_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ratelimit, "MAX_LOCAL_IDENTITIES", 3)
    limiter = RateLimiter(None, {"viewer": RateLimit(count=1, period=60)}, clock=FakeClock())

    for identity in ("viewer-1", "viewer-2", "viewer-3"):
        assert limiter.check("viewer", identity).allowed is True
    assert limiter.check("viewer", "viewer-1").allowed is False
    assert limiter.check("viewer", "viewer-4").allowed is True

    # viewer-2 was checked least recently, so its entry made room for viewer-4.
    assert limiter.check("viewer", "viewer-2").allowed is True
    assert limiter.check("viewer", "viewer-1").allowed is False


def test_invalid_arguments_raise() -> None:
    limiter = RateLimiter(None, THREE_PER_MINUTE)

    with pytest.raises(ValueError, match=r"^unknown rate limit kind 'user'; use viewer, client or ip$"):
        limiter.check("user", "x")
    with pytest.raises(ValueError, match=r"^cost must be a positive integer, got 0$"):
        limiter.check("viewer", "x", cost=0)
    with pytest.raises(ValueError, match=r"^unknown rate limit kinds \['user'\]; use viewer, client or ip$"):
        RateLimiter(None, {"user": RateLimit(1, 1)})


@pytest.mark.parametrize(
    ("remote_addr", "forwarded_for", "trusted", "expected"),
    [
        ("10.0.0.9", None, 1, "10.0.0.9"),
        ("10.0.0.9", "203.0.113.7", 0, "10.0.0.9"),
        ("10.0.0.9", "203.0.113.7", 1, "203.0.113.7"),
        ("10.0.0.9", "198.51.100.1, 203.0.113.7", 1, "203.0.113.7"),
        ("10.0.0.9", "198.51.100.1, 203.0.113.7, 10.0.0.5", 2, "203.0.113.7"),
        ("10.0.0.9", "203.0.113.7", 2, "10.0.0.9"),
        ("10.0.0.9", "spoofed, garbage", 1, "10.0.0.9"),
        ("10.0.0.9", "", 1, "10.0.0.9"),
        ("10.0.0.9", "203.0.113.7:51234", 1, "203.0.113.7"),
        ("10.0.0.9", "[2001:DB8::1]:443", 1, "2001:db8::1"),
        ("10.0.0.9", "2001:db8::1", 1, "2001:db8::1"),
        ("10.0.0.9", "unknown", 1, "10.0.0.9"),
    ],
)
def test_client_ip(remote_addr: str, forwarded_for: str | None, trusted: int, expected: str) -> None:
    assert client_ip(remote_addr, forwarded_for, trusted) == expected
