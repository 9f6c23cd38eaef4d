"""The `playback-gateway` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from gateway.tokens.mux import AUDIENCES

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_STARTUP = 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return EXIT_FAILED
    return int(args.handler(args, sys.stdout))


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="playback-gateway",
        description="Mint Mux playback tokens under entitlement policies.",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the gateway under gunicorn")
    serve.add_argument("--bind", default=None, help="HOST:PORT to listen on (default 127.0.0.1:8080)")
    serve.add_argument("--workers", type=int, default=None, help="worker processes (default: CPU cores)")
    serve.add_argument("--threads", type=int, default=None, help="threads per worker (default 4)")
    serve.set_defaults(handler=_serve)

    mint = commands.add_parser("mint", help="mint tokens locally with the configured keys and policy")
    mint.add_argument("playback_id")
    mint.add_argument("--audience", action="append", choices=AUDIENCES, dest="audiences",
                      help="audience to mint; repeat for several (default: what the policy grants)")
    mint.add_argument("--ttl", type=int, help="requested lifetime in seconds (capped by the policy)")
    mint.add_argument("--viewer-id", help="viewer id the policy sees (default: anonymous)")
    mint.add_argument("--entitlement", action="append", default=[], help="viewer entitlement; repeatable")
    mint.add_argument("--country", default="", help="two-letter country code the policy sees")
    mint.set_defaults(handler=_mint)

    verify = commands.add_parser("verify", help="check a token the way Mux would")
    verify.add_argument("token")
    verify.set_defaults(handler=_verify)

    policy = commands.add_parser("policy", help="validate and test policy files")
    policy_commands = policy.add_subparsers(title="policy commands", metavar="ACTION", required=True)
    check = policy_commands.add_parser("check", help="validate policy files (exit 1 on any problem)")
    check.add_argument("path", type=Path)
    check.set_defaults(handler=_policy_check)
    test = policy_commands.add_parser("test", help="run policy test cases (exit 1 on any failure)")
    test.add_argument("path", type=Path)
    test.set_defaults(handler=_policy_test)

    keys = commands.add_parser("keys", help="list, rotate, revoke, retire and reconcile signing keys")
    _add_key_commands(keys)

    clients = commands.add_parser("clients", help="manage API clients")
    client_commands = clients.add_subparsers(title="clients commands", metavar="ACTION", required=True)
    new_key = client_commands.add_parser("new-key", help="print a new API key and its SHA-256")
    new_key.set_defaults(handler=_clients_new_key)
    return parser


def _add_key_commands(keys: argparse.ArgumentParser) -> None:
    actions = keys.add_subparsers(title="key actions", metavar="ACTION", required=True, dest="action")
    actions.add_parser("list", help="show held keys (never key material)")
    actions.add_parser("rotate", help="create a key at Mux, make it active, start the old one's grace period")
    revoke = actions.add_parser("revoke", help="delete a key at Mux now and stop using it")
    revoke.add_argument("key_id")
    actions.add_parser("retire", help="delete retiring keys whose grace period is over")
    reconcile = actions.add_parser("reconcile", help="compare Mux's keys with the keyring")
    reconcile.add_argument("--fix", action="store_true", help="delete at Mux the keys this gateway created and lost")
    keys.set_defaults(handler=_keys)


def _load_settings(out: TextIO) -> Any:
    from gateway.config import ConfigError, Settings

    try:
        return Settings.from_env()
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return None


def _build(out: TextIO, log_level: str = "WARNING") -> Any:
    from gateway.app import StartupError, build_services

    settings = _load_settings(out)
    if settings is None or not _configure_logging(settings, log_level):
        return None
    try:
        return build_services(settings)
    except StartupError as error:
        print(f"error: {error}", file=sys.stderr)
        return None


def _settings_log_level() -> str:
    return os.environ.get("GATEWAY_LOG_LEVEL", "INFO").upper()


def _configure_logging(settings: Any, level: str) -> bool:
    from gateway.observability.logging import configure_logging

    try:
        configure_logging(level, settings.audit_log_path)
    except OSError as error:
        print(f"error: GATEWAY_AUDIT_LOG {settings.audit_log_path} cannot be opened: {error.strerror}",
              file=sys.stderr)
        return False
    return True


def _serve(args: argparse.Namespace, out: TextIO) -> int:
    from gateway.gunicorn_conf import prepare_metrics_dir
    from gateway.server import GatewayServer

    prepare_metrics_dir()

    # The app is built once here, in the gunicorn master, so a bad setting stops start-up with its
    # message before any worker forks. Every worker, including one that replaces a crashed worker
    # later, then starts from this validated state instead of re-reading files broken since.
    gateway = _build(out, log_level=_settings_log_level())
    if gateway is None:
        return EXIT_STARTUP

    from gateway.app import create_app_from_services

    overrides: dict[str, Any] = {}
    if args.bind:
        overrides["bind"] = [args.bind]
    if args.workers:
        overrides["workers"] = args.workers
    if args.threads:
        overrides["threads"] = args.threads
    app = create_app_from_services(gateway)

    # Background threads started while building (the keyring watcher) would keep running in the
    # master, which serves nothing, and could hold a lock at the moment a worker forks. Each
    # worker starts its own on first use.
    stop_watcher = getattr(gateway.keys, "close", None)
    if stop_watcher is not None:
        stop_watcher()
    GatewayServer(app, overrides).run()
    return EXIT_OK


def _mint(args: argparse.Namespace, out: TextIO) -> int:
    from gateway.api.problems import FieldError
    from gateway.api.schemas import token_request_errors
    from gateway.auth.principal import Caller, Viewer
    from gateway.keys.provider import NoSigningKeyError
    from gateway.tokens.service import InvalidClaimsError, PolicyDeniedError, RequestContext, TokenRequest

    gateway = _build(out)
    if gateway is None:
        return EXIT_STARTUP

    body: dict[str, Any] = {"playback_id": args.playback_id}
    if args.audiences:
        body["audiences"] = args.audiences
    if args.ttl is not None:
        body["ttl"] = args.ttl
    errors: list[FieldError] = token_request_errors(body)
    if errors:
        for error in errors:
            print(f"error: {error.field} {error.message}", file=sys.stderr)
        return EXIT_FAILED

    viewer = Viewer(id=args.viewer_id, authenticated=args.viewer_id is not None,
                    entitlements=tuple(args.entitlement))
    request = TokenRequest(playback_id=args.playback_id,
                           audiences=tuple(args.audiences) if args.audiences else None, ttl=args.ttl)
    try:
        result = gateway.tokens.issue(request, Caller(viewer=viewer), RequestContext(country=args.country.upper()))
    except PolicyDeniedError as denial:
        print(f"denied: {denial.detail}", file=sys.stderr)
        return EXIT_FAILED
    except InvalidClaimsError as error:
        for item in error.errors:
            print(f"error: {item.field} {item.message}", file=sys.stderr)
        return EXIT_FAILED
    except NoSigningKeyError as error:
        print(f"error: no usable signing key: {error}", file=sys.stderr)
        return EXIT_FAILED

    json.dump(result.as_dict(), out, indent=2)
    out.write("\n")
    for warning in gateway.keys.warnings():
        print(f"warning: {warning}", file=sys.stderr)
    return EXIT_OK


def _verify(args: argparse.Namespace, out: TextIO) -> int:
    from gateway.tokens.inspect import inspect_token

    gateway = _build(out)
    if gateway is None:
        return EXIT_STARTUP
    report = inspect_token(args.token, gateway.keys)
    json.dump(report, out, indent=2)
    out.write("\n")
    return EXIT_OK if report["accepted"] else EXIT_FAILED


def _policy_check(args: argparse.Namespace, out: TextIO) -> int:
    from gateway.policy.commands import check_command

    return check_command(args.path, out)


def _policy_test(args: argparse.Namespace, out: TextIO) -> int:
    from gateway.policy.commands import test_command

    return test_command(args.path, out)


def _keys(args: argparse.Namespace, out: TextIO) -> int:
    from gateway.keys.commands import keys_command

    settings = _load_settings(out)
    if settings is None or not _configure_logging(settings, settings.log_level):
        return EXIT_STARTUP
    return keys_command(args, settings, out)


def _clients_new_key(args: argparse.Namespace, out: TextIO) -> int:
    from gateway.auth.clients import new_api_key

    key, digest = new_api_key()
    out.write(f"api_key: {key}\nkey_sha256: {digest}\n")
    out.write("Give the api_key to the client once; put only key_sha256 in the clients file.\n")
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
