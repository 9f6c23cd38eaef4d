"""The OpenAPI 3.1 document served at /openapi.json."""

from __future__ import annotations

from functools import cache
from typing import Any

from gateway import __version__
from gateway.api.schemas import MAX_BATCH_ITEMS
from gateway.tokens.mux import (
    AUDIENCES,
    BCP47_PATTERN,
    CLAIM_SPECS,
    FIT_MODES,
    GIF_MAX_PIXELS,
    MAX_EPOCH,
    MAX_IMAGE_PIXELS,
    RESOLUTIONS,
)

_PROBLEM_RESPONSES = {
    "400": "Invalid input; `errors` lists each field and how to fix it",
    "401": "Missing or invalid credentials (an invalid viewer JWT is never anonymous)",
    "403": "Denied by policy (`rule` names the rule) or by scope",
    "408": "The body did not arrive within 10 seconds",
    "413": "Body too large",
    "404": "No held key has this id",
    "409": "Another rotation is in progress; see Retry-After",
    "415": "Body is not JSON",
    "429": "Rate limited; see Retry-After",
    "502": "Mux's System API answered with an error",
    "503": "No usable signing key, key management disabled, or Redis unavailable for the lock",
}

_CLAIM_SCHEMAS: dict[str, dict[str, Any]] = {
    "max_resolution": {"enum": list(RESOLUTIONS)},
    "min_resolution": {"enum": list(RESOLUTIONS)},
    "rendition_order": {"enum": ["desc"]},
    "fit_mode": {"enum": list(FIT_MODES)},
    "rotate": {"enum": [90, 180, 270]},
    "format": {"enum": ["jpg", "png", "webp"]},
    "default_subtitles_lang": {"type": "string", "pattern": BCP47_PATTERN.pattern},
    "playback_restriction_id": {"type": "string", "minLength": 1, "maxLength": 255},
    "fps": {"type": "integer", "minimum": 1, "maximum": 30},
    "width": {"type": "integer", "minimum": 1, "maximum": MAX_IMAGE_PIXELS},
    "height": {"type": "integer", "minimum": 1, "maximum": MAX_IMAGE_PIXELS},
    "program_start_time": {"type": "integer", "minimum": 0, "maximum": MAX_EPOCH},
    "program_end_time": {"type": "integer", "minimum": 0, "maximum": MAX_EPOCH},
    "program_time": {"type": "integer", "minimum": 0, "maximum": MAX_EPOCH},
}
_BOOLEAN_CLAIMS = {"redundant_streams", "roku_trick_play", "exclude_pdt", "flip_v", "flip_h", "latest"}


def _claim_schema(audience: str, name: str) -> dict[str, Any]:
    if name in _BOOLEAN_CLAIMS:
        return {"type": "boolean", "description": CLAIM_SPECS[name].description}
    schema = _CLAIM_SCHEMAS.get(name, {"type": "number", "minimum": 0})
    if audience == "gif" and name in {"width", "height"}:
        schema = {**schema, "maximum": GIF_MAX_PIXELS}
    return {**schema, "description": CLAIM_SPECS[name].description}


def _modifier_schema(audience: str) -> dict[str, Any]:
    names = sorted(name for name, spec in CLAIM_SPECS.items() if audience in spec.audiences)
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {name: _claim_schema(audience, name) for name in names},
        "description": (
            f"Modifier claims for the {audience} token, flat in the JWT. Rules across claims (min below "
            "max resolution, start before end, a gif of 0.25 to 10 seconds) are checked too."
        ),
    }


def _token_request_schema() -> dict[str, Any]:
    properties: dict[str, Any] = {
        "playback_id": {"type": "string", "pattern": "^[A-Za-z0-9]{1,128}$"},
        "audiences": {
            "type": "array", "minItems": 1, "uniqueItems": True,
            "items": {"enum": list(AUDIENCES)},
            "description": "Default: what the policy grants among video, thumbnail and storyboard.",
        },
        "ttl": {"type": "integer", "minimum": 1,
                "description": "Requested lifetime in seconds; capped to the grant."},
        "viewer": {"$ref": "#/components/schemas/AssertedViewer"},
    }
    for audience in AUDIENCES:
        properties[audience] = _modifier_schema(audience)
    return {"type": "object", "required": ["playback_id"], "additionalProperties": False, "properties": properties}


def _problem_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["type", "title", "status", "detail"],
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "rule": {"type": "string"},
            "errors": {
                "type": "array",
                "items": {"type": "object", "required": ["field", "message"],
                          "properties": {"field": {"type": "string"}, "message": {"type": "string"}}},
            },
        },
    }


def _responses(success: dict[str, Any], codes: tuple[str, ...]) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": success}
    for code in codes:
        responses[code] = {
            "description": _PROBLEM_RESPONSES[code],
            "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
    return responses


def _json(description: str, ref: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": ref}}}}


def _body(ref: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": {"$ref": ref}}}}


_TOKEN_CODES = ("400", "401", "403", "408", "413", "415", "429", "503")
_KEY_CODES = ("400", "401", "403", "404", "409", "429", "502", "503")
_SECURITY = [{}, {"viewerJwt": []}, {"apiKey": []}, {"apiKey": [], "viewerJwt": []}]


def _key_route(summary: str, scope: str, method: str) -> dict[str, Any]:
    return {method: {
        "summary": summary,
        "description": f"Needs an API key with scope {scope}.",
        "security": [{"apiKey": []}],
        "responses": _responses(
            {"description": "Result", "content": {"application/json": {"schema": {"type": "object"}}}},
            _KEY_CODES,
        ),
    }}


@cache
def openapi_document() -> dict[str, Any]:
    """Return the OpenAPI document (built once; it depends only on code)."""
    token_response = _json("Tokens and URLs", "#/components/schemas/TokenResponse")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Playback token gateway",
            "version": __version__,
            "description": "Mints short-lived RS256 JWTs for Mux signed playback under entitlement policies.",
        },
        "paths": {
            "/v1/tokens": {"post": {
                "summary": "Mint tokens and URLs for one playback ID",
                "security": _SECURITY,
                "requestBody": _body("#/components/schemas/TokenRequest"),
                "responses": _responses(token_response, _TOKEN_CODES),
            }},
            "/v1/tokens/batch": {"post": {
                "summary": f"Mint tokens for up to {MAX_BATCH_ITEMS} requests; errors are per item",
                "security": _SECURITY,
                "requestBody": _body("#/components/schemas/BatchRequest"),
                "responses": _responses(_json("One result per item, in order", "#/components/schemas/BatchResponse"),
                                        _TOKEN_CODES),
            }},
            "/v1/decisions/explain": {"post": {
                "summary": "Explain the policy decision for a token request without signing",
                "security": _SECURITY,
                "requestBody": _body("#/components/schemas/TokenRequest"),
                "responses": _responses(_json("The decision", "#/components/schemas/Explanation"),
                                        _TOKEN_CODES),
            }},
            "/v1/keys": _key_route("List held signing keys (never key material)", "keys:read", "get"),
            "/v1/keys/rotate": _key_route("Rotate the signing key through Mux's System API", "keys:rotate", "post"),
            "/v1/keys/{key_id}/revoke": {
                **_key_route("Delete a key at Mux now and stop using it", "keys:revoke", "post"),
                "parameters": [{"name": "key_id", "in": "path", "required": True, "schema": {"type": "string"}}],
            },
            "/v1/keys/retire": _key_route("Delete retiring keys whose grace period is over", "keys:rotate", "post"),
            "/v1/keys/reconcile": _key_route("Compare Mux's keys with the keyring", "keys:read", "get"),
            "/healthz": {"get": {"summary": "Process alive", "security": [{}],
                                 "responses": {"200": {"description": "Alive"}}}},
            "/readyz": {"get": {"summary": "Ready to mint", "security": [{}], "responses": {
                "200": _json("Ready", "#/components/schemas/Readiness"),
                "503": _json("Not ready; `reasons` says why", "#/components/schemas/Readiness"),
            }}},
            "/metrics": {"get": {"summary": "Prometheus exposition", "security": [{}], "responses": {
                "200": {"description": "Metrics", "content": {"text/plain": {"schema": {"type": "string"}}}},
            }}},
            "/openapi.json": {"get": {"summary": "This document", "security": [{}], "responses": {
                "200": {"description": "OpenAPI 3.1", "content": {"application/json": {"schema": {"type": "object"}}}},
            }}},
        },
        "components": {
            "securitySchemes": {
                "viewerJwt": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-Api-Key"},
            },
            "schemas": {
                "TokenRequest": _token_request_schema(),
                "AssertedViewer": {
                    "type": "object", "additionalProperties": False,
                    "description": "Only from service clients with scope viewer:assert.",
                    "properties": {
                        "id": {"type": ["string", "null"], "minLength": 1, "maxLength": 256},
                        "authenticated": {"type": "boolean"},
                        "entitlements": {"type": "array", "maxItems": 256,
                                         "items": {"type": "string", "minLength": 1, "maxLength": 256}},
                        "claims": {"type": "object"},
                    },
                },
                "TokenResponse": {
                    "type": "object",
                    "required": ["playback_id", "tokens", "urls", "expires_at", "rule"],
                    "properties": {
                        "playback_id": {"type": "string"},
                        "tokens": {"type": "object", "additionalProperties": {"type": "string"}},
                        "urls": {"type": "object", "additionalProperties": {"type": "string", "format": "uri"}},
                        "expires_at": {"type": "integer", "description": "Earliest exp, Unix seconds"},
                        "rule": {"type": "string"},
                    },
                },
                "BatchRequest": {
                    "type": "object", "required": ["items"], "additionalProperties": False,
                    "properties": {"items": {"type": "array", "minItems": 1, "maxItems": MAX_BATCH_ITEMS,
                                             "items": {"$ref": "#/components/schemas/TokenRequest"}}},
                },
                "BatchResponse": {
                    "type": "object", "required": ["items"],
                    "properties": {"items": {"type": "array", "items": {"oneOf": [
                        {"$ref": "#/components/schemas/TokenResponse"},
                        {"type": "object", "required": ["error"],
                         "properties": {"error": {"$ref": "#/components/schemas/Problem"}}},
                    ]}}},
                },
                "Explanation": {
                    "type": "object",
                    "required": ["decision", "rule", "matched", "not_matched", "grant", "claims", "policy_version"],
                    "properties": {
                        "decision": {"enum": ["allow", "deny"]},
                        "rule": {"type": ["string", "null"]},
                        "matched": {"type": "array", "items": {"type": "string"}},
                        "not_matched": {"type": "array", "items": {"type": "object"}},
                        "grant": {"type": ["object", "null"]},
                        "claims": {"type": "object"},
                        "policy_version": {"type": "string"},
                    },
                },
                "Readiness": {
                    "type": "object",
                    "required": ["status", "signing_key", "policy_version", "warnings", "reasons"],
                    "properties": {
                        "status": {"enum": ["ok", "unavailable"]},
                        "signing_key": {"type": ["string", "null"]},
                        "policy_version": {"type": ["string", "null"]},
                        "warnings": {"type": "array", "items": {"type": "string"}},
                        "reasons": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "Problem": _problem_schema(),
            },
        },
    }
