"""POST /v1/decisions/explain through a real gunicorn, for every case of the example policy's tests."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from gateway.keys.material import SigningKey
from tests.e2e.conftest import COUNTRY_HEADER, FREE_ID, MUX_KID, PREMIUM_ID, gateway_env
from tests.support.gateway_process import PROJECT_ROOT, GatewayProcess
from tests.support.problems import assert_problem
from tests.support.redis_server import RedisServer
from tests.support.service_clients import ServiceClient, new_client, write_clients_file
from tests.support.viewers import ViewerIssuer

pytestmark = pytest.mark.e2e

CASES_FILE = PROJECT_ROOT / "policies" / "tests" / "example.yaml"
CASES: dict[str, dict[str, Any]] = {case["name"]: case for case in yaml.safe_load(CASES_FILE.read_text())["cases"]}

RULES = ["regional-block", "before-premiere", "drm-subscribers", "premium-subscribers", "premium-preview",
         "free-signed-in", "free-anonymous"]
AUD_CODES = {"video": "v", "thumbnail": "t", "storyboard": "s", "gif": "g", "drm_license": "d"}
# 2027-03-01T18:00:00Z, the premiere in the example catalog.
PREMIERE = 1803924000
NO_RULE = "No policy rule allows this request."

EXPLAINER = new_client("explaining-bff", "tokens:mint", "viewer:assert")


def allowed(rule: str, matched: list[str], ttl: int, claims: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Return the expected outcome of an allow, where `claims` maps each granted audience to its fixed claims."""
    return {"decision": "allow", "rule": rule, "matched": matched, "ttl": ttl, "claims": claims}


def denied(rule: str | None, matched: list[str], detail: str, denied_audiences: list[str] | None = None
           ) -> dict[str, Any]:
    return {"decision": "deny", "rule": rule, "matched": matched, "detail": detail,
            "denied_audiences": denied_audiences}


PREMIERE_DENIED = denied("before-premiere", ["before-premiere", "premium-subscribers", "premium-preview"],
                         "Denied by rule 'before-premiere': This title is not available yet.")
PREMIERE_PLAYS = allowed("premium-subscribers", ["premium-subscribers", "premium-preview"], 7200,
                         {"video": {"max_resolution": "1080p"}, "thumbnail": {}, "storyboard": {}})

# Worked out by hand from policies/example.yaml: every rule whose condition holds, in file order.
EXPECTED: dict[str, dict[str, Any]] = {
    "anonymous viewer gets free title at 720p": allowed(
        "free-anonymous", ["free-anonymous"], 3600,
        {"video": {"max_resolution": "720p"}, "thumbnail": {}, "storyboard": {}}),
    "signed-in viewer gets free title at 1080p with a gif": allowed(
        "free-signed-in", ["free-signed-in", "free-anonymous"], 3600,
        {"video": {"max_resolution": "1080p"}, "gif": {}}),
    "premium subscriber gets 1080p for 2 hours": allowed(
        "premium-subscribers", ["premium-subscribers", "premium-preview"], 7200,
        {"video": {"max_resolution": "1080p"}}),
    "signed-in viewer without premium gets the preview": allowed(
        "premium-preview", ["premium-preview"], 900,
        {"video": {"asset_end_time": 30}, "thumbnail": {}, "storyboard": {"asset_end_time": 30}}),
    "anonymous viewer gets the preview of premium title": allowed(
        "premium-preview", ["premium-preview"], 900,
        {"video": {"asset_end_time": 30}, "thumbnail": {}, "storyboard": {"asset_end_time": 30}}),
    "preview does not grant a gif": denied(
        "premium-preview", ["premium-preview"],
        "Rule 'premium-preview' does not grant gif: request only the audiences it grants, or ask the policy "
        "owner for a rule that grants these.", ["gif"]),
    "blocked region denies even a subscriber": denied(
        "regional-block", ["regional-block", "premium-subscribers", "premium-preview"],
        "Denied by rule 'regional-block': This title is not available in your region."),
    "same title plays in another region": allowed(
        "premium-subscribers", ["premium-subscribers", "premium-preview"], 7200,
        {"video": {"max_resolution": "1080p"}, "thumbnail": {}, "storyboard": {}}),
    "premiere title is denied before its date": PREMIERE_DENIED,
    "premiere title plays from its date": PREMIERE_PLAYS,
    "drm subscriber gets a license token": allowed(
        "drm-subscribers", ["drm-subscribers", "premium-subscribers"], 7200,
        {"video": {"max_resolution": "1080p"}, "drm_license": {}}),
    "drm title without subscription is denied": denied(None, [], NO_RULE),
    "unknown playback id is denied": denied(None, [], NO_RULE),
}


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer, mux_key: SigningKey, issuer: ViewerIssuer
) -> Iterator[GatewayProcess]:
    redis_server.start()
    workdir: Path = tmp_path_factory.mktemp("explain")
    clients_file = workdir / "clients.yaml"
    write_clients_file(clients_file, [EXPLAINER])
    env = {**gateway_env(mux_key, issuer, redis_server.url), "GATEWAY_CLIENTS_FILE": str(clients_file)}
    process = GatewayProcess(env, workdir)
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def policy_version(gateway: GatewayProcess) -> str:
    version: str = requests.get(f"{gateway.url}/readyz", timeout=10).json()["policy_version"]
    return version


def explain(gateway: GatewayProcess, body: dict[str, Any], *, country: str | None = None, token: str | None = None,
            client: ServiceClient | None = None) -> requests.Response:
    headers: dict[str, str] = {}
    if country is not None:
        headers[COUNTRY_HEADER] = country
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if client is not None:
        headers["X-Api-Key"] = client.key
    return requests.post(f"{gateway.url}/v1/decisions/explain", json=body, headers=headers, timeout=10)


def case_request(case: dict[str, Any], issuer: ViewerIssuer, as_client: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return the body and the explain() options that put `case` to the gateway.

    `as_client` sends the case's viewer as an asserted viewer object; otherwise the viewer
    sends its own JWT (or nothing, when the case's viewer is anonymous).
    """
    request = case.get("request", {})
    body: dict[str, Any] = {"playback_id": case["playback_id"]}
    if "audiences" in request:
        body["audiences"] = request["audiences"]
    options: dict[str, Any] = {"country": request.get("country")}

    viewer = case.get("viewer")
    if as_client:
        options["client"] = EXPLAINER
        if viewer is not None:
            body["viewer"] = viewer
    elif viewer is not None:
        options["token"] = issuer.token(viewer["id"], viewer.get("entitlements", []))
    return body, options


def expected_outcome(name: str) -> dict[str, Any]:
    """Return the outcome for the real clock: the API has no way to set a case's `now`."""
    case = CASES[name]
    if "now" not in case:
        return EXPECTED[name]
    return PREMIERE_PLAYS if time.time() >= PREMIERE else PREMIERE_DENIED


def assert_explanation(explanation: dict[str, Any], expected: dict[str, Any], case: dict[str, Any],
                       policy_version: str, started: int, finished: int) -> None:
    assert explanation["decision"] == expected["decision"]
    assert explanation["rule"] == expected["rule"]
    assert explanation["matched"] == expected["matched"]
    assert explanation["not_matched"] == [
        {"rule": rule, "reason": "condition is false"} for rule in RULES if rule not in expected["matched"]
    ]
    assert explanation["policy_version"] == policy_version

    if expected["decision"] == "deny":
        assert explanation["grant"] is None
        assert explanation["claims"] == {}
        assert explanation["detail"] == expected["detail"]
        assert explanation.get("denied_audiences") == expected["denied_audiences"]
        return

    audiences = list(expected["claims"])
    assert explanation["grant"] == {"audiences": audiences, "ttl": expected["ttl"], "claims": expected["claims"]}
    assert "detail" not in explanation
    assert list(explanation["claims"]) == audiences
    for audience, claims in explanation["claims"].items():
        exp = claims.pop("exp")
        assert started + expected["ttl"] <= exp <= finished + expected["ttl"]
        assert claims == {"sub": case["playback_id"], "aud": AUD_CODES[audience], "kid": MUX_KID,
                          **expected["claims"][audience]}


def test_every_case_has_an_expectation() -> None:
    assert set(CASES) == set(EXPECTED)


@pytest.mark.parametrize("as_client", [True, False], ids=["asserted-viewer", "viewer-jwt"])
@pytest.mark.parametrize("name", list(CASES))
def test_explain_policy_case(
    gateway: GatewayProcess, issuer: ViewerIssuer, policy_version: str, name: str, as_client: bool
) -> None:
    case = CASES[name]
    body, options = case_request(case, issuer, as_client)

    started = int(time.time())
    response = explain(gateway, body, **options)
    finished = int(time.time())

    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert_explanation(response.json(), expected_outcome(name), case, policy_version, started, finished)


@pytest.mark.parametrize("name", list(CASES))
def test_expectations_agree_with_case_file(name: str) -> None:
    """Check that the hand-written outcomes above match what the case file expects."""
    case, expected = CASES[name], EXPECTED[name]
    expect = case["expect"]

    assert expect["effect"] == expected["decision"]
    if "rule" in expect:
        assert expect["rule"] == expected["rule"]
    if "ttl" in expect:
        assert expect["ttl"] in {"15m": 900, "1h": 3600, "2h": 7200}
        assert {"15m": 900, "1h": 3600, "2h": 7200}[expect["ttl"]] == expected["ttl"]
    if "audiences" in expect:
        assert expect["audiences"] == list(expected["claims"])
    if "denied_audiences" in expect:
        assert expect["denied_audiences"] == expected["denied_audiences"]
    for audience, claims in expect.get("claims", {}).items():
        for claim, value in claims.items():
            assert expected["claims"][audience].get(claim) == value


def metric_value(gateway: GatewayProcess, name: str, labels: str) -> float:
    text = requests.get(f"{gateway.url}/metrics", timeout=10).text
    match = re.search(rf"^{re.escape(name)}\{{{re.escape(labels)}\}} ([0-9.e+]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_explain_signs_nothing(gateway: GatewayProcess) -> None:
    minted = 'audience="video"'
    # One real mint first, so the counters exist and the comparison below can fail.
    mint = requests.post(f"{gateway.url}/v1/tokens", json={"playback_id": FREE_ID, "audiences": ["video"],
                                                           "ttl": 650}, timeout=10)
    before = metric_value(gateway, "playback_gateway_tokens_minted_total", minted)
    issued_before = metric_value(gateway, "playback_gateway_tokens_issued_total", minted)
    assert mint.status_code == 200
    assert before >= 1
    assert issued_before >= 1

    bodies = [{"playback_id": FREE_ID, "audiences": ["video"], "ttl": 700 + number} for number in range(5)]
    responses = [explain(gateway, body) for body in bodies]

    assert [response.status_code for response in responses] == [200] * 5
    assert all("eyJ" not in response.text for response in responses)
    assert metric_value(gateway, "playback_gateway_tokens_minted_total", minted) == before
    assert metric_value(gateway, "playback_gateway_tokens_issued_total", minted) == issued_before


def test_explain_ttl_and_modifiers(gateway: GatewayProcess) -> None:
    body = {"playback_id": FREE_ID, "audiences": ["video", "thumbnail"], "ttl": 60,
            "thumbnail": {"time": 12.5, "width": 640}, "video": {"max_resolution": "1080p"}}
    started = int(time.time())
    response = explain(gateway, body)
    finished = int(time.time())

    assert response.status_code == 200
    explanation = response.json()
    # The grant keeps the rule's lifetime, but the claims use the shorter one from the request.
    assert explanation["grant"] == {"audiences": ["video", "thumbnail"], "ttl": 3600,
                                    "claims": {"video": {"max_resolution": "720p"}, "thumbnail": {}}}
    video, thumbnail = explanation["claims"]["video"], explanation["claims"]["thumbnail"]
    assert started + 60 <= video.pop("exp") <= finished + 60
    assert started + 60 <= thumbnail.pop("exp") <= finished + 60
    # The policy's fixed max_resolution overrides the requested one.
    assert video == {"sub": FREE_ID, "aud": "v", "kid": MUX_KID, "max_resolution": "720p"}
    assert thumbnail == {"sub": FREE_ID, "aud": "t", "kid": MUX_KID, "time": 12.5, "width": 640}


def test_explain_rejects_like_tokens(gateway: GatewayProcess) -> None:
    ungranted = explain(gateway, {"playback_id": FREE_ID, "audiences": ["video"], "thumbnail": {"time": 3}})
    invalid = explain(gateway, {"playback_id": "has spaces", "ttl": 0})

    assert_problem(ungranted, 400, "invalid-request", "Invalid fields: thumbnail.", errors=[
        {"field": "thumbnail", "message": "no thumbnail token is granted here: add 'thumbnail' to audiences or "
         "remove this object"},
    ])
    assert_problem(invalid, 400, "invalid-request", "Invalid fields: playback_id, ttl.", errors=[
        {"field": "playback_id", "message": "must be a Mux playback ID: letters and digits only"},
        {"field": "ttl", "message": "must be at least 1 second"},
    ])


def test_explain_expired_viewer_jwt_is_401(gateway: GatewayProcess, issuer: ViewerIssuer) -> None:
    expired = issuer.token("viewer-1", ["premium"], exp=int(time.time()) - 3600)
    response = explain(gateway, {"playback_id": PREMIUM_ID}, token=expired)

    assert_problem(response, 401, "invalid-token", "The viewer JWT was rejected: The viewer token has expired.")
