"""CORS through a real gunicorn: preflights and responses by origin, then a real headless Chromium."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests

from gateway.keys.material import SigningKey
from tests.e2e.conftest import FREE_ID, MUX_KID, gateway_env
from tests.support.browser import chromium_path, dump_dom
from tests.support.gateway_process import GatewayProcess
from tests.support.problems import assert_problem
from tests.support.redis_server import RedisServer
from tests.support.static_site import StaticSite
from tests.support.viewers import ViewerIssuer

pytestmark = pytest.mark.e2e

OTHER_ALLOWED = "https://watch.example.test"
FOREIGN = "https://evil.example.test"
PREFLIGHT_VARY = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
ALLOWED_HEADERS = "Authorization, Content-Type, X-Request-Id"
CORS_HEADERS = ("Access-Control-Allow-Origin", "Access-Control-Allow-Methods", "Access-Control-Allow-Headers",
                "Access-Control-Max-Age", "Access-Control-Expose-Headers", "Access-Control-Allow-Credentials")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StaticSite]:
    """The page's origin: another port of 127.0.0.1, so every gateway call is cross-origin."""
    with StaticSite(tmp_path_factory.mktemp("site")) as served:
        yield served


@pytest.fixture(scope="module")
def gateways(
    tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer, mux_key: SigningKey,
    issuer: ViewerIssuer, site: StaticSite,
) -> Iterator[dict[str, GatewayProcess]]:
    """Two gateways: "allowed" lists the page's origin, "foreign" lists only another origin."""
    redis_server.start()
    workdir: Path = tmp_path_factory.mktemp("cors")
    base = {**gateway_env(mux_key, issuer, redis_server.url), "GATEWAY_RATE_LIMITS": "viewer=3/minute"}
    processes = {
        "allowed": GatewayProcess({**base, "GATEWAY_CORS_ORIGINS": f"{site.origin},{OTHER_ALLOWED}"},
                                  workdir / "allowed"),
        "foreign": GatewayProcess({**base, "GATEWAY_CORS_ORIGINS": OTHER_ALLOWED}, workdir / "foreign"),
    }
    for process in processes.values():
        process.workdir.mkdir()
        process.start(wait_ready=False)
    try:
        for process in processes.values():
            process.wait_until_serving()
        yield processes
    finally:
        for process in processes.values():
            process.stop()


@pytest.fixture(scope="module")
def gateway(gateways: dict[str, GatewayProcess]) -> GatewayProcess:
    return gateways["allowed"]


def preflight(gateway: GatewayProcess, path: str, origin: str, method: str = "POST",
              headers: str = "authorization,content-type") -> requests.Response:
    return requests.options(f"{gateway.url}{path}", headers={
        "Origin": origin, "Access-Control-Request-Method": method, "Access-Control-Request-Headers": headers,
    }, timeout=10)


def assert_no_cors_grant(response: requests.Response) -> None:
    for name in CORS_HEADERS:
        assert name not in response.headers, name


# Preflights.

@pytest.mark.parametrize(
    ("path", "method"),
    [
        ("/v1/tokens", "POST"),
        ("/v1/tokens/batch", "POST"),
        ("/v1/decisions/explain", "POST"),
        ("/v1/keys", "GET"),
        ("/v1/keys/rotate", "POST"),
        (f"/v1/keys/{MUX_KID}/revoke", "POST"),
        ("/v1/keys/retire", "POST"),
        ("/v1/keys/reconcile", "GET"),
    ],
)
def test_preflight_from_allowed_origin(gateway: GatewayProcess, site: StaticSite, path: str, method: str) -> None:
    response = preflight(gateway, path, site.origin, method)

    assert response.status_code == 204
    assert response.content == b""
    assert "Content-Type" not in response.headers
    assert response.headers["Access-Control-Allow-Origin"] == site.origin
    assert response.headers["Access-Control-Allow-Methods"] == method
    assert response.headers["Access-Control-Allow-Headers"] == "authorization, content-type"
    assert response.headers["Access-Control-Max-Age"] == "600"
    assert response.headers["Vary"] == PREFLIGHT_VARY
    assert "Access-Control-Allow-Credentials" not in response.headers


def test_preflight_echoes_only_requested_headers(gateway: GatewayProcess) -> None:
    bare = preflight(gateway, "/v1/tokens", OTHER_ALLOWED, headers="")
    with_request_id = preflight(gateway, "/v1/tokens", OTHER_ALLOWED, headers="Content-Type, X-Request-Id")

    assert bare.status_code == 204
    assert "Access-Control-Allow-Headers" not in bare.headers
    assert bare.headers["Access-Control-Allow-Origin"] == OTHER_ALLOWED
    assert with_request_id.status_code == 204
    assert with_request_id.headers["Access-Control-Allow-Headers"] == "content-type, x-request-id"


@pytest.mark.parametrize(
    ("path", "origin", "method", "headers", "detail"),
    [
        ("/v1/tokens", FOREIGN, "POST", "content-type",
         f"Origin '{FOREIGN}' is not allowed to call this API from a browser: add it to GATEWAY_CORS_ORIGINS."),
        ("/v1/tokens", "null", "POST", "content-type",
         "Origin 'null' is not allowed to call this API from a browser: add it to GATEWAY_CORS_ORIGINS."),
        ("/v1/tokens", OTHER_ALLOWED, "POST", "content-type,x-api-key",
         "Request headers 'x-api-key' are not allowed in cross-origin requests; allowed: " + ALLOWED_HEADERS + "."),
        ("/v1/tokens", OTHER_ALLOWED, "GET", "",
         "Method 'GET' is not allowed on '/v1/tokens'; allowed: POST."),
        ("/v1/keys", OTHER_ALLOWED, "DELETE", "",
         "Method 'DELETE' is not allowed on '/v1/keys'; allowed: GET."),
        ("/v1/nothing", OTHER_ALLOWED, "POST", "",
         "Method 'POST' is not allowed on '/v1/nothing'; allowed: none."),
    ],
    ids=["foreign-origin", "null-origin", "api-key-header", "wrong-method", "keys-delete", "unknown-path"],
)
def test_preflight_rejected(
    gateway: GatewayProcess, path: str, origin: str, method: str, headers: str, detail: str
) -> None:
    response = preflight(gateway, path, origin, method, headers)

    assert_problem(response, 403, "cors-preflight-rejected", detail)
    assert_no_cors_grant(response)
    assert response.headers["Vary"] == PREFLIGHT_VARY


# Actual requests.

def test_allowed_origin_reads_response(gateway: GatewayProcess, site: StaticSite) -> None:
    response = requests.post(f"{gateway.url}/v1/tokens", json={"playback_id": FREE_ID},
                             headers={"Origin": site.origin, "X-Request-Id": "cors-1"}, timeout=10)

    assert response.status_code == 200
    assert response.json()["rule"] == "free-anonymous"
    assert response.headers["Access-Control-Allow-Origin"] == site.origin
    assert response.headers["Access-Control-Expose-Headers"] == "X-Request-Id, Retry-After"
    assert response.headers["Vary"] == "Origin"
    assert response.headers["X-Request-Id"] == "cors-1"
    assert "Access-Control-Allow-Credentials" not in response.headers


@pytest.mark.parametrize("origin", [FOREIGN, "null", None])
def test_other_origins_get_no_grant(gateway: GatewayProcess, origin: str | None) -> None:
    headers = {"Origin": origin} if origin is not None else {}
    response = requests.post(f"{gateway.url}/v1/tokens", json={"playback_id": FREE_ID}, headers=headers, timeout=10)

    # The gateway still returns the body, because the browser, not the server, withholds it from the page.
    assert response.status_code == 200
    assert_no_cors_grant(response)
    assert response.headers["Vary"] == "Origin"


def test_errors_carry_cors_headers(gateway: GatewayProcess, issuer: ViewerIssuer, forger: ViewerIssuer) -> None:
    origin = {"Origin": OTHER_ALLOWED}
    forged = requests.post(f"{gateway.url}/v1/tokens", json={"playback_id": FREE_ID},
                           headers={**origin, "Authorization": f"Bearer {forger.token('viewer-c')}"}, timeout=10)
    missing = requests.get(f"{gateway.url}/v1/nothing", headers=origin, timeout=10)

    token = issuer.token("viewer-cors-limited")
    statuses = [
        requests.post(f"{gateway.url}/v1/tokens", json={"playback_id": FREE_ID},
                      headers={**origin, "Authorization": f"Bearer {token}"}, timeout=10).status_code
        for _ in range(3)
    ]
    limited = requests.post(f"{gateway.url}/v1/tokens", json={"playback_id": FREE_ID},
                            headers={**origin, "Authorization": f"Bearer {token}"}, timeout=10)

    assert_problem(forged, 401, "invalid-token",
                   "The viewer JWT was rejected: The viewer token's signature is invalid.")
    assert_problem(missing, 404, "not-found", "No route matches this path: see /openapi.json for the routes.")
    assert statuses == [200, 200, 200]
    retry_after = limited.headers["Retry-After"]
    assert_problem(limited, 429, "rate-limited",
                   f"Too many requests for this viewer: retry after {retry_after} seconds.", limit="viewer")
    for response in (forged, missing, limited):
        assert response.headers["Access-Control-Allow-Origin"] == OTHER_ALLOWED
        # The page can read Retry-After only because it is exposed.
        assert response.headers["Access-Control-Expose-Headers"] == "X-Request-Id, Retry-After"
        assert response.headers["Vary"] == "Origin"
        assert "Access-Control-Allow-Credentials" not in response.headers


# A real browser.

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>gateway CORS check</title></head>
<body>
<pre id="outcome" data-state="pending">pending</pre>
<script>
const outcome = document.getElementById("outcome");
fetch(%(gateway)s + "/v1/tokens", {
  method: "POST",
  headers: {
    "Authorization": "Bearer " + %(jwt)s,
    "Content-Type": "application/json",
    "X-Request-Id": "browser-check-1",
  },
  body: JSON.stringify({playback_id: %(playback_id)s, audiences: ["video", "thumbnail"]}),
})
  .then(async (response) => {
    const data = await response.json();
    outcome.textContent = JSON.stringify({
      status: response.status,
      requestId: response.headers.get("X-Request-Id"),
      rule: data.rule,
      tokens: data.tokens,
    });
    outcome.dataset.state = "read";
  })
  .catch((error) => {
    outcome.textContent = error.name + ": " + error.message;
    outcome.dataset.state = "blocked";
  });
</script>
</body></html>
"""

OUTCOME = re.compile(r'<pre id="outcome" data-state="(?P<state>[a-z]+)">(?P<text>.*?)</pre>', re.DOTALL)


def write_page(site_root: Path, name: str, gateway: GatewayProcess, viewer_jwt: str) -> None:
    (site_root / name).write_text(PAGE % {
        "gateway": json.dumps(gateway.url), "jwt": json.dumps(viewer_jwt), "playback_id": json.dumps(FREE_ID),
    }, encoding="utf-8")


def run_page(binary: str, url: str, profile: Path) -> tuple[str, str]:
    dom = dump_dom(binary, url, profile)
    match = OUTCOME.search(dom)
    assert match is not None, dom[-2000:]
    return match["state"], html.unescape(match["text"])


def metric(gateway: GatewayProcess, labels: str) -> float:
    text = requests.get(f"{gateway.url}/metrics", timeout=10).text
    pattern = rf"^playback_gateway_requests_total\{{{re.escape(labels)}\}} ([0-9.e+]+)$"
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_browser_reads_tokens_only_when_allowed(
    gateways: dict[str, GatewayProcess], site: StaticSite, tmp_path: Path, issuer: ViewerIssuer,
    mux_key: SigningKey,
) -> None:
    binary = chromium_path()
    if binary is None:
        pytest.fail("chromium is missing: install it with `apt-get install -y chromium` (.ci/ensure-redis does)")
    write_page(site.root, "allowed.html", gateways["allowed"], issuer.token("viewer-browser"))
    write_page(site.root, "foreign.html", gateways["foreign"], issuer.token("viewer-browser-2"))

    allowed_state, allowed_text = run_page(binary, f"{site.origin}/allowed.html", tmp_path / "profile-allowed")
    foreign_state, foreign_text = run_page(binary, f"{site.origin}/foreign.html", tmp_path / "profile-foreign")

    assert allowed_state == "read"
    result: dict[str, Any] = json.loads(allowed_text)
    assert result["status"] == 200
    assert result["requestId"] == "browser-check-1"
    assert result["rule"] == "free-signed-in"
    assert sorted(result["tokens"]) == ["thumbnail", "video"]
    video = jwt.decode(result["tokens"]["video"], mux_key.private_key.public_key(), algorithms=["RS256"],
                       options={"verify_aud": False})
    assert video["sub"] == FREE_ID
    assert video["aud"] == "v"

    assert foreign_state == "blocked"
    assert foreign_text == "TypeError: Failed to fetch"
    # The browser stopped at the rejected preflight and never sent the POST.
    foreign = gateways["foreign"]
    assert metric(foreign, 'method="OPTIONS",route="/v1/tokens",status="403"') == 1
    assert metric(foreign, 'method="POST",route="/v1/tokens",status="200"') == 0
