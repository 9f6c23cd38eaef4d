"""Health, readiness, metrics and the OpenAPI document: no authentication."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response

from gateway.api.context import services
from gateway.api.openapi import openapi_document
from gateway.keys.provider import NoSigningKeyError
from gateway.observability.metrics import exposition

ops_blueprint = Blueprint("ops", __name__)


@ops_blueprint.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@ops_blueprint.get("/readyz")
def readyz() -> tuple[dict[str, Any], int]:
    gateway = services()
    reasons: list[str] = []
    warnings: list[str] = []

    signing_key = None
    try:
        signing_key = gateway.keys.active().kid
        warnings.extend(gateway.keys.warnings())
    except NoSigningKeyError as error:
        reasons.append(f"no usable signing key: {error}")

    policy_version = None
    try:
        gateway.policies.maybe_reload()
        policy_version = gateway.policies.policy.version
    except Exception as error:  # noqa: BLE001 - readiness reports any failure as a reason
        reasons.append(f"no valid policy: {type(error).__name__}")

    status = "ok" if not reasons else "unavailable"
    body = {
        "status": status,
        "signing_key": signing_key,
        "policy_version": policy_version,
        "warnings": warnings,
        "reasons": reasons,
    }
    return body, 200 if not reasons else 503


@ops_blueprint.get("/metrics")
def metrics() -> Response:
    payload, content_type = exposition()
    return Response(payload, content_type=content_type)


@ops_blueprint.get("/openapi.json")
def openapi() -> dict[str, Any]:
    return openapi_document()
