"""The app factory: build every component once from validated settings, then wire the routes."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flask import Flask, Response, g, json, request
from werkzeug.exceptions import HTTPException

from gateway.api.context import services
from gateway.api.guards import assign_request_id, authenticate_caller, enforce_rate_limits
from gateway.api.problems import PROBLEM_MEDIA_TYPE, Problem
from gateway.auth.clients import ClientRegistry, ClientsFileError
from gateway.config import ConfigError, Settings
from gateway.keys.material import KeyMaterialError
from gateway.observability.logging import configure_logging, log_event, request_id_var
from gateway.observability.metrics import (
    DEV_KEY_IN_USE,
    POLICY_VERSION,
    REQUEST_SECONDS,
    REQUESTS,
    SIGNING_KEY_USABLE,
    labelled,
)
from gateway.services import Services
from gateway.tokens.cache import build_token_cache
from gateway.tokens.service import TokenService

if TYPE_CHECKING:
    from gateway.policy.store import PolicyStore

logger = logging.getLogger("gateway")


class StartupError(RuntimeError):
    """The gateway cannot start. The message names the invalid setting or file and the fix."""


def create_app(settings: Settings | None = None) -> Flask:
    """Build the gateway app. Raises StartupError for any invalid setting, key or policy."""
    try:
        settings = settings or Settings.from_env()
    except ConfigError as error:
        raise StartupError(str(error)) from None
    try:
        configure_logging(settings.log_level, settings.audit_log_path)
    except OSError as error:
        raise StartupError(f"GATEWAY_AUDIT_LOG {settings.audit_log_path} cannot be opened: {error.strerror}") from None
    return create_app_from_services(build_services(settings))


def create_app_from_services(gateway: Services) -> Flask:
    """Wire routes, hooks and error handlers around services that are already built."""
    app = Flask("gateway")
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["gateway"] = gateway

    _register_blueprints(app)
    _register_hooks(app)
    _register_error_handlers(app)
    _log_start(gateway)
    return app


def build_services(settings: Settings) -> Services:
    """Build and validate every component. Raises StartupError naming the broken piece."""
    from gateway.auth.viewer import ViewerVerifier
    from gateway.keys.setup import build_key_provider
    from gateway.policy.loader import PolicyLoadError
    from gateway.policy.store import PolicyStore
    from gateway.ratelimit import RateLimiter

    try:
        # Workers share the last valid policy through the data dir, so a worker that only ever saw
        # a broken edit still converges on the version the others loaded.
        policies = PolicyStore(
            settings.policy_path, settings.shadow_policy_path, last_good_dir=settings.data_dir / "policy-last-good"
        )
    except PolicyLoadError as error:
        raise StartupError(f"GATEWAY_POLICY_PATH: the policy is invalid:\n{error}") from None
    try:
        keys, key_manager = build_key_provider(settings, _longest_grant_ttl(policies))
    except KeyMaterialError as error:
        raise StartupError(f"MUX_PRIVATE_KEY is invalid: {error}") from None
    except ConfigError as error:
        raise StartupError(str(error)) from None

    try:
        # Like the policy, the last valid clients file is shared, so a revoked key stops working
        # in every worker even if some of them only saw a broken edit after the revocation.
        clients = ClientRegistry(settings.clients_file, last_good_dir=settings.data_dir / "clients-last-good")
    except ClientsFileError as error:
        raise StartupError(str(error)) from None

    try:
        viewers = ViewerVerifier.from_settings(settings)
    except ValueError as error:
        raise StartupError(str(error)) from None

    cache = build_token_cache(settings.redis_url)
    if key_manager is not None:
        key_manager.on_revoked = cache.drop_key_id
    if hasattr(keys, "add_removal_listener"):
        # Every worker and replica hears of a revocation, so each drops its own copies.
        keys.add_removal_listener(cache.drop_local_key_id)

    rate_limiter = RateLimiter(settings.redis_url, settings.rate_limits) if settings.rate_limits else None
    return Services(
        settings=settings,
        keys=keys,
        policies=policies,
        clients=clients,
        tokens=TokenService(keys, policies, cache),
        viewers=viewers,
        rate_limiter=rate_limiter,
        key_manager=key_manager,
    )


def _longest_grant_ttl(policies: PolicyStore) -> Callable[[], int]:
    """Return a function giving the longest token lifetime granted since start.

    Tokens minted under an earlier policy version can outlive a reload that shortens lifetimes,
    so a retiring key must stay valid for the longest lifetime ever granted, not the current one.
    """
    longest = policies.policy.max_grant_ttl

    def current() -> int:
        nonlocal longest
        longest = max(longest, policies.policy.max_grant_ttl)
        return longest

    return current


def _register_blueprints(app: Flask) -> None:
    from gateway.api.cors import install_cors
    from gateway.api.keys_routes import keys_blueprint
    from gateway.api.ops_routes import ops_blueprint
    from gateway.api.tokens_routes import tokens_blueprint

    app.register_blueprint(tokens_blueprint)
    app.register_blueprint(keys_blueprint)
    app.register_blueprint(ops_blueprint)
    install_cors(app, app.extensions["gateway"].settings.cors_origins)


_OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json"})
# Metric labels must stay bounded, and a client can send any method name.
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _register_hooks(app: Flask) -> None:
    @app.before_request
    def start_request() -> None:
        g.started = time.perf_counter()
        assign_request_id()
        if request.method == "OPTIONS" or request.path in _OPEN_PATHS:
            return
        services().policies.maybe_reload()
        authenticate_caller()
        if request.path.startswith("/v1/keys"):
            # Admin routes count against the client and IP limits too: reconcile calls Mux's
            # System API, whose own rate limit a looping script could otherwise use up.
            enforce_rate_limits([None])

    @app.after_request
    def finish_request(response: Response) -> Response:
        request_id = g.get("request_id")
        if request_id:
            response.headers["X-Request-Id"] = request_id
        if request.method == "OPTIONS" and response.status_code == 200 and not response.get_data():
            # Flask replies to OPTIONS itself with an empty 200 text/html page, but 204 with Allow is the norm.
            response.status_code = 204
            response.headers.pop("Content-Type", None)
        response.headers.setdefault("Cache-Control", "no-store")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")

        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        method = request.method if request.method in _KNOWN_METHODS else "other"
        labelled(REQUESTS, route, method, str(response.status_code)).inc()
        if "started" in g:
            labelled(REQUEST_SECONDS, route).observe(time.perf_counter() - g.started)
        return response

    @app.teardown_request
    def reset_request_id(_error: BaseException | None) -> None:
        token = g.pop("request_id_token", None)
        if token is not None:
            request_id_var.reset(token)


def _register_error_handlers(app: Flask) -> None:
    @app.errorhandler(Problem)
    def render_problem(problem: Problem) -> Response:
        return problem_response(problem)

    @app.errorhandler(HTTPException)
    def render_http_error(error: HTTPException) -> Response:
        status = error.code or 500
        detail = {
            404: "No route matches this path: see /openapi.json for the routes.",
            405: f"Method {request.method} is not allowed here: see /openapi.json for the methods.",
            413: "The body is too large: see GATEWAY_MAX_BODY_BYTES.",
        }.get(status, error.description or "")
        response = problem_response(Problem(status, _http_code(status), detail))
        if status == 405 and error.get_response().headers.get("Allow"):
            response.headers["Allow"] = error.get_response().headers["Allow"]
        return response

    @app.errorhandler(Exception)
    def render_unexpected(error: Exception) -> Response:
        # The stack trace goes to the log only; the caller gets the request id to report.
        logger.exception("request.unhandled_error", extra={"event": "request.unhandled_error"})
        problem = Problem(500, "internal-error",
                          f"An unexpected error occurred; report request id {g.get('request_id')}.")
        return problem_response(problem)


def problem_response(problem: Problem) -> Response:
    """Render a Problem as application/problem+json with its headers."""
    response = Response(json.dumps(problem.as_dict()), status=problem.status, mimetype=PROBLEM_MEDIA_TYPE)
    for name, value in problem.headers.items():
        response.headers[name] = value
    return response


def _http_code(status: int) -> str:
    return {404: "not-found", 405: "method-not-allowed", 413: "body-too-large"}.get(status, f"http-{status}")


def publish_state_metrics(gateway: Services) -> None:
    """Set this process's gauges for the policy version and the signing key.

    A forked gunicorn worker starts with empty gauges, so each worker calls this once it runs.
    """
    POLICY_VERSION.labels(version=gateway.policies.policy.version).set(1)
    try:
        active = gateway.keys.active()
    except Exception:  # noqa: BLE001 - any failure means no usable key; readiness reports why
        SIGNING_KEY_USABLE.set(0)
        return
    SIGNING_KEY_USABLE.set(1)
    DEV_KEY_IN_USE.set(1 if active.source == "dev" else 0)


def _log_start(gateway: Services) -> None:
    fields: dict[str, Any] = {
        "policy_version": gateway.policies.policy.version,
        "redis": bool(gateway.settings.redis_url),
        "viewer_auth": gateway.viewers is not None,
        "rotation": gateway.key_manager is not None,
    }
    try:
        fields["signing_key"] = gateway.keys.active().kid
    except Exception as error:  # noqa: BLE001 - start-up reports the state, readiness fails later
        fields["signing_key_error"] = type(error).__name__
    publish_state_metrics(gateway)
    log_event(logger, "gateway.started", **fields)
    for warning in gateway.keys.warnings():
        log_event(logger, "gateway.warning", logging.WARNING, warning=warning)
