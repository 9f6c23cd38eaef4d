"""install_cors on a minimal Flask app with a POST route, a GET route and failing routes."""

from __future__ import annotations

import json

import pytest
from flask import Flask, Response, jsonify, request
from flask.testing import FlaskClient

from gateway.api.cors import install_cors, normalize_origin

APP_ORIGIN = "https://app.example.test"
FOREIGN_ORIGIN = "https://evil.example.test"


def build_app(origins: tuple[str, ...]) -> Flask:
    app = Flask(__name__)

    @app.before_request
    def require_bearer() -> Response | None:
        # Stands in for the gateway's authentication: preflights carry no credentials.
        if request.path == "/v1/keys" and "Authorization" not in request.headers:
            response = jsonify({"status": 401})
            response.status_code = 401
            return response
        return None

    @app.post("/v1/tokens")
    def tokens() -> Response:
        response = jsonify({"tokens": {}})
        response.headers["X-Request-Id"] = "req-1"
        return response

    @app.get("/v1/keys")
    def keys() -> Response:
        return jsonify({"keys": []})

    @app.post("/v1/limited")
    def limited() -> Response:
        response = jsonify({"status": 429})
        response.status_code = 429
        response.headers["Retry-After"] = "20"
        return response

    @app.get("/v1/broken")
    def broken() -> Response:
        raise RuntimeError("boom")

    install_cors(app, origins)
    return app


@pytest.fixture
def client() -> FlaskClient:
    return build_app((APP_ORIGIN, "http://localhost:3000")).test_client()


def preflight(client: FlaskClient, path: str, origin: str, method: str, headers: str | None = None):
    request_headers = {"Origin": origin, "Access-Control-Request-Method": method}
    if headers is not None:
        request_headers["Access-Control-Request-Headers"] = headers
    return client.options(path, headers=request_headers)


def test_preflight_for_post_route(client: FlaskClient) -> None:
    response = preflight(client, "/v1/tokens", APP_ORIGIN, "POST", "authorization, Content-Type")

    assert response.status_code == 204
    assert response.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
    assert response.headers["Access-Control-Allow-Methods"] == "POST"
    assert response.headers["Access-Control-Allow-Headers"] == "authorization, content-type"
    assert response.headers["Access-Control-Max-Age"] == "600"
    assert response.headers["Vary"] == (
        "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
    )
    assert "Access-Control-Allow-Credentials" not in response.headers
    assert "Content-Type" not in response.headers
    assert response.data == b""


def test_preflight_for_get_route_skips_auth(client: FlaskClient) -> None:
    response = preflight(client, "/v1/keys", "http://localhost:3000", "GET", "authorization, x-request-id")

    assert response.status_code == 204
    assert response.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
    assert response.headers["Access-Control-Allow-Methods"] == "GET"
    assert response.headers["Access-Control-Allow-Headers"] == "authorization, x-request-id"


def test_preflight_without_request_headers(client: FlaskClient) -> None:
    response = preflight(client, "/v1/tokens", APP_ORIGIN, "POST")

    assert response.status_code == 204
    assert "Access-Control-Allow-Headers" not in response.headers


@pytest.mark.parametrize(
    ("path", "origin", "method", "headers", "detail"),
    [
        ("/v1/tokens", FOREIGN_ORIGIN, "POST", "content-type",
         "Origin 'https://evil.example.test' is not allowed to call this API from a browser: "
         "add it to GATEWAY_CORS_ORIGINS."),
        ("/v1/tokens", "null", "POST", None,
         "Origin 'null' is not allowed to call this API from a browser: add it to GATEWAY_CORS_ORIGINS."),
        ("/v1/tokens", APP_ORIGIN, "POST", "content-type, x-api-key",
         "Request headers 'x-api-key' are not allowed in cross-origin requests; allowed: "
         "Authorization, Content-Type, X-Request-Id."),
        ("/v1/tokens", APP_ORIGIN, "DELETE", None,
         "Method 'DELETE' is not allowed on '/v1/tokens'; allowed: POST."),
        ("/v1/missing", APP_ORIGIN, "POST", None,
         "Method 'POST' is not allowed on '/v1/missing'; allowed: none."),
    ],
)
def test_rejected_preflight_is_403_without_cors_headers(
    client: FlaskClient, path: str, origin: str, method: str, headers: str | None, detail: str
) -> None:
    response = preflight(client, path, origin, method, headers)

    assert response.status_code == 403
    assert response.mimetype == "application/problem+json"
    assert json.loads(response.data) == {
        "type": "https://playback-gateway.dev/problems/cors-preflight-rejected",
        "title": "Forbidden",
        "status": 403,
        "detail": detail,
    }
    assert "Access-Control-Allow-Origin" not in response.headers
    assert "Access-Control-Allow-Methods" not in response.headers
    assert "Origin" in response.headers["Vary"]


def test_actual_response_for_allowed_origin(client: FlaskClient) -> None:
    response = client.post("/v1/tokens", json={}, headers={"Origin": APP_ORIGIN})

    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
    assert response.headers["Access-Control-Expose-Headers"] == "X-Request-Id, Retry-After"
    assert response.headers["Vary"] == "Origin"
    assert "Access-Control-Allow-Credentials" not in response.headers


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("POST", "/v1/limited", 429), ("GET", "/v1/keys", 401), ("GET", "/v1/missing", 404),
     ("GET", "/v1/broken", 500)],
)
def test_error_responses_carry_cors_headers(client: FlaskClient, method: str, path: str, status: int) -> None:
    # A browser only lets the app read a 401 or 429 (and its Retry-After) when ACAO is present.
    response = client.open(path, method=method, headers={"Origin": APP_ORIGIN})

    assert response.status_code == status
    assert response.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
    assert response.headers["Access-Control-Expose-Headers"] == "X-Request-Id, Retry-After"
    assert response.headers["Vary"] == "Origin"


@pytest.mark.parametrize("headers", [{"Origin": FOREIGN_ORIGIN}, {"Origin": "null"}, {}])
def test_foreign_or_missing_origin_gets_only_vary(client: FlaskClient, headers: dict[str, str]) -> None:
    response = client.post("/v1/tokens", json={}, headers=headers)

    assert response.status_code == 200
    assert "Access-Control-Allow-Origin" not in response.headers
    assert "Access-Control-Expose-Headers" not in response.headers
    assert response.headers["Vary"] == "Origin"


def test_plain_options_request_is_not_a_preflight(client: FlaskClient) -> None:
    response = client.options("/v1/tokens", headers={"Origin": APP_ORIGIN})

    assert response.status_code == 200
    # Werkzeug lists the methods in set order, which changes between runs.
    assert sorted(response.headers["Allow"].split(", ")) == ["OPTIONS", "POST"]
    assert response.headers["Access-Control-Allow-Origin"] == APP_ORIGIN


def test_no_origins_installs_nothing() -> None:
    client = build_app(()).test_client()

    response = client.post("/v1/tokens", json={}, headers={"Origin": APP_ORIGIN})
    options = preflight(client, "/v1/tokens", APP_ORIGIN, "POST", "content-type")

    assert "Vary" not in response.headers
    assert "Access-Control-Allow-Origin" not in response.headers
    assert options.status_code == 200
    assert "Access-Control-Allow-Origin" not in options.headers


def test_configured_origin_is_normalized() -> None:
    client = build_app(("HTTPS://App.Example.Test:443",)).test_client()

    response = preflight(client, "/v1/tokens", APP_ORIGIN, "POST")

    assert response.status_code == 204
    assert response.headers["Access-Control-Allow-Origin"] == APP_ORIGIN


def test_normalize_origin() -> None:
    assert normalize_origin("https://app.example.test:443/") == "https://app.example.test"
    assert normalize_origin("http://App.Example.Test:80") == "http://app.example.test"
    assert normalize_origin("http://localhost:3000") == "http://localhost:3000"
    assert normalize_origin("https://app.example.test:8443") == "https://app.example.test:8443"


def test_negative_max_age_raises() -> None:
    with pytest.raises(ValueError, match=r"^max_age must not be negative, got -1$"):
        install_cors(Flask(__name__), (APP_ORIGIN,), max_age=-1)
