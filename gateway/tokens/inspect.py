"""Inspect a playback token and list what Mux would reject, for `playback-gateway verify`."""

from __future__ import annotations

import time
from typing import Any

import jwt

from gateway.keys.provider import KeyProvider
from gateway.tokens.mux import AUDIENCE_BY_CODE, PLAYBACK_ID_PATTERN, ClaimValueError, check_claim

_STANDARD_CLAIMS = frozenset({"sub", "aud", "exp", "kid"})


def inspect_token(token: str, keys: KeyProvider, now: float | None = None) -> dict[str, Any]:
    """Return header, claims and a list of problems; `accepted` is True when there are none."""
    now = time.time() if now is None else now
    try:
        header = jwt.get_unverified_header(token)
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as error:
        return {"accepted": False, "problems": [f"not a JWT: {error}"], "header": None, "claims": None}

    problems = _header_problems(header) + _claim_problems(claims, now)
    problems.extend(_signature_problems(token, header, claims, keys))
    return {"accepted": not problems, "problems": problems, "header": header, "claims": claims}


def _header_problems(header: dict[str, Any]) -> list[str]:
    problems = []
    if header.get("alg") != "RS256":
        problems.append(f"header alg is {header.get('alg')!r}; Mux accepts only RS256")
    if "kid" not in header:
        problems.append("header has no kid; Mux needs the signing key id in the header or the claims")
    return problems


def _claim_problems(claims: dict[str, Any], now: float) -> list[str]:
    problems = []
    audience = AUDIENCE_BY_CODE.get(claims.get("aud"))  # type: ignore[arg-type]
    if audience is None:
        problems.append(f"aud is {claims.get('aud')!r}; Mux expects one of v, t, s, g, d")

    subject = claims.get("sub")
    if not isinstance(subject, str) or not PLAYBACK_ID_PATTERN.match(subject):
        problems.append("sub is not a playback ID")

    exp = claims.get("exp")
    if isinstance(exp, bool) or not isinstance(exp, int):
        problems.append("exp must be integer Unix seconds")
    elif exp <= now:
        problems.append(f"expired {int(now - exp)} seconds ago")
    elif exp > now + 10 * 365 * 86400:
        problems.append("exp is more than ten years away; it looks like milliseconds, not seconds")

    for name in ("iat", "nbf"):
        if name in claims:
            problems.append(f"{name} is present; Mux's SDKs never send it, remove it")
    if "params" in claims:
        problems.append("modifiers are nested under 'params'; Mux reads them only at the top level")

    if audience is not None:
        for name, value in claims.items():
            if name in _STANDARD_CLAIMS or name in {"iat", "nbf", "params"}:
                continue
            try:
                check_claim(audience, name, value)
            except ClaimValueError as error:
                problems.append(f"claim {name} {error}")
    return problems


def _signature_problems(token: str, header: dict[str, Any], claims: dict[str, Any], keys: KeyProvider) -> list[str]:
    kid = header.get("kid") or claims.get("kid")
    if header.get("kid") and claims.get("kid") and header["kid"] != claims["kid"]:
        return ["kid in the header and kid in the claims differ"]
    if not kid:
        return ["the token has no kid, so its signing key cannot be found"]
    key = keys.get(str(kid))
    if key is None:
        return [f"signing key {kid!r} is not held by this gateway (unknown, revoked or retired)"]

    try:
        jwt.decode(
            token,
            key.private_key.public_key(),
            algorithms=["RS256"],
            options={"verify_signature": True, "verify_exp": False, "verify_aud": False},
        )
    except jwt.InvalidSignatureError:
        return [f"signature does not verify with key {kid!r}"]
    except jwt.PyJWTError as error:
        return [f"signature check failed: {type(error).__name__}"]
    return []
