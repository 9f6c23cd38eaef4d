"""Per-request access to the gateway's services and the authenticated caller."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import TYPE_CHECKING, Any, TypeVar, cast

from flask import current_app, g

from gateway.api.problems import Problem
from gateway.auth.principal import ANONYMOUS, Caller, Client

if TYPE_CHECKING:
    from gateway.services import Services

F = TypeVar("F", bound=Callable[..., Any])


def services() -> Services:
    """Return the services of the running app (built once by the app factory)."""
    return cast("Services", current_app.extensions["gateway"])


def current_caller() -> Caller:
    """Return the caller authenticated for this request (anonymous when nothing was sent)."""
    return cast(Caller, g.get("caller", Caller(viewer=ANONYMOUS)))


def require_client_scope(scope: str) -> Client:
    """Return the calling service client if it has `scope`; raise 401 or 403 otherwise."""
    caller = current_caller()
    if caller.client is None:
        raise Problem(
            401, "missing-api-key",
            f"This route needs an API key with scope {scope}: send it in the X-Api-Key header.",
            headers={"WWW-Authenticate": 'ApiKey realm="playback-gateway"'},
        )
    if not caller.has_scope(scope):
        raise Problem(
            403, "insufficient-scope",
            f"Client {caller.client.id!r} lacks scope {scope}: add it to the client's scopes in "
            "the clients file.",
        )
    return caller.client


def requires_scope(scope: str) -> Callable[[F], F]:
    """Decorate a view so that only service clients holding `scope` reach it."""

    def decorate(view: F) -> F:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            require_client_scope(scope)
            return view(*args, **kwargs)

        return cast(F, wrapper)

    return decorate
