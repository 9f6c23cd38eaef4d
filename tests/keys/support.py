"""A small Flask app around the key routes, and the API keys of its clients."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import Flask, Response, g, request

from gateway.api.keys_routes import keys_blueprint
from gateway.api.problems import PROBLEM_MEDIA_TYPE, Problem
from gateway.auth.clients import ClientRegistry, new_api_key
from gateway.auth.principal import Caller
from gateway.keys.provider import KeyProvider


@dataclass
class AppServices:
    keys: KeyProvider
    key_manager: Any
    clients: ClientRegistry


@dataclass
class ApiKeys:
    admin: str
    reader: str
    rotator: str


def write_clients_file(tmp_path: Path) -> tuple[ApiKeys, Path]:
    admin, admin_hash = new_api_key()
    reader, reader_hash = new_api_key()
    rotator, rotator_hash = new_api_key()
    path = tmp_path / "clients.yaml"
    path.write_text(
        "clients:\n"
        f"  - {{id: security-team, key_sha256: {admin_hash}, scopes: [keys:read, keys:rotate, keys:revoke]}}\n"
        f"  - {{id: dashboard, key_sha256: {reader_hash}, scopes: [keys:read]}}\n"
        f"  - {{id: cron, key_sha256: {rotator_hash}, scopes: [keys:rotate]}}\n"
    )
    return ApiKeys(admin, reader, rotator), path


def build_app(keys: KeyProvider, manager: Any, clients_file: Path) -> Flask:
    app = Flask("keys-test")
    app.extensions["gateway"] = AppServices(keys, manager, ClientRegistry(clients_file))
    app.register_blueprint(keys_blueprint)

    @app.before_request
    def authenticate() -> None:
        api_key = request.headers.get("X-Api-Key")
        if api_key is None:
            return
        client = app.extensions["gateway"].clients.authenticate(api_key)
        if client is None:
            raise Problem(401, "invalid-api-key", "The API key is not valid.")
        g.caller = Caller(client=client)

    @app.errorhandler(Problem)
    def render(problem: Problem) -> Response:
        response = Response(json.dumps(problem.as_dict()), status=problem.status, mimetype=PROBLEM_MEDIA_TYPE)
        response.headers.update(problem.headers)
        return response

    return app


