"""Token cache: half-life serving, key coverage, single flight, Redis failures."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from prometheus_client import REGISTRY

from gateway.tokens.cache import InProcessBackend, RedisBackend, TokenCache, cache_key
from tests.support.redis_server import RedisServer


def _count(result: str) -> float:
    return REGISTRY.get_sample_value("playback_gateway_token_cache_requests_total", {"result": result}) or 0.0


def _redis_errors() -> float:
    return REGISTRY.get_sample_value("playback_gateway_redis_errors_total", {"component": "token_cache"}) or 0.0


class Signer:
    """Counts calls and returns numbered tokens."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls = 0
        self.delay = delay
        self.lock = threading.Lock()

    def __call__(self) -> str:
        with self.lock:
            self.calls += 1
            number = self.calls
        time.sleep(self.delay)
        return f"header.payload{number}.signature"


CLAIMS = {"sub": "abc", "aud": "v", "exp": 2000000000, "kid": "k1", "max_resolution": "720p"}


def test_cache_key_ignores_exp_only() -> None:
    base = cache_key("k1", 3600, CLAIMS)
    assert cache_key("k1", 3600, {**CLAIMS, "exp": 1}) == base
    assert cache_key("k2", 3600, CLAIMS) != base
    assert cache_key("k1", 600, CLAIMS) != base
    assert cache_key("k1", 3600, {**CLAIMS, "max_resolution": "1080p"}) != base
    assert cache_key("k1", 3600, {**CLAIMS, "sub": "other"}) != base
    assert base.startswith("pgw:tok:k1:")


@pytest.fixture(params=["in-process", "redis"])
def cache(request: pytest.FixtureRequest, redis_url: str) -> TokenCache:
    if request.param == "in-process":
        return TokenCache(InProcessBackend())
    return TokenCache(RedisBackend(redis_url), local=True)


def test_hit_after_miss(cache: TokenCache) -> None:
    signer = Signer()
    expires_at = int(time.time()) + 3600
    hits, misses = _count("hit"), _count("miss")

    first = cache.get_or_sign("pgw:tok:k1:a", 3600, expires_at, signer)
    second = cache.get_or_sign("pgw:tok:k1:a", 3600, expires_at + 5, signer)

    assert first == ("header.payload1.signature", expires_at)
    assert second == first
    assert signer.calls == 1
    assert _count("miss") - misses == 1
    assert _count("hit") - hits == 1


def test_token_past_half_life_is_not_served(cache: TokenCache) -> None:
    signer = Signer()
    # A 100 s token that expires in 40 s has less than half its lifetime left.
    stale_exp = int(time.time()) + 40
    cache.get_or_sign("pgw:tok:k1:b", 100, stale_exp, signer)

    fresh_exp = int(time.time()) + 100
    token, exp = cache.get_or_sign("pgw:tok:k1:b", 100, fresh_exp, signer)

    assert token == "header.payload2.signature"
    assert exp == fresh_exp
    assert signer.calls == 2


def test_concurrent_misses_sign_once() -> None:
    cache = TokenCache(InProcessBackend())
    signer = Signer(delay=0.2)
    expires_at = int(time.time()) + 3600
    results: list[tuple[str, int]] = []

    def fetch() -> None:
        results.append(cache.get_or_sign("pgw:tok:k1:c", 3600, expires_at, signer))

    threads = [threading.Thread(target=fetch) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert signer.calls == 1
    assert results == [("header.payload1.signature", expires_at)] * 8


def test_drop_key_id_removes_only_that_key(cache: TokenCache) -> None:
    signer = Signer()
    expires_at = int(time.time()) + 3600
    cache.get_or_sign("pgw:tok:old:a", 3600, expires_at, signer)
    cache.get_or_sign("pgw:tok:new:a", 3600, expires_at, signer)

    assert cache.drop_key_id("old") == 1

    assert cache.get_or_sign("pgw:tok:old:a", 3600, expires_at, signer)[0] == "header.payload3.signature"
    assert cache.get_or_sign("pgw:tok:new:a", 3600, expires_at, signer)[0] == "header.payload2.signature"


def test_in_process_backend_is_bounded() -> None:
    backend = InProcessBackend(max_entries=2)
    backend.set("a", "1", 60)
    backend.set("b", "2", 60)
    backend.set("c", "3", 60)
    assert backend.get("a") is None
    assert backend.get("b") == "2"
    assert backend.get("c") == "3"


def _wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def test_redis_down_mints_then_recovers(redis_server: RedisServer, redis_url: str) -> None:
    worker_a = TokenCache(RedisBackend(redis_url), local=True)
    worker_b = TokenCache(RedisBackend(redis_url), local=True)
    signer = Signer()
    expires_at = int(time.time()) + 3600
    errors_before = _redis_errors()

    redis_server.stop()
    first = worker_a.get_or_sign("pgw:tok:k1:d", 3600, expires_at, signer)
    # Worker B cannot see A's token without Redis, so it signs its own.
    second = worker_b.get_or_sign("pgw:tok:k1:d", 3600, expires_at, signer)
    # Each worker still keeps its own tokens in memory.
    again = worker_a.get_or_sign("pgw:tok:k1:d", 3600, expires_at, signer)

    assert first[0] == "header.payload1.signature"
    assert second[0] == "header.payload2.signature"
    assert again == first
    assert _redis_errors() - errors_before >= 1

    redis_server.start()
    time.sleep(1.1)  # the breaker skips Redis for one second after a failure
    third = worker_a.get_or_sign("pgw:tok:k1:e", 3600, expires_at, signer)
    shared = worker_b.get_or_sign("pgw:tok:k1:e", 3600, expires_at, signer)

    assert third[0] == "header.payload3.signature"
    assert shared == third
    assert signer.calls == 3


def test_local_layer_drops_revoked_key(redis_url: str) -> None:
    cache = TokenCache(RedisBackend(redis_url), local=True)
    signer = Signer()
    expires_at = int(time.time()) + 3600
    cache.get_or_sign("pgw:tok:gone:a", 3600, expires_at, signer)

    assert cache.drop_key_id("gone") == 1

    assert cache.get_or_sign("pgw:tok:gone:a", 3600, expires_at, signer)[0] == "header.payload2.signature"


def test_slow_redis_times_out_and_mints(redis_server: RedisServer, redis_url: str) -> None:
    import redis

    cache = TokenCache(RedisBackend(redis_url), local=True)
    signer = Signer()
    errors_before = _redis_errors()
    admin = redis.Redis.from_url(redis_url)

    # DEBUG SLEEP blocks the server, as a Redis stuck in a long command or a network stall would.
    sleeper = threading.Thread(target=lambda: admin.execute_command("DEBUG", "SLEEP", "1"))
    sleeper.start()
    time.sleep(0.1)
    token, _ = cache.get_or_sign("pgw:tok:k1:slow", 3600, int(time.time()) + 3600, signer)
    sleeper.join()

    assert token == "header.payload1.signature"
    assert _redis_errors() - errors_before == 1
