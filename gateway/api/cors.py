"""CORS for browser apps on the origins listed in GATEWAY_CORS_ORIGINS.

Browsers send the viewer's session JWT in the Authorization header, not in cookies, so
credentialed CORS is never enabled and Access-Control-Allow-Credentials is never sent.

A rejected preflight (foreign origin, method the route does not serve, or a request header
outside the allow list) gets a 403 problem+json without CORS headers. The browser blocks the
request either way, and the 403 body shows a developer in the network panel which check failed.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from flask import Flask, Response, json, request

from gateway.api.problems import PROBLEM_MEDIA_TYPE, Problem

DEFAULT_ALLOW_HEADERS = ("Authorization", "Content-Type", "X-Request-Id")
DEFAULT_EXPOSE_HEADERS = ("X-Request-Id", "Retry-After")
DEFAULT_MAX_AGE_SECONDS = 600

_IGNORED_METHODS = frozenset({"OPTIONS", "HEAD"})
_PREFLIGHT_VARY = ("Origin", "Access-Control-Request-Method", "Access-Control-Request-Headers")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def install_cors(
    app: Flask,
    origins: tuple[str, ...],
    *,
    allow_headers: Iterable[str] = DEFAULT_ALLOW_HEADERS,
    expose_headers: Iterable[str] = DEFAULT_EXPOSE_HEADERS,
    max_age: int = DEFAULT_MAX_AGE_SECONDS,
) -> None:
    """Respond to preflights and add CORS headers to responses for the allowed `origins`.

    Does nothing when `origins` is empty. The preflight handler is inserted as the first
    app-level before_request function, so a preflight gets its response before authentication or rate
    limiting run, whichever order they were registered in.
    """
    if not origins:
        return
    if max_age < 0:
        raise ValueError(f"max_age must not be negative, got {max_age}")

    policy = _CorsPolicy(
        origins=frozenset(normalize_origin(origin) for origin in origins),
        allow_headers={header.lower(): header for header in allow_headers},
        expose_headers=", ".join(expose_headers),
        max_age=max_age,
        app=app,
    )
    app.before_request_funcs.setdefault(None, []).insert(0, policy.answer_preflight)
    app.after_request(policy.add_response_headers)


def normalize_origin(origin: str) -> str:
    """Return `origin` as browsers serialize it: lowercase, without a default port or slash."""
    text = origin.strip().rstrip("/").lower()
    parts = urlsplit(text)
    if parts.port is not None and _DEFAULT_PORTS.get(parts.scheme) == parts.port:
        return f"{parts.scheme}://{parts.hostname}"
    return text


class _CorsPolicy:
    def __init__(
        self,
        *,
        origins: frozenset[str],
        allow_headers: dict[str, str],
        expose_headers: str,
        max_age: int,
        app: Flask,
    ) -> None:
        self._origins = origins
        self._allow_headers = allow_headers
        self._expose_headers = expose_headers
        self._max_age = max_age
        self._app = app

    def answer_preflight(self) -> Response | None:
        """Return the preflight response, or None to let a non-preflight request through."""
        if not _is_preflight():
            return None

        origin = request.headers["Origin"]
        if not self._is_allowed_origin(origin):
            return _rejection(
                f"Origin {_bounded(origin)} is not allowed to call this API from a browser: "
                "add it to GATEWAY_CORS_ORIGINS."
            )

        route_methods = self._route_methods()
        requested_method = request.headers["Access-Control-Request-Method"].strip().upper()
        if requested_method not in route_methods:
            allowed = ", ".join(route_methods) or "none"
            return _rejection(
                f"Method {_bounded(requested_method)} is not allowed on {_bounded(request.path)}; "
                f"allowed: {allowed}."
            )

        requested_headers = _requested_headers()
        disallowed = [name for name in requested_headers if name not in self._allow_headers]
        if disallowed:
            return _rejection(
                f"Request headers {_bounded(', '.join(disallowed))} are not allowed in cross-origin "
                f"requests; allowed: {', '.join(self._allow_headers.values())}."
            )

        response = Response(status=204)
        # A 204 has no body, so the default text/html Content-Type would describe nothing.
        del response.headers["Content-Type"]
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Allow-Methods"] = ", ".join(route_methods)
        if requested_headers:
            response.headers["Access-Control-Allow-Headers"] = ", ".join(requested_headers)
        response.headers["Access-Control-Max-Age"] = str(self._max_age)
        return response

    def add_response_headers(self, response: Response) -> Response:
        """Add Vary: Origin to every response, and CORS headers for an allowed origin."""
        if _is_preflight():
            # The response depends on the preflight's request headers too, so caches must key on them.
            for name in _PREFLIGHT_VARY:
                response.vary.add(name)
            return response

        response.vary.add("Origin")
        origin = request.headers.get("Origin")
        if origin is not None and self._is_allowed_origin(origin):
            response.headers["Access-Control-Allow-Origin"] = origin
            if self._expose_headers:
                response.headers["Access-Control-Expose-Headers"] = self._expose_headers
        return response

    def _is_allowed_origin(self, origin: str) -> bool:
        # "null" (sandboxed iframes, file: pages) never matches, because any page can send it.
        return origin != "null" and normalize_origin(origin) in self._origins

    def _route_methods(self) -> list[str]:
        # Empty for an unknown path and for a redirect (such as a missing trailing slash).
        adapter = self._app.create_url_adapter(request)
        methods = adapter.allowed_methods() if adapter is not None else []
        return sorted(method for method in methods if method not in _IGNORED_METHODS)


def _is_preflight() -> bool:
    return (
        request.method == "OPTIONS"
        and "Origin" in request.headers
        and "Access-Control-Request-Method" in request.headers
    )


def _requested_headers() -> list[str]:
    raw = request.headers.get("Access-Control-Request-Headers", "")
    names = (name.strip().lower() for name in raw.split(","))
    return list(dict.fromkeys(name for name in names if name))


def _rejection(detail: str) -> Response:
    problem = Problem(403, "cors-preflight-rejected", detail)
    return Response(json.dumps(problem.as_dict()), status=403, mimetype=PROBLEM_MEDIA_TYPE)


def _bounded(value: str, limit: int = 120) -> str:
    """Quote a caller-supplied value for a message, bounded in length."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
