"""POST /v1/tokens, /v1/tokens/batch and /v1/decisions/explain: thin wrappers on TokenService."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, request

from gateway.api.context import current_caller, require_client_scope, services
from gateway.api.guards import enforce_rate_limits, read_json_body, request_country
from gateway.api.problems import Problem, invalid_request
from gateway.api.schemas import parse_batch, parse_token_request
from gateway.keys.provider import NoSigningKeyError
from gateway.observability.logging import log_event
from gateway.tokens.service import (
    InvalidClaimsError,
    PolicyDeniedError,
    RequestContext,
    TokenPlan,
    TokenRequest,
    denial_detail,
)

tokens_blueprint = Blueprint("tokens", __name__)
logger = logging.getLogger(__name__)


@tokens_blueprint.post("/v1/tokens")
def mint_tokens() -> tuple[dict[str, Any], int]:
    body = _authorized_body()
    token_request = parse_token_request(body, may_assert_viewer=_may_assert_viewer(), has_viewer_jwt=_has_viewer_jwt())
    enforce_rate_limits([token_request])
    return _issue(token_request).as_dict(), 200


@tokens_blueprint.post("/v1/tokens/batch")
def mint_batch() -> tuple[dict[str, Any], int]:
    items = parse_batch(_authorized_body())

    # Every item is parsed before the rate limits run, so each asserted viewer is charged for
    # its own items. An item that fails to parse still counts, as None.
    may_assert = _may_assert_viewer()
    parsed: list[TokenRequest | Problem] = [
        _parse_batch_item(item, may_assert, index) for index, item in enumerate(items)
    ]
    enforce_rate_limits([entry if isinstance(entry, TokenRequest) else None for entry in parsed])

    results: list[dict[str, Any]] = []
    for entry in parsed:
        if isinstance(entry, Problem):
            results.append({"error": entry.as_dict()})
            continue
        try:
            results.append(_issue(entry).as_dict())
        except Problem as problem:
            if problem.status == 503:
                # No signing key fails every item the same way, so the whole batch fails.
                raise
            results.append({"error": problem.as_dict()})
    return {"items": results}, 200


def _parse_batch_item(item: Any, may_assert_viewer: bool, index: int) -> TokenRequest | Problem:
    try:
        return parse_token_request(item, may_assert_viewer=may_assert_viewer, has_viewer_jwt=_has_viewer_jwt(),
                                   path=f"items[{index}]")
    except Problem as problem:
        return problem


@tokens_blueprint.post("/v1/decisions/explain")
def explain_decision() -> tuple[dict[str, Any], int]:
    body = _authorized_body()
    token_request = parse_token_request(body, may_assert_viewer=_may_assert_viewer(), has_viewer_jwt=_has_viewer_jwt())
    enforce_rate_limits([token_request])

    try:
        plan = services().tokens.plan(token_request, current_caller(), _request_context())
    except InvalidClaimsError as error:
        raise invalid_request(error.errors) from None
    except NoSigningKeyError:
        raise _no_signing_key() from None
    return _explanation(plan), 200


def _authorized_body() -> Any:
    """Check the caller may mint (a service client needs tokens:mint), then read the JSON body."""
    if current_caller().client is not None:
        require_client_scope("tokens:mint")
    return read_json_body()


def _has_viewer_jwt() -> bool:
    return current_caller().viewer.authenticated


def _may_assert_viewer() -> bool:
    return current_caller().has_scope("viewer:assert")


def _request_context() -> RequestContext:
    settings = services().settings
    country = request_country(request.headers.get(settings.country_header)) if settings.country_header else ""
    return RequestContext(country=country, origin=request.headers.get("Origin"))


def _issue(token_request: TokenRequest) -> Any:
    try:
        return services().tokens.issue(token_request, current_caller(), _request_context())
    except PolicyDeniedError as denial:
        raise Problem(403, "denied-by-policy", denial.detail, rule=denial.decision.rule) from None
    except InvalidClaimsError as error:
        raise invalid_request(error.errors) from None
    except NoSigningKeyError:
        raise _no_signing_key() from None


def _no_signing_key() -> Problem:
    log_event(logger, "tokens.no_signing_key", logging.ERROR)
    return Problem(
        503, "no-signing-key",
        "No usable signing key is loaded, so no token can be minted: see GET /readyz for the reason.",
        headers={"Retry-After": "5"},
    )


def _explanation(plan: TokenPlan) -> dict[str, Any]:
    decision = plan.decision
    grant = None
    if decision.grant is not None:
        grant = {
            "audiences": list(decision.grant.audiences),
            "ttl": decision.grant.ttl,
            "claims": decision.grant.claims,
        }
    explanation: dict[str, Any] = {
        "decision": decision.effect,
        "rule": decision.rule,
        "matched": list(decision.matched),
        "not_matched": [{"rule": miss.rule, "reason": miss.reason} for miss in decision.not_matched],
        "grant": grant,
        "claims": plan.claims,
        "policy_version": decision.policy_version,
    }
    if not decision.allowed:
        explanation["detail"] = denial_detail(decision)
    if decision.denied_audiences:
        explanation["denied_audiences"] = list(decision.denied_audiences)
    return explanation
