"""Build each audience's claim set exactly as Mux expects it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.api.problems import FieldError
from gateway.tokens.mux import AUDIENCE_CODES, ClaimValueError, check_claim, check_claim_set


def validate_modifiers(audience: str, modifiers: Any, path: str) -> tuple[dict[str, Any], list[FieldError]]:
    """Return the request's valid modifier claims for one audience and the errors of the others.

    `path` is the dotted location of the object in the request body, used in error fields.
    """
    if not isinstance(modifiers, dict):
        return {}, [FieldError(path, f"must be an object of {audience} claims")]

    valid: dict[str, Any] = {}
    errors: list[FieldError] = []
    for name, value in modifiers.items():
        try:
            valid[name] = check_claim(audience, str(name), value)
        except ClaimValueError as error:
            errors.append(FieldError(f"{path}.{name}", str(error)))

    if not errors:
        errors.extend(FieldError(f"{path}.{name}", message) for name, message in check_claim_set(audience, valid))
    return valid, errors


def build_claims(
    *,
    playback_id: str,
    audience: str,
    kid: str,
    expires_at: int,
    requested: Mapping[str, Any],
    fixed: Mapping[str, Any],
) -> dict[str, Any]:
    """Return the token payload: Mux's four standard claims, then modifiers flat at the top.

    `fixed` claims come from the policy and override `requested` ones. No iat or nbf: Mux's SDKs
    omit them and Mux documents neither.
    """
    standard = {"sub": playback_id, "aud": AUDIENCE_CODES[audience], "exp": expires_at, "kid": kid}
    return {**standard, **requested, **fixed}


def merged_claim_errors(audience: str, claims: Mapping[str, Any], path: str) -> list[FieldError]:
    """Return cross-claim errors that appear only once policy claims are merged in."""
    return [FieldError(f"{path}.{name}", f"{message} (after the policy's fixed claims)")
            for name, message in check_claim_set(audience, claims)]
