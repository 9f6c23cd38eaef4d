"""Parse and validate request bodies into plain values, collecting every field error."""

from __future__ import annotations

import json
from typing import Any

from gateway.api.problems import FieldError, Problem, invalid_request
from gateway.auth.principal import Viewer
from gateway.tokens.claims import validate_modifiers
from gateway.tokens.mux import AUDIENCES, PLAYBACK_ID_PATTERN
from gateway.tokens.service import TokenRequest

MAX_BATCH_ITEMS = 100
MAX_JSON_DEPTH = 8
_MAX_ENTITLEMENTS = 256
_MAX_STRING = 256

_TOKEN_FIELDS = frozenset({"playback_id", "audiences", "ttl", "viewer", *AUDIENCES})
_VIEWER_FIELDS = frozenset({"id", "authenticated", "entitlements", "claims"})


def parse_json_body(raw: bytes) -> Any:
    """Decode a JSON body, rejecting invalid UTF-8, invalid JSON and deep nesting with 400."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Problem(400, "invalid-json", "The body is not valid UTF-8: send UTF-8 encoded JSON.") from None
    if not text.strip():
        raise Problem(400, "invalid-json", "The body is empty: send a JSON object.")

    try:
        document = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_unique_keys)
    except DuplicateKeyError as error:
        raise invalid_request([FieldError(error.key, "appears more than once in one object: send it once")]) from None
    except RecursionError:
        raise Problem(400, "json-too-deep", f"The body nests deeper than {MAX_JSON_DEPTH} levels.") from None
    except json.JSONDecodeError as error:
        raise Problem(400, "invalid-json",
                      f"The body is not valid JSON at line {error.lineno}, column {error.colno}.") from None
    except ValueError:
        # Python refuses integers of more than 4300 digits, and NaN or Infinity are not JSON.
        raise Problem(
            400, "invalid-json", "The body contains a number that is not valid JSON or is too large."
        ) from None

    if _depth(document) > MAX_JSON_DEPTH:
        raise Problem(400, "json-too-deep", f"The body nests deeper than {MAX_JSON_DEPTH} levels.")
    return document


class DuplicateKeyError(ValueError):
    """A JSON object with the same key twice: proxies and the gateway could read different values."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for key, value in pairs:
        if key in document:
            raise DuplicateKeyError(key)
        document[key] = value
    return document


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _depth(value: Any, level: int = 1) -> int:
    if level > MAX_JSON_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(item, level + 1) for item in value.values()), default=level)
    if isinstance(value, list):
        return max((_depth(item, level + 1) for item in value), default=level)
    return level


def parse_token_request(
    body: Any, *, may_assert_viewer: bool, has_viewer_jwt: bool = False, path: str = ""
) -> TokenRequest:
    """Return a TokenRequest, or raise a 400 Problem listing every invalid field.

    A `viewer` object from a caller without scope viewer:assert is a 403, not a 400. A `viewer`
    object beside a verified viewer JWT is a 400: silently preferring one would hide a client bug.
    """
    errors = token_request_errors(body, path)
    if errors:
        raise invalid_request(errors)
    if "viewer" in body and not may_assert_viewer:
        raise Problem(
            403, "viewer-assertion-forbidden",
            "Only service clients with scope viewer:assert may send a viewer object: remove it, "
            "or send the viewer's JWT in the Authorization header.",
        )
    if "viewer" in body and has_viewer_jwt:
        prefix = f"{path}." if path else ""
        raise invalid_request([FieldError(
            f"{prefix}viewer",
            "cannot be combined with a viewer JWT in the Authorization header: send one of them",
        )])
    return _build_request(body, path)


def token_request_errors(body: Any, path: str = "") -> list[FieldError]:
    """Return every field error of one token request body (empty when it is valid)."""
    prefix = f"{path}." if path else ""
    if not isinstance(body, dict):
        return [FieldError(path or "body", "must be a JSON object")]

    errors = [
        FieldError(f"{prefix}{name}", "is not a known field; allowed: " + ", ".join(sorted(_TOKEN_FIELDS)))
        for name in body if name not in _TOKEN_FIELDS
    ]

    playback_id = body.get("playback_id")
    if playback_id is None:
        errors.append(FieldError(f"{prefix}playback_id", "is required"))
    elif not isinstance(playback_id, str) or not PLAYBACK_ID_PATTERN.match(playback_id):
        errors.append(FieldError(f"{prefix}playback_id", "must be a Mux playback ID: letters and digits only"))

    errors.extend(_audience_errors(body.get("audiences"), f"{prefix}audiences"))
    errors.extend(_ttl_errors(body.get("ttl"), f"{prefix}ttl", "ttl" in body))
    if "viewer" in body:
        errors.extend(_viewer_errors(body["viewer"], f"{prefix}viewer"))
    for audience in AUDIENCES:
        if audience in body:
            errors.extend(validate_modifiers(audience, body[audience], f"{prefix}{audience}")[1])
    return errors


def _audience_errors(audiences: Any, field: str) -> list[FieldError]:
    if audiences is None:
        return []
    if not isinstance(audiences, list) or not audiences:
        return [FieldError(field, "must be a non-empty list of: " + ", ".join(AUDIENCES))]
    errors = [
        FieldError(f"{field}[{index}]", "must be one of: " + ", ".join(AUDIENCES))
        for index, audience in enumerate(audiences)
        if not isinstance(audience, str) or audience not in AUDIENCES
    ]
    if not errors and len(set(audiences)) != len(audiences):
        errors.append(FieldError(field, "lists an audience twice"))
    return errors


def _ttl_errors(ttl: Any, field: str, present: bool) -> list[FieldError]:
    if not present:
        return []
    # A ttl above the grant is capped to the grant, so only the type and sign are checked here.
    if isinstance(ttl, bool) or not isinstance(ttl, int):
        return [FieldError(field, "must be a positive integer number of seconds")]
    if ttl < 1:
        return [FieldError(field, "must be at least 1 second")]
    return []


def _viewer_errors(viewer: Any, field: str) -> list[FieldError]:
    if not isinstance(viewer, dict):
        return [FieldError(field, "must be an object with id, authenticated, entitlements, claims")]

    errors = [FieldError(f"{field}.{name}", "is not a known field; allowed: " + ", ".join(sorted(_VIEWER_FIELDS)))
              for name in viewer if name not in _VIEWER_FIELDS]
    viewer_id = viewer.get("id")
    if viewer_id is not None and (not isinstance(viewer_id, str) or not 1 <= len(viewer_id) <= _MAX_STRING):
        errors.append(FieldError(f"{field}.id", f"must be a string of 1 to {_MAX_STRING} characters or null"))
    if "authenticated" in viewer and not isinstance(viewer["authenticated"], bool):
        errors.append(FieldError(f"{field}.authenticated", "must be true or false"))

    entitlements = viewer.get("entitlements", [])
    valid_list = isinstance(entitlements, list) and len(entitlements) <= _MAX_ENTITLEMENTS
    if not valid_list or not all(isinstance(item, str) and 0 < len(item) <= _MAX_STRING for item in entitlements):
        errors.append(FieldError(f"{field}.entitlements",
                                 f"must be a list of at most {_MAX_ENTITLEMENTS} non-empty strings"))
    if "claims" in viewer and not isinstance(viewer["claims"], dict):
        errors.append(FieldError(f"{field}.claims", "must be an object"))
    return errors


def _build_request(body: dict[str, Any], path: str) -> TokenRequest:
    viewer = None
    if "viewer" in body:
        asserted = body["viewer"]
        viewer = Viewer(
            id=asserted.get("id"),
            # A viewer with an id is authenticated unless the client sets authenticated to false.
            authenticated=asserted.get("authenticated", asserted.get("id") is not None),
            entitlements=tuple(asserted.get("entitlements", [])),
            claims=dict(asserted.get("claims", {})),
        )

    audiences = body.get("audiences")
    return TokenRequest(
        playback_id=body["playback_id"],
        audiences=tuple(audiences) if audiences is not None else None,
        modifiers={audience: dict(body[audience]) for audience in AUDIENCES if audience in body},
        ttl=body.get("ttl"),
        viewer=viewer,
        path=path,
    )


def parse_batch(body: Any) -> list[Any]:
    """Return the raw items of a batch body, or raise 400."""
    if not isinstance(body, dict) or set(body) != {"items"}:
        raise invalid_request([FieldError("items", "the body must be an object with a single key 'items'")])
    items = body["items"]
    if not isinstance(items, list) or not items:
        raise invalid_request([FieldError("items", "must be a non-empty list of token requests")])
    if len(items) > MAX_BATCH_ITEMS:
        raise invalid_request([FieldError("items", f"must contain at most {MAX_BATCH_ITEMS} items, got {len(items)}")])
    return items
