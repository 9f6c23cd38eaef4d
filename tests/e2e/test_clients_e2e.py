"""Service clients through a real gunicorn: scopes on every route, asserted viewers, file reload."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests

from gateway.keys.material import SigningKey
from tests.e2e.conftest import (
    COUNTRY_HEADER,
    DRM_ID,
    FREE_ID,
    MUX_KID,
    PREMIUM_ID,
    gateway_env,
)
from tests.support.gateway_logs import log_events, wait_for_events, wait_for_workers
from tests.support.gateway_process import PROJECT_ROOT, GatewayProcess
from tests.support.problems import assert_problem
from tests.support.redis_server import RedisServer
from tests.support.service_clients import ServiceClient, new_client, write_clients_file
from tests.support.viewers import ViewerIssuer

pytestmark = pytest.mark.e2e

PARTNER_ID = "PartnerOnly0000000000000000000000000000000001"

# A second policy file beside the example policy: the partner title plays only for the two BFFs
# named here and only for viewers whose claims contain plan=family, so a decision shows that the
# policy saw request.client and viewer.claims.
PARTNER_POLICY = """\
version: 1
catalog:
  - playback_ids: [PartnerOnly0000000000000000000000000000000001]
    attributes:
      tier: partner
rules:
  - name: partner-family-plan
    effect: allow
    when: >-
      content.tier == "partner" && request.client in ["asserting-bff", "minting-bff"]
      && "plan" in viewer.claims && viewer.claims.plan == "family"
    audiences: [video]
    ttl: 10m
"""

CLIENTS = {
    "minter": new_client("minting-bff", "tokens:mint"),
    "asserter": new_client("asserting-bff", "tokens:mint", "viewer:assert"),
    "other-asserter": new_client("other-bff", "tokens:mint", "viewer:assert"),
    "assert-only": new_client("assert-only", "viewer:assert"),
    "reader": new_client("security-reader", "keys:read"),
    "rotator": new_client("security-rotator", "keys:rotate"),
    "revoker": new_client("security-revoker", "keys:revoke"),
}
UNKNOWN_KEY = new_client("not-in-the-file", "tokens:mint").key

NOT_ASSERTING = ("Only service clients with scope viewer:assert may send a viewer object: remove it, "
                 "or send the viewer's JWT in the Authorization header.")
DISABLED = "key management is disabled: set MUX_TOKEN_ID and MUX_TOKEN_SECRET."
UNKNOWN_KEY_DETAIL = "The API key is not known: check the X-Api-Key header."
NO_RULE = "No policy rule allows this request."


@pytest.fixture(scope="module")
def clients_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("clients") / "clients.yaml"
    write_clients_file(path, CLIENTS.values())
    return path


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer, mux_key: SigningKey,
    issuer: ViewerIssuer, clients_file: Path,
) -> Iterator[GatewayProcess]:
    """A gateway with the clients file, the example policy plus the partner policy, no Mux token."""
    redis_server.start()
    workdir = tmp_path_factory.mktemp("clients-gateway")
    policies = workdir / "policies"
    policies.mkdir()
    shutil.copy(PROJECT_ROOT / "policies" / "example.yaml", policies / "example.yaml")
    (policies / "partner.yaml").write_text(PARTNER_POLICY, encoding="utf-8")

    env = {
        **gateway_env(mux_key, issuer, redis_server.url),
        "GATEWAY_CLIENTS_FILE": str(clients_file),
        "GATEWAY_POLICY_PATH": str(policies),
    }
    process = GatewayProcess(env, workdir)
    process.start()
    # A worker that boots while a test has left an invalid clients file in place would stop
    # the gateway, so every worker must be up before the tests edit the file.
    wait_for_workers(process)
    yield process
    process.stop()


def call(gateway: GatewayProcess, method: str, path: str, *, body: Any = None, client: ServiceClient | None = None,
         token: str | None = None, country: str = "US", api_key: str | None = None) -> requests.Response:
    headers = {COUNTRY_HEADER: country}
    if client is not None:
        headers["X-Api-Key"] = client.key
    if api_key is not None:
        headers["X-Api-Key"] = api_key
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return requests.request(method, f"{gateway.url}{path}", json=body, headers=headers, timeout=10)


def token_claims(token: str, mux_key: SigningKey) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, mux_key.private_key.public_key(), algorithms=["RS256"],
                                        options={"verify_aud": False})
    return claims


# The scope matrix: every route, called with every kind of credential.

TOKEN_BODY = {"playback_id": FREE_ID, "audiences": ["video"]}
TOKEN_ROUTES = {
    "mint": ("POST", "/v1/tokens", TOKEN_BODY),
    "batch": ("POST", "/v1/tokens/batch", {"items": [TOKEN_BODY]}),
    "explain": ("POST", "/v1/decisions/explain", TOKEN_BODY),
}
KEY_ROUTES = {
    "list": ("GET", "/v1/keys", "keys:read"),
    "rotate": ("POST", "/v1/keys/rotate", "keys:rotate"),
    "revoke": ("POST", f"/v1/keys/{MUX_KID}/revoke", "keys:revoke"),
    "retire": ("POST", "/v1/keys/retire", "keys:rotate"),
    "reconcile": ("GET", "/v1/keys/reconcile", "keys:read"),
}
CREDENTIALS = ["none", "unknown-key", "viewer-jwt", *CLIENTS]


def send_with(gateway: GatewayProcess, issuer: ViewerIssuer, credential: str, method: str, path: str,
              body: Any = None) -> requests.Response:
    if credential == "none":
        return call(gateway, method, path, body=body)
    if credential == "unknown-key":
        return call(gateway, method, path, body=body, api_key=UNKNOWN_KEY)
    if credential == "viewer-jwt":
        return call(gateway, method, path, body=body, token=issuer.token("viewer-matrix"))
    return call(gateway, method, path, body=body, client=CLIENTS[credential])


def assert_unknown_key(response: requests.Response) -> None:
    assert_problem(response, 401, "invalid-api-key", UNKNOWN_KEY_DETAIL)
    assert response.headers["WWW-Authenticate"] == 'ApiKey realm="playback-gateway"'


def assert_missing_scope(response: requests.Response, credential: str, scope: str) -> None:
    assert_problem(response, 403, "insufficient-scope",
                   f"Client {CLIENTS[credential].id!r} lacks scope {scope}: add it to the client's scopes in "
                   "the clients file.")


@pytest.mark.parametrize("credential", CREDENTIALS)
@pytest.mark.parametrize("route", list(TOKEN_ROUTES))
def test_token_route_scopes(gateway: GatewayProcess, issuer: ViewerIssuer, route: str, credential: str) -> None:
    method, path, body = TOKEN_ROUTES[route]
    response = send_with(gateway, issuer, credential, method, path, body)

    if credential == "unknown-key":
        assert_unknown_key(response)
        return
    if credential in {"assert-only", "reader", "rotator", "revoker"}:
        assert_missing_scope(response, credential, "tokens:mint")
        return

    # Anonymous callers, viewers and clients with tokens:mint all reach the policy. Only the
    # viewer JWT makes the viewer signed in, because the clients here assert no viewer.
    assert response.status_code == 200
    expected_rule = "free-signed-in" if credential == "viewer-jwt" else "free-anonymous"
    data = response.json()
    if route == "mint":
        assert data["rule"] == expected_rule
        assert list(data["tokens"]) == ["video"]
    elif route == "batch":
        assert [item["rule"] for item in data["items"]] == [expected_rule]
    else:
        assert data["decision"] == "allow"
        assert data["rule"] == expected_rule


@pytest.mark.parametrize("credential", CREDENTIALS)
@pytest.mark.parametrize("route", list(KEY_ROUTES))
def test_key_route_scopes(gateway: GatewayProcess, issuer: ViewerIssuer, route: str, credential: str) -> None:
    method, path, scope = KEY_ROUTES[route]
    response = send_with(gateway, issuer, credential, method, path)

    if credential in {"none", "viewer-jwt"}:
        assert_problem(response, 401, "missing-api-key",
                       f"This route needs an API key with scope {scope}: send it in the X-Api-Key header.")
        assert response.headers["WWW-Authenticate"] == 'ApiKey realm="playback-gateway"'
    elif credential == "unknown-key":
        assert_unknown_key(response)
    elif scope not in CLIENTS[credential].scopes:
        assert_missing_scope(response, credential, scope)
    elif route == "list":
        # Listing needs no Mux token: it reports the keys this gateway holds.
        assert response.status_code == 200
        assert response.json() == {
            "keys": [{"id": MUX_KID, "state": "active", "source": "env", "created_at": None, "retire_after": None}],
            "warnings": [],
            "management_enabled": False,
        }
    else:
        assert_problem(response, 503, "key-management-disabled", DISABLED)


def test_malformed_api_key_is_401(gateway: GatewayProcess) -> None:
    response = call(gateway, "POST", "/v1/tokens", body=TOKEN_BODY, api_key="x" * 300)

    assert_problem(response, 401, "invalid-api-key", "The X-Api-Key header is malformed.")
    assert response.headers["WWW-Authenticate"] == 'ApiKey realm="playback-gateway"'


# Asserted viewers and forwarded viewer JWTs.

def test_asserted_viewer_gets_premium(gateway: GatewayProcess, mux_key: SigningKey) -> None:
    body = {"playback_id": PREMIUM_ID, "audiences": ["video"],
            "viewer": {"id": "viewer-1234", "entitlements": ["premium"], "claims": {"plan": "family"}}}
    started = int(time.time())
    response = call(gateway, "POST", "/v1/tokens", body=body, client=CLIENTS["asserter"])
    finished = int(time.time())

    assert response.status_code == 200
    data = response.json()
    assert data["rule"] == "premium-subscribers"
    claims = token_claims(data["tokens"]["video"], mux_key)
    assert started + 7200 <= claims.pop("exp") <= finished + 7200
    assert claims == {"sub": PREMIUM_ID, "aud": "v", "kid": MUX_KID, "max_resolution": "1080p"}


@pytest.mark.parametrize(
    ("entitlements", "rule"),
    [(["premium"], "premium-subscribers"), ([], "premium-preview")],
)
def test_forwarded_viewer_jwt_decides(
    gateway: GatewayProcess, issuer: ViewerIssuer, entitlements: list[str], rule: str
) -> None:
    body = {"playback_id": PREMIUM_ID, "audiences": ["video"]}
    response = call(gateway, "POST", "/v1/tokens", body=body, client=CLIENTS["minter"],
                    token=issuer.token("viewer-77", entitlements))

    assert response.status_code == 200
    assert response.json()["rule"] == rule


@pytest.mark.parametrize("credential", ["minter", "asserter"])
def test_forged_jwt_through_client_is_401(
    gateway: GatewayProcess, forger: ViewerIssuer, credential: str
) -> None:
    forged = forger.token("viewer-1", ["premium"])
    response = call(gateway, "POST", "/v1/tokens", body={"playback_id": FREE_ID}, client=CLIENTS[credential],
                    token=forged)

    # A valid API key does not turn a forged viewer JWT into an anonymous request.
    assert_problem(response, 401, "invalid-token",
                   "The viewer JWT was rejected: The viewer token's signature is invalid.")
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="playback-gateway", error="invalid_token"'
    assert forged not in response.text


@pytest.mark.parametrize("credential", ["none", "viewer-jwt", "minter"])
@pytest.mark.parametrize("path", ["/v1/tokens", "/v1/decisions/explain"])
def test_viewer_object_without_assert_scope(
    gateway: GatewayProcess, issuer: ViewerIssuer, credential: str, path: str
) -> None:
    body = {"playback_id": PREMIUM_ID, "viewer": {"id": "viewer-1", "entitlements": ["premium"]}}
    response = send_with(gateway, issuer, credential, "POST", path, body)

    assert_problem(response, 403, "viewer-assertion-forbidden", NOT_ASSERTING)


def test_viewer_object_in_batch_without_scope(gateway: GatewayProcess) -> None:
    body = {"items": [
        {"playback_id": FREE_ID, "audiences": ["video"]},
        {"playback_id": PREMIUM_ID, "viewer": {"id": "viewer-1", "entitlements": ["premium"]}},
    ]}
    response = call(gateway, "POST", "/v1/tokens/batch", body=body, client=CLIENTS["minter"])

    assert response.status_code == 200
    first, second = response.json()["items"]
    assert first["rule"] == "free-anonymous"
    assert second == {"error": {
        "type": "https://playback-gateway.dev/problems/viewer-assertion-forbidden",
        "title": "Forbidden", "status": 403, "detail": NOT_ASSERTING,
    }}


@pytest.mark.parametrize(
    ("viewer", "rule"),
    [
        ({"id": "viewer-5"}, "free-signed-in"),
        ({"id": "viewer-5", "authenticated": False}, "free-anonymous"),
        ({"id": None}, "free-anonymous"),
        ({}, "free-anonymous"),
    ],
)
def test_asserted_viewer_authenticated_default(
    gateway: GatewayProcess, viewer: dict[str, Any], rule: str
) -> None:
    body = {"playback_id": FREE_ID, "audiences": ["video"], "viewer": viewer}
    response = call(gateway, "POST", "/v1/tokens", body=body, client=CLIENTS["asserter"])

    assert response.status_code == 200
    assert response.json()["rule"] == rule


def test_invalid_viewer_object_is_400(gateway: GatewayProcess) -> None:
    viewer = {"id": 5, "authenticated": "yes", "entitlements": "premium", "claims": [], "role": "admin"}
    response = call(gateway, "POST", "/v1/tokens", body={"playback_id": FREE_ID, "viewer": viewer},
                    client=CLIENTS["asserter"])

    assert_problem(
        response, 400, "invalid-request",
        "Invalid fields: viewer.role, viewer.id, viewer.authenticated, viewer.entitlements, viewer.claims.",
        errors=[
            {"field": "viewer.role",
             "message": "is not a known field; allowed: authenticated, claims, entitlements, id"},
            {"field": "viewer.id", "message": "must be a string of 1 to 256 characters or null"},
            {"field": "viewer.authenticated", "message": "must be true or false"},
            {"field": "viewer.entitlements", "message": "must be a list of at most 256 non-empty strings"},
            {"field": "viewer.claims", "message": "must be an object"},
        ],
    )


def test_policy_sees_client_and_asserted_claims(gateway: GatewayProcess, mux_key: SigningKey) -> None:
    family = {"playback_id": PARTNER_ID, "viewer": {"id": "viewer-8", "claims": {"plan": "family"}}}
    solo = {"playback_id": PARTNER_ID, "viewer": {"id": "viewer-8", "claims": {"plan": "solo"}}}

    allowed = call(gateway, "POST", "/v1/tokens", body=family, client=CLIENTS["asserter"])
    other_client = call(gateway, "POST", "/v1/tokens", body=family, client=CLIENTS["other-asserter"])
    other_plan = call(gateway, "POST", "/v1/tokens", body=solo, client=CLIENTS["asserter"])

    assert allowed.status_code == 200
    assert allowed.json()["rule"] == "partner-family-plan"
    assert token_claims(allowed.json()["tokens"]["video"], mux_key)["sub"] == PARTNER_ID
    # The same viewer through another client id, and another plan through the same client, are denied.
    assert_problem(other_client, 403, "denied-by-policy", NO_RULE)
    assert_problem(other_plan, 403, "denied-by-policy", NO_RULE)


@pytest.mark.parametrize(("plan", "status"), [("family", 200), ("solo", 403)])
def test_policy_sees_forwarded_jwt_claims(
    gateway: GatewayProcess, issuer: ViewerIssuer, plan: str, status: int
) -> None:
    response = call(gateway, "POST", "/v1/tokens", body={"playback_id": PARTNER_ID}, client=CLIENTS["minter"],
                    token=issuer.token("viewer-9", plan=plan))

    assert response.status_code == status
    if status == 200:
        assert response.json()["rule"] == "partner-family-plan"
    else:
        assert_problem(response, 403, "denied-by-policy", NO_RULE)


def test_explain_shows_client_condition(gateway: GatewayProcess) -> None:
    body = {"playback_id": PARTNER_ID, "viewer": {"id": "viewer-8", "claims": {"plan": "family"}}}
    response = call(gateway, "POST", "/v1/decisions/explain", body=body, client=CLIENTS["other-asserter"])

    assert response.status_code == 200
    explanation = response.json()
    assert explanation["decision"] == "deny"
    assert explanation["rule"] is None
    assert explanation["matched"] == []
    assert {"rule": "partner-family-plan", "reason": "condition is false"} in explanation["not_matched"]


def test_batch_with_asserted_viewers(gateway: GatewayProcess, mux_key: SigningKey) -> None:
    body = {"items": [
        {"playback_id": PREMIUM_ID, "audiences": ["thumbnail"],
         "viewer": {"id": "viewer-1", "entitlements": ["premium"]}},
        {"playback_id": PREMIUM_ID, "audiences": ["video"], "viewer": {"id": "viewer-2", "entitlements": []}},
        {"playback_id": DRM_ID, "audiences": ["video"], "viewer": {"id": "viewer-2"}},
    ]}
    response = call(gateway, "POST", "/v1/tokens/batch", body=body, client=CLIENTS["asserter"])

    assert response.status_code == 200
    premium, preview, denied = response.json()["items"]
    assert premium["rule"] == "premium-subscribers"
    assert list(premium["tokens"]) == ["thumbnail"]
    assert preview["rule"] == "premium-preview"
    assert token_claims(preview["tokens"]["video"], mux_key)["asset_end_time"] == 30
    assert denied == {"error": {
        "type": "https://playback-gateway.dev/problems/denied-by-policy",
        "title": "Forbidden", "status": 403, "detail": NO_RULE,
    }}


# Reloading the clients file. These tests restore the file, so they can run in any order.

def wait_for_status(send: Any, status: int, consecutive: int = 6, timeout: float = 15.0) -> list[int]:
    """Repeat `send` until it returns `status` `consecutive` times in a row; return every status seen.

    Each gunicorn worker rereads the file on its own (at most once a second), and every call
    opens a new connection, so a run of successes covers both workers.
    """
    seen: list[int] = []
    streak = 0
    deadline = time.monotonic() + timeout
    while streak < consecutive and time.monotonic() < deadline:
        code = send().status_code
        seen.append(code)
        streak = streak + 1 if code == status else 0
        if streak == 0:
            time.sleep(0.1)
    return seen


def test_clients_file_reload_adds_and_removes(gateway: GatewayProcess, clients_file: Path) -> None:
    late = new_client("late-bff", "tokens:mint")

    def send() -> requests.Response:
        return call(gateway, "POST", "/v1/tokens", body=TOKEN_BODY, client=late)

    assert send().status_code == 401
    write_clients_file(clients_file, [*CLIENTS.values(), late])
    try:
        seen = wait_for_status(send, 200)
        assert seen[-6:] == [200] * 6
        assert set(seen) <= {401, 200}
    finally:
        write_clients_file(clients_file, CLIENTS.values())

    seen = wait_for_status(send, 401)
    assert seen[-6:] == [401] * 6
    assert_unknown_key(send())
    # The clients that stayed in the file kept working through both reloads.
    assert call(gateway, "POST", "/v1/tokens", body=TOKEN_BODY, client=CLIENTS["minter"]).status_code == 200


def test_invalid_clients_file_keeps_clients(gateway: GatewayProcess, clients_file: Path) -> None:
    original = clients_file.read_text(encoding="utf-8")
    earlier_reloads = len(log_events(gateway, "audit.clients.reload"))
    clients_file.write_text("clients:\n  - id: broken\n    scopes: [tokens:mint]\n", encoding="utf-8")
    statuses: list[int] = []

    def mint_as_minter() -> None:
        # A worker checks the file only when a request with an API key arrives.
        statuses.append(call(gateway, "POST", "/v1/tokens", body=TOKEN_BODY, client=CLIENTS["minter"]).status_code)

    try:
        reloads = wait_for_events(gateway, "audit.clients.reload", earlier_reloads + 2, while_waiting=mint_as_minter)
        for _ in range(6):
            mint_as_minter()
    finally:
        clients_file.write_text(original, encoding="utf-8")

    rejections = reloads[earlier_reloads:]
    assert [event["result"] for event in rejections] == ["rejected", "rejected"]
    assert {event["pid"] for event in rejections} == worker_pids(gateway)
    assert rejections[0]["reason"] == (
        f"{clients_file}: clients[0] (broken): key_sha256 must be 64 hex characters; "
        "create one with `playback-gateway clients new-key`"
    )
    assert set(statuses) == {200}


def worker_pids(gateway: GatewayProcess) -> set[int]:
    return {event["pid"] for event in log_events(gateway, "worker.started")}


def test_logs_hold_no_api_key_or_jwt(gateway: GatewayProcess, issuer: ViewerIssuer) -> None:
    token = issuer.token("viewer-secret")
    call(gateway, "POST", "/v1/tokens", body=TOKEN_BODY, client=CLIENTS["minter"], token=token)
    call(gateway, "POST", "/v1/tokens", body=TOKEN_BODY, api_key=UNKNOWN_KEY)
    logs = gateway.logs()

    assert "auth.api_key_rejected" in logs
    assert token not in logs
    assert UNKNOWN_KEY not in logs
    for client in CLIENTS.values():
        assert client.key not in logs
