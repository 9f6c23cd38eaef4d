"""Admin routes for the signing-key lifecycle. Responses carry key ids and dates, never key material.

| route                          | scope                                    |
| ------------------------------ | ---------------------------------------- |
| GET  /v1/keys                  | keys:read                                |
| POST /v1/keys/rotate           | keys:rotate                              |
| POST /v1/keys/<id>/revoke      | keys:revoke                              |
| POST /v1/keys/retire           | keys:rotate                              |
| GET  /v1/keys/reconcile        | keys:read, plus keys:rotate with fix=true |

`fix=true` deletes keys at Mux, so it needs the scope that may already delete keys at Mux.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue

from gateway.api.context import current_caller, require_client_scope, requires_scope, services
from gateway.api.problems import Problem
from gateway.keys.errors import KeyManagementError, PartialFailureError
from gateway.keys.manager import KeyManager

keys_blueprint = Blueprint("keys", __name__)

DISABLED_DETAIL = "key management is disabled: set MUX_TOKEN_ID and MUX_TOKEN_SECRET"
_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no", ""}


@keys_blueprint.get("/v1/keys")
@requires_scope("keys:read")
def list_keys() -> ResponseReturnValue:
    gateway = services()
    return jsonify({
        "keys": [info.as_dict() for info in gateway.keys.infos()],
        "warnings": gateway.keys.warnings(),
        "management_enabled": gateway.key_manager is not None,
    })


@keys_blueprint.post("/v1/keys/rotate")
@requires_scope("keys:rotate")
def rotate_key() -> ResponseReturnValue:
    manager, actor = _manager(), _actor()
    return jsonify(_run(lambda: manager.rotate(actor)))


@keys_blueprint.post("/v1/keys/<string:key_id>/revoke")
@requires_scope("keys:revoke")
def revoke_key(key_id: str) -> ResponseReturnValue:
    manager, actor = _manager(), _actor()
    return jsonify(_run(lambda: manager.revoke(key_id, actor)))


@keys_blueprint.post("/v1/keys/retire")
@requires_scope("keys:rotate")
def retire_keys() -> ResponseReturnValue:
    manager, actor = _manager(), _actor()
    return jsonify(_run(lambda: manager.retire(actor)))


@keys_blueprint.get("/v1/keys/reconcile")
@requires_scope("keys:read")
def reconcile_keys() -> ResponseReturnValue:
    raw = request.args.get("fix", "").strip().lower()
    if raw not in _TRUE | _FALSE:
        raise Problem(400, "invalid-request", f"fix must be true or false, got {raw[:20]!r}.")
    fix = raw in _TRUE
    if fix:
        require_client_scope("keys:rotate")

    manager, actor = _manager(), _actor()
    return jsonify(_run(lambda: manager.reconcile(fix, actor)))


def _manager() -> KeyManager:
    manager = services().key_manager
    if manager is None:
        raise Problem(503, "key-management-disabled", DISABLED_DETAIL + ".")
    return manager  # type: ignore[no-any-return]


def _actor() -> str:
    # requires_scope has already rejected requests without a service client.
    return current_caller().client_id or "unknown"


def _run(operation: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    try:
        return operation()
    except PartialFailureError as error:
        raise _problem(error, extra={"result": error.result}) from None
    except KeyManagementError as error:
        raise _problem(error) from None


def _problem(error: KeyManagementError, extra: dict[str, Any] | None = None) -> Problem:
    headers = {"Retry-After": str(error.retry_after)} if error.retry_after is not None else {}
    return Problem(error.http_status, error.code, error.message, headers=headers, extra=extra or {})
