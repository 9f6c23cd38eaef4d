"""Request hygiene and caller checks that run before a route does its work."""

from __future__ import annotations

import contextlib
import logging
import random
import re
import socket
import time
from collections.abc import Sequence
from typing import Any

from flask import g, request

from gateway.api.context import services
from gateway.api.problems import Problem
from gateway.api.schemas import parse_json_body
from gateway.auth.principal import ANONYMOUS, Caller, Viewer
from gateway.observability.logging import hash_identifier, log_event, request_id_var
from gateway.observability.metrics import COUNTRY_HEADER_INVALID
from gateway.tokens.service import TokenRequest

logger = logging.getLogger(__name__)

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# The auth scheme is case-insensitive (RFC 9110, section 11.1); the token itself is not.
_BEARER = re.compile(r"^(?i:bearer) +([A-Za-z0-9_=-]+\.[A-Za-z0-9_=-]+\.[A-Za-z0-9_=-]*)$")
# JWTs from identity providers stay well below this. A longer header is junk or an attack.
_MAX_AUTHORIZATION_BYTES = 8192
_MAX_API_KEY_BYTES = 256
_COUNTRY = re.compile(r"^[A-Z]{2}$")
# A JSON token request is a few hundred bytes; ten seconds is ample on the slowest mobile link.
BODY_READ_SECONDS = 10
_READ_CHUNK_BYTES = 65_536


def assign_request_id() -> None:
    """Accept a well-formed X-Request-Id from the caller, else generate one."""
    supplied = request.headers.get("X-Request-Id", "")
    # A request id only correlates log lines, so it needs uniqueness, not a cryptographic source.
    request_id = supplied if _REQUEST_ID.match(supplied) else f"{random.getrandbits(128):032x}"
    g.request_id = request_id
    g.request_id_token = request_id_var.set(request_id)


def authenticate_caller() -> None:
    """Set g.caller from X-Api-Key and/or a Bearer viewer JWT; anonymous when neither is sent.

    A credential that is sent and fails is always 401: an invalid viewer JWT never falls back
    to anonymous, or a forged token would still reach the policy's anonymous rules.
    """
    g.caller = Caller(viewer=ANONYMOUS)
    gateway = services()

    client = None
    api_key = request.headers.get("X-Api-Key")
    if api_key is not None:
        if len(api_key) > _MAX_API_KEY_BYTES or not api_key.strip():
            raise _invalid_api_key("The X-Api-Key header is malformed.")
        client = gateway.clients.authenticate(api_key.strip())
        if client is None:
            log_event(logger, "auth.api_key_rejected", logging.WARNING)
            raise _invalid_api_key("The API key is not known: check the X-Api-Key header.")

    viewer = ANONYMOUS
    authorization = request.headers.get("Authorization")
    if authorization is not None:
        viewer = _verified_viewer(authorization, gateway.viewers)

    g.caller = Caller(viewer=viewer, client=client)


def _verified_viewer(authorization: str, verifier: Any) -> Any:
    if len(authorization) > _MAX_AUTHORIZATION_BYTES:
        raise _unauthorized("invalid-token", "The Authorization header is too large.")
    match = _BEARER.match(authorization.strip())
    if match is None:
        raise _unauthorized("invalid-token", "The Authorization header must be 'Bearer <viewer JWT>'.")
    if verifier is None:
        raise _unauthorized(
            "viewer-tokens-disabled",
            "This gateway verifies no viewer JWTs: remove the Authorization header, or set "
            "GATEWAY_VIEWER_JWKS_URL or GATEWAY_VIEWER_PUBLIC_KEY.",
        )

    from gateway.auth.viewer import ViewerAuthError

    try:
        return verifier.verify(match.group(1))
    except ViewerAuthError as error:
        log_event(logger, "auth.viewer_rejected", logging.INFO, reason=error.reason)
        if error.reason == "keys-unavailable":
            # The identity provider's key set cannot be fetched: our problem, not the viewer's.
            raise Problem(503, "viewer-keys-unavailable", f"Viewer JWTs cannot be verified right now: {error.detail}",
                          headers={"Retry-After": "5"}) from None
        raise Problem(401, "invalid-token", f"The viewer JWT was rejected: {error.detail}",
                      headers={"WWW-Authenticate": error.www_authenticate}) from None


def _unauthorized(code: str, detail: str) -> Problem:
    return Problem(401, code, detail, headers={"WWW-Authenticate": 'Bearer realm="playback-gateway"'})


def _invalid_api_key(detail: str) -> Problem:
    # The same challenge as a route that needs an API key and got none: the fix is the X-Api-Key header.
    return Problem(401, "invalid-api-key", detail, headers={"WWW-Authenticate": 'ApiKey realm="playback-gateway"'})


def read_json_body() -> Any:
    """Return the parsed JSON body: 415 unless it is JSON, 413 over the size limit, 400 if invalid."""
    mimetype = request.mimetype or ""
    if mimetype != "application/json" and not mimetype.endswith("+json"):
        raise Problem(415, "unsupported-media-type",
                      "Send the body as JSON with the header Content-Type: application/json.")

    limit = services().settings.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
    raw = _read_body(limit + 1)
    if len(raw) > limit:
        raise _too_large(limit)
    return parse_json_body(raw)


def _read_body(max_bytes: int) -> bytes:
    """Read the body within BODY_READ_SECONDS, so a client that stalls cannot hold a thread."""
    sock = request.environ.get("gunicorn.socket")
    if sock is None:
        return request.stream.read(max_bytes)

    deadline = time.monotonic() + BODY_READ_SECONDS
    chunks: list[bytes] = []
    size = 0
    try:
        while size < max_bytes:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            sock.settimeout(remaining)
            chunk = request.stream.read(min(_READ_CHUNK_BYTES, max_bytes - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except (TimeoutError, OSError):
        log_event(logger, "request.body_timeout", logging.WARNING, received_bytes=size)
        # gunicorn ignores a Connection header from the app and would wait for the rest of the
        # body before the next request, so reading is shut down: the 408 still goes out, then the
        # connection ends.
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RD)
        raise Problem(408, "body-timeout", f"The body did not arrive within {BODY_READ_SECONDS} seconds.") from None
    finally:
        sock.settimeout(None)
    return b"".join(chunks)


def _too_large(limit: int) -> Problem:
    return Problem(413, "body-too-large",
                   f"The body is larger than {limit} bytes: send a smaller body, or fewer batch items.")


def request_country(header: str | None) -> str:
    """Return the viewer's country from the trusted header: an ISO 3166-1 alpha-2 code, or ""."""
    if header is None:
        return ""
    value = header.strip().upper()
    if _COUNTRY.match(value):
        return value
    # A list ("DE, US") or a three-letter code means the CDN appends or sends another format, and
    # guessing could open a regional block, so the country counts as unknown.
    COUNTRY_HEADER_INVALID.inc()
    log_event(logger, "request.invalid_country_header", logging.WARNING, length=len(header))
    return ""


def enforce_rate_limits(token_requests: Sequence[TokenRequest | None]) -> None:
    """Apply the viewer, client and IP limits to one request per entry of `token_requests`.

    Every entry counts against the client and IP limits. Against the viewer limit, an entry
    counts for the viewer it is for: the viewer a service client asserted in it, else the
    caller's own viewer (its JWT `sub`). None stands for a batch item that failed to parse, and
    it counts for the caller's own viewer. A client asserting many viewers therefore charges each
    of them, not itself, under the viewer limit.

    The limits are checked from the most specific to the most shared, and the first rejection
    stops the checks. So a viewer who keeps retrying past its own limit does not use up the
    allowance of the client or the address it shares with other viewers.
    """
    limiter = services().rate_limiter
    if limiter is None or not token_requests:
        return

    from gateway.ratelimit import client_ip

    caller = g.caller
    settings = services().settings
    cost = len(token_requests)
    charges: list[tuple[str, str, int]] = [
        ("viewer", viewer_id, viewer_cost)
        for viewer_id, viewer_cost in _requests_per_viewer(token_requests, caller.viewer).items()
    ]
    if caller.client is not None:
        charges.append(("client", caller.client.id, cost))
    forwarded_for = ", ".join(request.headers.getlist("X-Forwarded-For")) or None
    charges.append(("ip", client_ip(request.remote_addr or "", forwarded_for, settings.trusted_proxies), cost))

    for kind, identity, charged in charges:
        result = limiter.check(kind, identity, cost=charged)
        if not result.allowed:
            log_event(logger, "ratelimit.rejected", logging.INFO, kind=kind,
                      identity=hash_identifier(identity), limit=result.limit)
            raise Problem(
                429, "rate-limited",
                f"Too many requests for this {kind}: retry after {result.retry_after} seconds.",
                headers={"Retry-After": str(result.retry_after)},
                extra={"limit": kind},
            )


def _requests_per_viewer(token_requests: Sequence[TokenRequest | None], own_viewer: Viewer) -> dict[str, int]:
    """Count the entries per authenticated viewer id; anonymous viewers have no viewer limit."""
    counts: dict[str, int] = {}
    for token_request in token_requests:
        viewer = own_viewer
        if token_request is not None and token_request.viewer is not None:
            viewer = token_request.viewer
        if viewer.authenticated and viewer.id:
            counts[viewer.id] = counts.get(viewer.id, 0) + 1
    return counts
