"""JwksCache against a real HTTP server on 127.0.0.1, and JWK entry validation."""

from __future__ import annotations

import json
import logging
import threading

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from gateway.auth.jwks import (
    JwksCache,
    UnsupportedKeyError,
    verification_key_from_jwk,
)
from tests.auth.jwks_server import FakeClock, JwksServer, metric, public_jwk

FETCHES = "playback_gateway_jwks_fetches_total"


def fetch_counts() -> dict[str, float]:
    return {result: metric(FETCHES, result=result) for result in ("ok", "error", "throttled")}


def delta(before: dict[str, float]) -> dict[str, float]:
    return {result: value - before[result] for result, value in fetch_counts().items()}


def failure_messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.error for record in caplog.records if getattr(record, "event", "") == "jwks.fetch_failed"]


def test_get_fetches_and_caches_keys(jwks_server: JwksServer, rsa_key: rsa.RSAPrivateKey) -> None:
    jwks_server.keys = [public_jwk(rsa_key, "key-1", "RS256")]
    cache = JwksCache(jwks_server.url)
    before = fetch_counts()

    first = cache.get("key-1")
    second = cache.get("key-1")

    assert first is not None
    assert first.kid == "key-1"
    assert first.algorithms == ("RS256",)
    assert second is first
    assert jwks_server.hits == 1
    assert delta(before) == {"ok": 1.0, "error": 0.0, "throttled": 0.0}


def test_unknown_kid_refetches_after_rotation(
    jwks_server: JwksServer, rsa_key: rsa.RSAPrivateKey, other_rsa_key: rsa.RSAPrivateKey
) -> None:
    clock = FakeClock()
    jwks_server.keys = [public_jwk(rsa_key, "key-1", "RS256")]
    cache = JwksCache(jwks_server.url, min_refetch_interval=30, clock=clock)
    assert cache.get("key-1") is not None

    jwks_server.keys = [public_jwk(other_rsa_key, "key-2", "RS256")]
    clock.advance(31)
    rotated = cache.get("key-2")

    assert rotated is not None
    assert rotated.kid == "key-2"
    assert jwks_server.hits == 2
    # The refresh replaced the set, so the key the provider withdrew is no longer trusted.
    clock.advance(301)
    assert cache.get("key-1") is None


def test_unknown_kid_within_interval_is_throttled(
    jwks_server: JwksServer, rsa_key: rsa.RSAPrivateKey
) -> None:
    clock = FakeClock()
    jwks_server.keys = [public_jwk(rsa_key, "key-1", "RS256")]
    cache = JwksCache(jwks_server.url, min_refetch_interval=30, clock=clock)
    before = fetch_counts()

    assert cache.get("random-1") is None
    clock.advance(10)
    assert cache.get("random-2") is None
    assert cache.get("random-3") is None

    assert jwks_server.hits == 1
    assert delta(before) == {"ok": 1.0, "error": 0.0, "throttled": 2.0}

    clock.advance(21)
    assert cache.get("random-4") is None
    assert jwks_server.hits == 2


def test_concurrent_unknown_kids_fetch_once(jwks_server: JwksServer, rsa_key: rsa.RSAPrivateKey) -> None:
    jwks_server.keys = [public_jwk(rsa_key, "key-1", "RS256")]
    cache = JwksCache(jwks_server.url, min_refetch_interval=3600)
    barrier = threading.Barrier(16)
    found: list[bool] = []

    def look_up(index: int) -> None:
        barrier.wait()
        found.append(cache.get("key-1" if index % 2 else f"random-{index}") is not None)

    threads = [threading.Thread(target=look_up, args=(index,)) for index in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert jwks_server.hits == 1
    assert sorted(found) == [False] * 8 + [True] * 8


def test_failed_refresh_serves_stale_keys(
    jwks_server: JwksServer, rsa_key: rsa.RSAPrivateKey, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    jwks_server.keys = [public_jwk(rsa_key, "key-1", "RS256")]
    cache = JwksCache(jwks_server.url, max_age=300, min_refetch_interval=30, clock=clock)
    assert cache.get("key-1") is not None
    before = fetch_counts()

    jwks_server.status = 500
    clock.advance(301)
    with caplog.at_level(logging.WARNING, logger="gateway.auth.jwks"):
        stale = cache.get("key-1")

    assert stale is not None
    assert stale.kid == "key-1"
    assert jwks_server.hits == 2
    assert delta(before) == {"ok": 0.0, "error": 1.0, "throttled": 0.0}
    assert failure_messages(caplog) == ["HTTP 500"]

    # Still stale, but the next attempt waits for the refetch interval.
    clock.advance(5)
    assert cache.get("key-1") is not None
    assert jwks_server.hits == 2

    jwks_server.status = 200
    clock.advance(30)
    assert cache.get("key-1") is not None
    assert jwks_server.hits == 3


def test_slow_response_times_out(
    jwks_server: JwksServer, rsa_key: rsa.RSAPrivateKey, caplog: pytest.LogCaptureFixture
) -> None:
    jwks_server.keys = [public_jwk(rsa_key, "key-1", "RS256")]
    jwks_server.delay = 5.0
    cache = JwksCache(jwks_server.url, timeout=0.2)
    before = fetch_counts()

    with caplog.at_level(logging.WARNING, logger="gateway.auth.jwks"):
        assert cache.get("key-1") is None

    assert cache.has_keys is False
    assert delta(before)["error"] == 1.0
    assert failure_messages(caplog) == ["timed out after 0.2 s"]


@pytest.mark.parametrize(
    ("send_length", "message"),
    [
        (True, "response of 300000 bytes exceeds the 262144-byte limit"),
        (False, "response exceeds the 262144-byte limit"),
    ],
)
def test_huge_body_is_rejected(
    jwks_server: JwksServer, caplog: pytest.LogCaptureFixture, send_length: bool, message: str
) -> None:
    jwks_server.body = b" " * 300_000
    jwks_server.send_length = send_length
    cache = JwksCache(jwks_server.url)

    with caplog.at_level(logging.WARNING, logger="gateway.auth.jwks"):
        assert cache.get("key-1") is None

    assert failure_messages(caplog) == [message]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"<html>not json</html>", "response is not valid JSON"),
        (b"[]", "response is not a JWKS: expected an object with a 'keys' list"),
        (b'{"keys": {}}', "response is not a JWKS: expected an object with a 'keys' list"),
        (b'{"keys": []}', "JWKS has no usable signing keys (0 entries)"),
        (
            b'{"keys": [{"kty": "oct", "kid": "shared", "k": "c2VjcmV0"}]}',
            "JWKS has no usable signing keys (1 entries)",
        ),
    ],
)
def test_invalid_documents_are_errors(
    jwks_server: JwksServer, caplog: pytest.LogCaptureFixture, body: bytes, message: str
) -> None:
    jwks_server.body = body
    cache = JwksCache(jwks_server.url)

    with caplog.at_level(logging.WARNING, logger="gateway.auth.jwks"):
        assert cache.get("shared") is None

    assert failure_messages(caplog) == [message]


def test_redirect_is_an_error(jwks_server: JwksServer, caplog: pytest.LogCaptureFixture) -> None:
    jwks_server.status = 302
    jwks_server.extra_headers = {"Location": "http://127.0.0.1:1/elsewhere"}
    cache = JwksCache(jwks_server.url)

    with caplog.at_level(logging.WARNING, logger="gateway.auth.jwks"):
        assert cache.get("key-1") is None

    assert failure_messages(caplog) == [
        "HTTP 302 redirect: set GATEWAY_VIEWER_JWKS_URL to the final URL"
    ]


def test_unusable_entries_are_skipped(
    jwks_server: JwksServer,
    rsa_key: rsa.RSAPrivateKey,
    ec_key: ec.EllipticCurvePrivateKey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    jwks_server.keys = [
        public_jwk(rsa_key, "good", "RS256"),
        public_jwk(ec_key, "enc", use="enc"),
        {"kty": "RSA", "n": "AQAB", "e": "AQAB"},
        public_jwk(rsa_key, "good", "PS256"),
    ]
    cache = JwksCache(jwks_server.url)

    with caplog.at_level(logging.WARNING, logger="gateway.auth.jwks"):
        key = cache.get("good")

    assert key is not None
    assert key.algorithms == ("RS256",)
    skipped = [record for record in caplog.records if getattr(record, "event", "") == "jwks.keys_skipped"]
    assert len(skipped) == 1
    assert skipped[0].reasons == [
        "key 'enc' has use 'enc', not 'sig'",
        "kid is missing or not a string of 1-256 characters",
        "key 'good' appears twice; the first one is used",
    ]


def test_repr_shows_url_without_credentials(jwks_server: JwksServer) -> None:
    url = jwks_server.url.replace("http://", "http://user:secret@") + "?token=abc"
    cache = JwksCache(url)

    assert "secret" not in repr(cache)
    assert "abc" not in repr(cache)
    assert repr(cache) == f"JwksCache(url={jwks_server.url!r}, keys=[])"


def test_jwk_algorithms_follow_key_type(
    rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey, ed_key: ed25519.Ed25519PrivateKey
) -> None:
    assert verification_key_from_jwk(public_jwk(rsa_key, "r")).algorithms == (
        "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
    )
    assert verification_key_from_jwk(public_jwk(rsa_key, "r", "PS384")).algorithms == ("PS384",)
    assert verification_key_from_jwk(public_jwk(ec_key, "e")).algorithms == ("ES256",)
    assert verification_key_from_jwk(public_jwk(ed_key, "o")).algorithms == ("EdDSA",)


def test_jwk_rejections_name_the_reason(rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey) -> None:
    small_key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    p521_key = ec.generate_private_key(ec.SECP521R1())
    with_private = public_jwk(rsa_key, "leak")
    with_private["d"] = "AQAB"
    cases = [
        ("not a key", "entry is not a JSON object"),
        ({**public_jwk(rsa_key, "x"), "kid": 7}, "kid is missing or not a string of 1-256 characters"),
        (with_private, "key 'leak' contains private or symmetric key material"),
        (public_jwk(rsa_key, "ops", key_ops=["encrypt"]), "key 'ops' has key_ops without 'verify'"),
        (public_jwk(rsa_key, "hs", "HS256"), "key 'hs' has alg 'HS256', which is not allowed for kty 'RSA'"),
        (public_jwk(ec_key, "es", "ES384"), "key 'es' has alg 'ES384', which is not allowed for kty 'EC'"),
        (public_jwk(p521_key, "p521"), "key 'p521' has unsupported kty 'EC' or crv 'P-521'"),
        (public_jwk(small_key, "small"), "RSA key has 1024 bits, fewer than the minimum of 2048"),
        ({"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"}, "key 'broken' is invalid (InvalidKeyError)"),
    ]
    for entry, message in cases:
        with pytest.raises(UnsupportedKeyError) as caught:
            verification_key_from_jwk(entry)
        assert str(caught.value) == message


def test_refresh_ignores_interval(jwks_server: JwksServer, rsa_key: rsa.RSAPrivateKey) -> None:
    jwks_server.keys = [public_jwk(rsa_key, "key-1", "RS256")]
    cache = JwksCache(jwks_server.url, min_refetch_interval=3600)

    assert cache.refresh() is True
    assert cache.refresh() is True
    jwks_server.body = json.dumps({"keys": "none"}).encode()
    assert cache.refresh() is False

    assert jwks_server.hits == 3
    assert cache.get("key-1") is not None


def test_plain_http_url_logs_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="gateway.auth.jwks"):
        JwksCache("http://idp.example.test/jwks.json")
        JwksCache("https://idp.example.test/jwks.json")
        JwksCache("http://127.0.0.1:8000/jwks.json")
        JwksCache("http://localhost:8000/jwks.json")

    warnings = [record for record in caplog.records if getattr(record, "event", "") == "jwks.insecure_url"]
    assert [record.url for record in warnings] == ["http://idp.example.test/jwks.json"]
