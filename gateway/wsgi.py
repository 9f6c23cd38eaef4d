"""WSGI entry point for gunicorn: one app per worker, built from the environment."""

from gateway.app import create_app

app = create_app()
