"""POST /v1/tokens through a real gunicorn and Redis, every token decoded and checked."""

from __future__ import annotations

import itertools
import socket
import threading
import time
from typing import Any

import jwt
import pytest
import requests

from gateway.keys.material import SigningKey
from tests.e2e.conftest import (
    COUNTRY_HEADER,
    DRM_ID,
    FREE_ID,
    FREE_ID_2,
    MUX_KID,
    PREMIUM_ID,
    REGIONAL_ID,
    UNKNOWN_ID,
)
from tests.support.gateway_process import GatewayProcess
from tests.support.redis_server import RedisServer
from tests.support.viewers import ViewerIssuer

pytestmark = pytest.mark.e2e

AUD_CODES = {"video": "v", "thumbnail": "t", "storyboard": "s", "gif": "g", "drm_license": "d"}


def post(gateway: GatewayProcess, body: Any, token: str | None = None, country: str = "US",
         path: str = "/v1/tokens") -> requests.Response:
    headers = {COUNTRY_HEADER: country}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return requests.post(f"{gateway.url}{path}", json=body, headers=headers, timeout=10)


def decode(token: str, mux_key: SigningKey) -> tuple[dict[str, Any], dict[str, Any]]:
    header = jwt.get_unverified_header(token)
    claims = jwt.decode(token, mux_key.private_key.public_key(), algorithms=["RS256"],
                        options={"verify_aud": False, "require": ["exp", "sub", "aud", "kid"]})
    return header, claims


def assert_token(token: str, mux_key: SigningKey, playback_id: str, audience: str, ttl: int,
                 modifiers: dict[str, Any]) -> int:
    """Check header and every claim of one token exactly; return its exp."""
    header, claims = decode(token, mux_key)
    assert header == {"alg": "RS256", "kid": MUX_KID, "typ": "JWT"}

    exp = claims.pop("exp")
    assert isinstance(exp, int)
    # A cached token may be served while at least half of its lifetime remains.
    now = int(time.time())
    assert now + ttl // 2 - 5 <= exp <= now + ttl + 5
    assert claims == {"sub": playback_id, "aud": AUD_CODES[audience], "kid": MUX_KID, **modifiers}
    return exp


def test_premium_viewer_gets_drm_tokens(gateway: GatewayProcess, mux_key: SigningKey, issuer: ViewerIssuer) -> None:
    audiences = ["video", "thumbnail", "storyboard", "drm_license"]
    body = {"playback_id": DRM_ID, "audiences": audiences, "thumbnail": {"time": 12.5, "width": 640}}
    response = post(gateway, body, issuer.token("viewer-1", ["premium"]))

    assert response.status_code == 200
    data = response.json()
    assert data["playback_id"] == DRM_ID
    assert data["rule"] == "drm-subscribers"
    assert sorted(data["tokens"]) == sorted(audiences)

    expirations = [
        assert_token(data["tokens"]["video"], mux_key, DRM_ID, "video", 7200, {"max_resolution": "1080p"}),
        assert_token(data["tokens"]["thumbnail"], mux_key, DRM_ID, "thumbnail", 7200, {"time": 12.5, "width": 640}),
        assert_token(data["tokens"]["storyboard"], mux_key, DRM_ID, "storyboard", 7200, {}),
        assert_token(data["tokens"]["drm_license"], mux_key, DRM_ID, "drm_license", 7200, {}),
    ]
    assert data["expires_at"] == min(expirations)
    assert data["urls"] == {
        "video": f"https://stream.mux.com/{DRM_ID}.m3u8?token={data['tokens']['video']}",
        "thumbnail": f"https://image.mux.com/{DRM_ID}/thumbnail.jpg?token={data['tokens']['thumbnail']}",
        "storyboard": f"https://image.mux.com/{DRM_ID}/storyboard.vtt?token={data['tokens']['storyboard']}",
        "drm_license": f"https://license.mux.com/license/widevine/{DRM_ID}?token={data['tokens']['drm_license']}",
    }


def test_signed_in_viewer_gets_gif_token(gateway: GatewayProcess, mux_key: SigningKey, issuer: ViewerIssuer) -> None:
    body = {"playback_id": FREE_ID_2, "audiences": ["gif"], "gif": {"start": 2, "end": 6, "width": 320, "fps": 15}}
    response = post(gateway, body, issuer.token("viewer-9"))

    assert response.status_code == 200
    data = response.json()
    assert data["rule"] == "free-signed-in"
    modifiers = {"start": 2, "end": 6, "width": 320, "fps": 15}
    assert_token(data["tokens"]["gif"], mux_key, FREE_ID_2, "gif", 3600, modifiers)
    assert data["urls"]["gif"] == f"https://image.mux.com/{FREE_ID_2}/animated.gif?token={data['tokens']['gif']}"


def test_anonymous_free_title_capped_at_720p(gateway: GatewayProcess, mux_key: SigningKey) -> None:
    response = post(gateway, {"playback_id": FREE_ID})

    assert response.status_code == 200
    data = response.json()
    assert data["rule"] == "free-anonymous"
    assert sorted(data["tokens"]) == ["storyboard", "thumbnail", "video"]
    assert_token(data["tokens"]["video"], mux_key, FREE_ID, "video", 3600, {"max_resolution": "720p"})
    assert_token(data["tokens"]["thumbnail"], mux_key, FREE_ID, "thumbnail", 3600, {})


def test_premium_without_entitlement_gets_preview(
    gateway: GatewayProcess, mux_key: SigningKey, issuer: ViewerIssuer
) -> None:
    response = post(gateway, {"playback_id": PREMIUM_ID, "ttl": 60}, issuer.token("viewer-2", ["newsletter"]))

    assert response.status_code == 200
    data = response.json()
    assert data["rule"] == "premium-preview"
    assert_token(data["tokens"]["video"], mux_key, PREMIUM_ID, "video", 60, {"asset_end_time": 30})
    assert_token(data["tokens"]["storyboard"], mux_key, PREMIUM_ID, "storyboard", 60, {"asset_end_time": 30})
    assert_token(data["tokens"]["thumbnail"], mux_key, PREMIUM_ID, "thumbnail", 60, {})


def test_premium_entitled_ttl_capped_to_grant(
    gateway: GatewayProcess, mux_key: SigningKey, issuer: ViewerIssuer
) -> None:
    body = {"playback_id": PREMIUM_ID, "audiences": ["video"], "ttl": 86400, "video": {"max_resolution": "2160p"}}
    response = post(gateway, body, issuer.token("viewer-1", ["premium"]))

    assert response.status_code == 200
    data = response.json()
    assert data["rule"] == "premium-subscribers"
    # The policy's fixed claim overrides the request's, and the ttl is capped to the 2 h grant.
    assert_token(data["tokens"]["video"], mux_key, PREMIUM_ID, "video", 7200, {"max_resolution": "1080p"})


@pytest.mark.parametrize(
    ("playback_id", "country", "audiences", "entitlements", "rule", "detail"),
    [
        (REGIONAL_ID, "DE", None, ["premium"], "regional-block",
         "Denied by rule 'regional-block': This title is not available in your region."),
        (PREMIUM_ID, "US", ["video", "gif"], ["premium"], "premium-subscribers",
         "Rule 'premium-subscribers' does not grant gif: request only the audiences it grants, or ask the "
         "policy owner for a rule that grants these."),
        (DRM_ID, "US", None, [], None, "No policy rule allows this request."),
        (UNKNOWN_ID, "US", None, [], None, "No policy rule allows this request."),
    ],
)
def test_policy_denials(
    gateway: GatewayProcess, issuer: ViewerIssuer, playback_id: str, country: str,
    audiences: list[str] | None, entitlements: list[str], rule: str | None, detail: str,
) -> None:
    body: dict[str, Any] = {"playback_id": playback_id}
    if audiences:
        body["audiences"] = audiences
    response = post(gateway, body, issuer.token("viewer-5", entitlements), country=country)

    assert response.status_code == 403
    assert response.headers["Content-Type"] == "application/problem+json"
    problem = response.json()
    assert problem["type"] == "https://playback-gateway.dev/problems/denied-by-policy"
    assert problem["title"] == "Forbidden"
    assert problem["status"] == 403
    assert problem["detail"] == detail
    assert problem.get("rule") == rule


@pytest.mark.parametrize(
    ("case", "detail"),
    [
        ("forged", "The viewer JWT was rejected"),
        ("expired", "The viewer JWT was rejected"),
        ("garbage", "The viewer JWT was rejected"),
        ("not bearer", "The Authorization header must be 'Bearer <viewer JWT>'."),
    ],
)
def test_bad_viewer_jwt_is_401_never_anonymous(
    gateway: GatewayProcess, issuer: ViewerIssuer, forger: ViewerIssuer, case: str, detail: str
) -> None:
    tokens = {
        "forged": forger.token("viewer-1", ["premium"]),
        "expired": issuer.token("viewer-1", ["premium"], exp=int(time.time()) - 3600),
        "garbage": "aaaa.bbbb.cccc",
    }
    headers = {"Authorization": f"Bearer {tokens[case]}" if case in tokens else "Basic dXNlcjpwYXNz"}
    # FREE_ID would be allowed for an anonymous viewer: a bad JWT must not fall back to that.
    response = requests.post(f"{gateway.url}/v1/tokens", json={"playback_id": FREE_ID}, headers=headers, timeout=10)

    assert response.status_code == 401
    problem = response.json()
    assert problem["status"] == 401
    assert problem["detail"].startswith(detail)
    expected_challenge = 'Bearer realm="playback-gateway"'
    if case in tokens:
        expected_challenge += ', error="invalid_token"'
    assert response.headers["WWW-Authenticate"] == expected_challenge
    if case in tokens:
        assert tokens[case] not in response.text


@pytest.mark.parametrize(
    ("body", "errors"),
    [
        ({}, [{"field": "playback_id", "message": "is required"}]),
        ({"playback_id": "has spaces"}, [{"field": "playback_id", "message": "must be a Mux playback ID: letters "
                                          "and digits only"}]),
        ({"playback_id": FREE_ID, "audiences": ["movie"]},
         [{"field": "audiences[0]", "message": "must be one of: video, thumbnail, storyboard, gif, drm_license"}]),
        ({"playback_id": FREE_ID, "audiences": []},
         [{"field": "audiences", "message": "must be a non-empty list of: video, thumbnail, storyboard, gif, "
           "drm_license"}]),
        ({"playback_id": FREE_ID, "ttl": 0}, [{"field": "ttl", "message": "must be at least 1 second"}]),
        ({"playback_id": FREE_ID, "video": {"asset_end_time": 10, "program_end_time": 99}},
         [{"field": "video.program_end_time", "message": "cannot be combined with asset_end_time: use one way to "
           "set the time"}]),
        ({"playback_id": FREE_ID, "thumbnail": {"time": 1e308}},
         [{"field": "thumbnail.time", "message": "must be between 0 and 31536000"}]),
        ({"playback_id": FREE_ID, "ttl": "1h"},
         [{"field": "ttl", "message": "must be a positive integer number of seconds"}]),
        ({"playback_id": FREE_ID, "thumbnail": {"fit_mode": "zoom"}},
         [{"field": "thumbnail.fit_mode", "message": "must be one of: preserve, stretch, crop, smartcrop, pad"}]),
        ({"playback_id": FREE_ID, "video": {"exp": 1}},
         [{"field": "video.exp", "message": "is set by the gateway and cannot be requested: remove 'exp'"}]),
        ({"playback_id": FREE_ID, "video": {"sub": "x"}},
         [{"field": "video.sub", "message": "is set by the gateway and cannot be requested: remove 'sub'"}]),
        ({"playback_id": FREE_ID, "gif": {"width": 900}},
         [{"field": "gif.width", "message": "must be at most 640 for gif tokens"}]),
        ({"playback_id": FREE_ID, "colour": "red"},
         [{"field": "colour", "message": "is not a known field; allowed: audiences, drm_license, gif, playback_id, "
           "storyboard, thumbnail, ttl, video, viewer"}]),
        ({"playback_id": FREE_ID, "video": {"max_resolution": "720p", "min_resolution": "1080p"}},
         [{"field": "video.min_resolution", "message": "must not be above max_resolution (720p)"}]),
        ([1, 2], [{"field": "body", "message": "must be a JSON object"}]),
    ],
)
def test_invalid_body_is_400_with_fields(gateway: GatewayProcess, body: Any, errors: list[dict[str, str]]) -> None:
    response = post(gateway, body)

    assert response.status_code == 400
    assert response.headers["Content-Type"] == "application/problem+json"
    problem = response.json()
    assert problem["type"] == "https://playback-gateway.dev/problems/invalid-request"
    assert problem["errors"] == errors


def test_modifiers_for_ungranted_audience_are_400(gateway: GatewayProcess) -> None:
    body = {"playback_id": FREE_ID, "audiences": ["video"], "thumbnail": {"time": 3}}
    response = post(gateway, body)

    assert response.status_code == 400
    assert response.json()["errors"] == [
        {"field": "thumbnail", "message": "no thumbnail token is granted here: add 'thumbnail' to audiences or "
         "remove this object"},
    ]


def test_viewer_object_without_scope_is_403(gateway: GatewayProcess) -> None:
    response = post(gateway, {"playback_id": FREE_ID, "viewer": {"id": "v", "entitlements": ["premium"]}})

    assert response.status_code == 403
    assert response.json()["type"] == "https://playback-gateway.dev/problems/viewer-assertion-forbidden"


@pytest.mark.parametrize(
    ("data", "content_type", "status", "code"),
    [
        (b'{"playback_id": "abc"}', "text/plain", 415, "unsupported-media-type"),
        (b"{not json", "application/json", 400, "invalid-json"),
        (b"", "application/json", 400, "invalid-json"),
        (b"\xff\xfe", "application/json", 400, "invalid-json"),
        (b'{"playback_id": NaN}', "application/json", 400, "invalid-json"),
        (b"[" * 50 + b"]" * 50, "application/json", 400, "json-too-deep"),
        (b'{"p": "' + b"x" * 1_100_000 + b'"}', "application/json", 413, "body-too-large"),
    ],
)
def test_body_hygiene(gateway: GatewayProcess, data: bytes, content_type: str, status: int, code: str) -> None:
    response = requests.post(f"{gateway.url}/v1/tokens", data=data, headers={"Content-Type": content_type},
                             timeout=10)

    assert response.status_code == status
    assert response.headers["Content-Type"] == "application/problem+json"
    assert response.json()["type"] == f"https://playback-gateway.dev/problems/{code}"


def test_unknown_route_and_method_are_problems(gateway: GatewayProcess) -> None:
    missing = requests.get(f"{gateway.url}/v1/nothing", timeout=10)
    wrong_method = requests.get(f"{gateway.url}/v1/tokens", timeout=10)

    assert missing.status_code == 404
    assert missing.json()["type"] == "https://playback-gateway.dev/problems/not-found"
    assert wrong_method.status_code == 405
    assert wrong_method.json()["type"] == "https://playback-gateway.dev/problems/method-not-allowed"
    assert set(wrong_method.headers["Allow"].split(", ")) == {"OPTIONS", "POST"}


def test_request_id_is_echoed_or_generated(gateway: GatewayProcess) -> None:
    echoed = post_with_headers(gateway, {"X-Request-Id": "req-123.abc"})
    replaced = post_with_headers(gateway, {"X-Request-Id": "bad id with spaces"})

    assert echoed.headers["X-Request-Id"] == "req-123.abc"
    assert len(replaced.headers["X-Request-Id"]) == 32
    assert replaced.headers["X-Request-Id"] != "bad id with spaces"


def post_with_headers(gateway: GatewayProcess, headers: dict[str, str]) -> requests.Response:
    return requests.post(f"{gateway.url}/v1/tokens", json={"playback_id": FREE_ID}, headers=headers, timeout=10)


def test_batch_keeps_order_and_item_errors(gateway: GatewayProcess, mux_key: SigningKey) -> None:
    body = {"items": [
        {"playback_id": FREE_ID, "audiences": ["video"]},
        {"playback_id": "bad id"},
        {"playback_id": PREMIUM_ID, "audiences": ["video"]},
    ]}
    response = post(gateway, body, path="/v1/tokens/batch")

    assert response.status_code == 200
    items = response.json()["items"]
    assert len(items) == 3
    assert_token(items[0]["tokens"]["video"], mux_key, FREE_ID, "video", 3600, {"max_resolution": "720p"})
    assert items[1]["error"]["status"] == 400
    assert items[1]["error"]["errors"] == [
        {"field": "items[1].playback_id", "message": "must be a Mux playback ID: letters and digits only"}]
    assert items[2]["tokens"]["video"]
    assert items[2]["rule"] == "premium-preview"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"items": []}, "must be a non-empty list of token requests"),
        ({"items": [{"playback_id": FREE_ID}] * 101}, "must contain at most 100 items, got 101"),
        ({"things": []}, "the body must be an object with a single key 'items'"),
    ],
)
def test_batch_limits(gateway: GatewayProcess, body: dict[str, Any], message: str) -> None:
    response = post(gateway, body, path="/v1/tokens/batch")

    assert response.status_code == 400
    assert response.json()["errors"] == [{"field": "items", "message": message}]


def test_cache_serves_identical_token(gateway: GatewayProcess) -> None:
    first = post(gateway, {"playback_id": FREE_ID, "audiences": ["video"], "ttl": 1234}).json()
    second = post(gateway, {"playback_id": FREE_ID, "audiences": ["video"], "ttl": 1234}).json()
    other_ttl = post(gateway, {"playback_id": FREE_ID, "audiences": ["video"], "ttl": 1200}).json()

    assert first["tokens"]["video"] == second["tokens"]["video"]
    assert other_ttl["tokens"]["video"] != first["tokens"]["video"]


def test_redis_restart_mid_run_fails_no_mint(
    gateway: GatewayProcess, redis_server: RedisServer, mux_key: SigningKey
) -> None:
    statuses: list[int] = []
    stop = threading.Event()

    lifetimes = itertools.count(100)

    def mint_continuously() -> None:
        while not stop.is_set():
            # A new lifetime per request misses every worker's memory layer, so Redis is asked.
            body = {"playback_id": FREE_ID, "audiences": ["video"], "ttl": next(lifetimes)}
            response = post(gateway, body)
            statuses.append(response.status_code)
            if response.status_code == 200:
                decode(response.json()["tokens"]["video"], mux_key)

    workers = [threading.Thread(target=mint_continuously) for _ in range(4)]
    for worker in workers:
        worker.start()
    time.sleep(0.5)
    redis_server.stop()
    time.sleep(1.5)
    redis_server.start()
    time.sleep(1.5)
    stop.set()
    for worker in workers:
        worker.join()

    assert len(statuses) > 50
    assert set(statuses) == {200}

    metrics = requests.get(f"{gateway.url}/metrics", timeout=10).text
    assert 'playback_gateway_token_cache_requests_total{result="error"}' in metrics
    assert 'playback_gateway_redis_errors_total{component="token_cache"}' in metrics


def test_readyz_reports_key_and_policy(gateway: GatewayProcess) -> None:
    response = requests.get(f"{gateway.url}/readyz", timeout=10)

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["signing_key"] == MUX_KID
    assert len(body["policy_version"]) == 12
    assert body["warnings"] == []
    assert body["reasons"] == []


def test_openapi_document(gateway: GatewayProcess) -> None:
    document = requests.get(f"{gateway.url}/openapi.json", timeout=10).json()

    assert document["openapi"] == "3.1.0"
    assert set(document["paths"]) >= {"/v1/tokens", "/v1/tokens/batch", "/v1/decisions/explain", "/v1/keys",
                                      "/healthz", "/readyz", "/metrics"}
    thumbnail = document["components"]["schemas"]["TokenRequest"]["properties"]["thumbnail"]
    assert thumbnail["properties"]["fit_mode"]["enum"] == ["preserve", "stretch", "crop", "smartcrop", "pad"]


def test_huge_ttl_is_capped_not_rejected(gateway: GatewayProcess, mux_key: SigningKey) -> None:
    response = post(gateway, {"playback_id": FREE_ID, "audiences": ["video"], "ttl": 10**30})

    assert response.status_code == 200
    assert_token(response.json()["tokens"]["video"], mux_key, FREE_ID, "video", 3600, {"max_resolution": "720p"})


def test_preview_cannot_escape_with_program_times(gateway: GatewayProcess) -> None:
    body = {"playback_id": PREMIUM_ID, "video": {"program_start_time": 1, "program_end_time": 99999999999}}
    response = post(gateway, body)

    assert response.status_code == 400
    assert response.json()["errors"] == [
        {"field": "video.program_start_time", "message": "cannot be combined with asset_end_time: use one way to set "
         "the time (after the policy's fixed claims)"},
    ]


def test_duplicate_json_key_is_400(gateway: GatewayProcess) -> None:
    data = f'{{"playback_id": "{FREE_ID}", "playback_id": "{PREMIUM_ID}"}}'.encode()
    response = requests.post(f"{gateway.url}/v1/tokens", data=data, headers={"Content-Type": "application/json"},
                             timeout=10)

    assert response.status_code == 400
    assert response.json()["errors"] == [
        {"field": "playback_id", "message": "appears more than once in one object: send it once"}]


def test_lowercase_bearer_scheme_accepted(gateway: GatewayProcess, issuer: ViewerIssuer) -> None:
    headers = {"Authorization": f"bearer {issuer.token('viewer-1', ['premium'])}"}
    response = requests.post(f"{gateway.url}/v1/tokens", json={"playback_id": PREMIUM_ID}, headers=headers,
                             timeout=10)

    assert response.status_code == 200
    assert response.json()["rule"] == "premium-subscribers"


@pytest.mark.parametrize("country", ["DE, US", "DEU", "de ", "D"])
def test_unusable_country_header_is_unknown(gateway: GatewayProcess, issuer: ViewerIssuer, country: str) -> None:
    response = post(gateway, {"playback_id": REGIONAL_ID}, issuer.token("viewer-1", ["premium"]), country=country)

    if country.strip().upper() == "DE":
        assert response.status_code == 403
        assert response.json()["rule"] == "regional-block"
    else:
        assert response.status_code == 200
    metrics = requests.get(f"{gateway.url}/metrics", timeout=10).text
    if country.strip().upper() != "DE":
        assert "playback_gateway_invalid_country_headers_total" in metrics


def test_odd_method_uses_bounded_label(gateway: GatewayProcess) -> None:
    response = requests.request("XYZ1", f"{gateway.url}/healthz", timeout=10)
    metrics = requests.get(f"{gateway.url}/metrics", timeout=10).text

    assert response.status_code == 405
    assert 'method="XYZ1"' not in metrics
    assert 'method="other"' in metrics


def test_options_without_origin_is_204(gateway: GatewayProcess) -> None:
    response = requests.options(f"{gateway.url}/v1/tokens", timeout=10)

    assert response.status_code == 204
    assert set(response.headers["Allow"].split(", ")) == {"OPTIONS", "POST"}
    assert response.content == b""


def test_oversized_headers_are_problem_json(gateway: GatewayProcess) -> None:
    big = requests.get(f"{gateway.url}/healthz", headers={"X-Big": "a" * 9000}, timeout=10)
    many = requests.get(f"{gateway.url}/healthz", headers={f"X-H{i}": "1" for i in range(120)}, timeout=10)
    long_line = requests.post(f"{gateway.url}/v1/keys/{'k' * 5000}/revoke", timeout=10)

    for response, status in ((big, 431), (many, 431), (long_line, 414)):
        assert response.status_code == status
        assert response.headers["Content-Type"] == "application/problem+json"
        problem = response.json()
        assert problem["status"] == status
        assert problem["type"] == f"https://playback-gateway.dev/problems/http-{status}"


def test_stalled_body_times_out(gateway: GatewayProcess) -> None:
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as sock:
        sock.sendall(b"POST /v1/tokens HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{")
        reply = sock.recv(4096).decode()

    assert reply.startswith("HTTP/1.1 408 ")
    assert "application/problem+json" in reply
    assert "body-timeout" in reply
