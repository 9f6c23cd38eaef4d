"""Fuzz the public API from its own OpenAPI document with schemathesis, through a real gunicorn.

Every generated request, valid or invalid by the schema, must get a response below 500, and
every 4xx must be an RFC 9457 problem document.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import Case, GenerationMode
from schemathesis import checks as schemathesis_checks

from gateway.keys.material import SigningKey
from tests.e2e.conftest import gateway_env
from tests.support.gateway_ops import wait_for_workers
from tests.support.gateway_process import GatewayProcess
from tests.support.redis_server import RedisServer
from tests.support.viewers import ViewerIssuer

pytestmark = pytest.mark.e2e

FUZZED_OPERATIONS = [
    ("POST", "/v1/tokens"),
    ("POST", "/v1/tokens/batch"),
    ("POST", "/v1/decisions/explain"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/openapi.json"),
]
# Enough to reach every field of the request schemas a few times, small enough for a quick run.
MAX_EXAMPLES = 30
PROBLEM_FIELDS = {"type": str, "title": str, "status": int, "detail": str}
# Responses must match the document: documented status codes, media types, headers and bodies.
# schemathesis' positive_data_acceptance check is left out: JSON Schema cannot state the rules
# across fields (min below max resolution, start before end, gif length) nor the 400 for modifiers
# of an audience the policy does not grant, so some schema-valid bodies are rightly rejected.
CONFORMANCE_CHECKS = [
    schemathesis_checks.not_a_server_error,
    schemathesis_checks.status_code_conformance,
    schemathesis_checks.content_type_conformance,
    schemathesis_checks.response_headers_conformance,
    schemathesis_checks.response_schema_conformance,
]


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer, mux_key: SigningKey, issuer: ViewerIssuer
) -> Iterator[GatewayProcess]:
    redis_server.start()
    process = GatewayProcess(gateway_env(mux_key, issuer, redis_server.url), tmp_path_factory.mktemp("fuzz"))
    process.start()
    try:
        wait_for_workers(process, process.workers)
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def schema(gateway: GatewayProcess) -> schemathesis.BaseSchema:
    loaded = schemathesis.openapi.from_url(f"{gateway.url}/openapi.json", timeout=10)
    return loaded.include(path=sorted({path for _, path in FUZZED_OPERATIONS}))


def operations(schema: schemathesis.BaseSchema) -> dict[tuple[str, str], schemathesis.APIOperation]:
    found = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        found[(operation.method.upper(), operation.path)] = operation
    return found


def check_response(case: Case, response: schemathesis.Response) -> None:
    """Check one response: no 5xx, and a complete problem document for every 4xx."""
    label = f"{case.method} {case.path} -> {response.status_code}: {response.text[:300]}"
    assert response.status_code < 500, label
    if response.status_code < 400:
        return

    # schemathesis keeps headers with lowercase names and a list of values each.
    assert response.headers.get("content-type") == ["application/problem+json"], label
    problem: dict[str, Any] = response.json()
    for name, kind in PROBLEM_FIELDS.items():
        assert isinstance(problem.get(name), kind), f"{label}: {name} missing or not {kind.__name__}"
    assert problem["status"] == response.status_code, label
    assert problem["type"].startswith("https://playback-gateway.dev/problems/"), label


def test_schema_lists_fuzzed_operations(schema: schemathesis.BaseSchema) -> None:
    assert sorted(operations(schema)) == sorted(FUZZED_OPERATIONS)


# The GET operations take no input, so only the schema's valid requests exist for them.
FUZZ_CASES = [
    *[(method, path, GenerationMode.POSITIVE) for method, path in FUZZED_OPERATIONS],
    *[(method, path, GenerationMode.NEGATIVE) for method, path in FUZZED_OPERATIONS if method == "POST"],
]


@pytest.mark.parametrize(("method", "path", "mode"), FUZZ_CASES,
                         ids=[f"{method} {path} {mode.value}" for method, path, mode in FUZZ_CASES])
def test_fuzzed_requests_get_no_5xx(
    gateway: GatewayProcess, schema: schemathesis.BaseSchema, method: str, path: str, mode: GenerationMode
) -> None:
    operation = operations(schema)[(method, path)]
    statuses: list[int] = []

    # derandomize gives every run the same examples, so a failure reproduces. The phases leave
    # out shrinking, which would replay a failure dozens of times against the server.
    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def call(case: Case) -> None:
        response = case.call(base_url=gateway.url, timeout=10)
        statuses.append(response.status_code)
        check_response(case, response)
        case.validate_response(response, checks=CONFORMANCE_CHECKS)

    call()
    # A request without inputs has one form only, and a body gets the full number of examples.
    assert len(statuses) == (MAX_EXAMPLES if method == "POST" else 1)
