"""Run an already-built gateway app under gunicorn with the gateway's own configuration."""

from __future__ import annotations

from typing import Any

from flask import Flask
from gunicorn.app.base import Application


class GatewayServer(Application):  # type: ignore[misc]
    """gunicorn with gateway/gunicorn_conf.py, serving `app` from the master, forked to workers."""

    def __init__(self, app: Flask, overrides: dict[str, Any]) -> None:
        self._app = app
        self._overrides = overrides
        super().__init__(usage="playback-gateway serve [--bind HOST:PORT] [--workers N] [--threads N]")

    def init(self, parser: Any, opts: Any, args: Any) -> None:
        return None

    def load_config(self) -> None:
        # Command-line parsing is playback-gateway's job, so gunicorn reads only its config module.
        self.load_config_from_module_name_or_filename("python:gateway.gunicorn_conf")
        for name, value in self._overrides.items():
            self.cfg.set(name, value)

    def load(self) -> Flask:
        return self._app
