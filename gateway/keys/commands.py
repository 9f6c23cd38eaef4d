"""`playback-gateway keys ...` and `playback-gateway clients new-key`.

Each command builds what it needs from Settings, prints JSON on success and one `error:` line
on stderr on failure. Exit codes: 0 success, 1 the operation failed, 2 usage error or key
management disabled, 3 another process is changing keys (retry later).
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from gateway.auth.clients import new_api_key
from gateway.config import ConfigError, Settings
from gateway.keys.errors import KeyManagementError, PartialFailureError, RotationInProgressError
from gateway.keys.keyring_provider import KeyringProvider
from gateway.keys.manager import KeyManager
from gateway.keys.provider import KeyProvider
from gateway.keys.setup import build_key_provider

# Used when the policy does not load: Mux's SDKs default to 7-day tokens, so a replaced key then
# outlives the tokens of any policy that grants up to 7 days.
DEFAULT_MAX_TOKEN_TTL_SECONDS = 7 * 86400

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_BUSY = 3

DISABLED_MESSAGE = "key management is disabled: set MUX_TOKEN_ID and MUX_TOKEN_SECRET"


def add_keys_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `keys` sub-commands to `parser` (the parser of `playback-gateway keys`)."""
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("list", help="show held keys: id, state, source, created_at, retire_after")
    actions.add_parser("rotate", help="create a key at Mux, make it active, start the old key's grace period")
    revoke = actions.add_parser("revoke", help="delete a key at Mux now and stop using it")
    revoke.add_argument("key_id", metavar="KEY_ID", help="id of the signing key to revoke")
    actions.add_parser("retire", help="delete retiring keys whose grace period is over")
    reconcile = actions.add_parser("reconcile", help="compare Mux's keys with the keyring")
    reconcile.add_argument(
        "--fix", action="store_true",
        help="delete at Mux the keys this gateway created and lost track of (adopts nothing)",
    )


def add_clients_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `clients` sub-commands to `parser` (the parser of `playback-gateway clients`)."""
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("new-key", help="print a fresh API key and its SHA-256 for the clients file")


def keys_command(
    args: Sequence[str] | argparse.Namespace,
    settings: Settings,
    out: TextIO | None = None,
    *,
    max_token_ttl: Callable[[], int] | None = None,
    actor: str | None = None,
    err: TextIO | None = None,
) -> int:
    """Run `keys list|rotate|revoke KEY_ID|retire|reconcile [--fix]`; return the exit code."""
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    namespace = _parse(args, add_keys_arguments, "playback-gateway keys")
    if namespace is None:
        return EXIT_USAGE

    ttl = max_token_ttl if max_token_ttl is not None else policy_max_token_ttl(settings, err)
    try:
        provider, manager = build_key_provider(settings, ttl)
    except ConfigError as error:
        print(f"error: {error}", file=err)
        return EXIT_USAGE

    try:
        return _run_keys_action(namespace, provider, manager, out, err, actor or cli_actor())
    finally:
        _close(provider, manager)


def _run_keys_action(
    namespace: argparse.Namespace,
    provider: KeyProvider,
    manager: KeyManager | None,
    out: TextIO,
    err: TextIO,
    actor: str,
) -> int:
    action = namespace.action
    if action == "list":
        _print_json(out, {"keys": [info.as_dict() for info in provider.infos()],
                          "warnings": provider.warnings()})
        return EXIT_OK
    if manager is None:
        print(f"error: {DISABLED_MESSAGE}", file=err)
        return EXIT_USAGE

    try:
        if action == "rotate":
            result: Any = manager.rotate(actor)
        elif action == "revoke":
            result = manager.revoke(namespace.key_id, actor)
        elif action == "retire":
            result = manager.retire(actor)
        else:
            result = manager.reconcile(bool(namespace.fix), actor)
    except RotationInProgressError as error:
        print(f"error: {error.message} (retry in {error.retry_after} s)", file=err)
        return EXIT_BUSY
    except PartialFailureError as error:
        _print_json(out, error.result)
        print(f"error: {error.message}", file=err)
        return EXIT_FAILED
    except KeyManagementError as error:
        print(f"error: {error.message}", file=err)
        return EXIT_FAILED

    _print_json(out, result)
    return EXIT_OK


def _close(provider: KeyProvider, manager: KeyManager | None) -> None:
    if isinstance(provider, KeyringProvider):
        provider.close()
        provider.store.close()
    if manager is not None:
        manager.client.close()


def clients_command(args: Sequence[str] | argparse.Namespace, out: TextIO | None = None) -> int:
    """Run `clients new-key`: print a fresh API key and the SHA-256 to put in the clients file."""
    out = out if out is not None else sys.stdout
    namespace = _parse(args, add_clients_arguments, "playback-gateway clients")
    if namespace is None:
        return EXIT_USAGE

    api_key, digest = new_api_key()
    print(f"api_key: {api_key}", file=out)
    print(f"key_sha256: {digest}", file=out)
    print("Give api_key to the client once; put only key_sha256 in GATEWAY_CLIENTS_FILE.", file=out)
    return EXIT_OK


def policy_max_token_ttl(settings: Settings, err: TextIO) -> Callable[[], int]:
    """Return a function giving the policy's longest grant, loading the policy on first call.

    A policy that does not load gives the 7-day default, with a warning on `err`.
    """
    loaded: list[int] = []

    def longest_grant() -> int:
        if not loaded:
            loaded.append(_load_longest_grant(settings, err))
        return loaded[0]

    return longest_grant


def _load_longest_grant(settings: Settings, err: TextIO) -> int:
    from gateway.policy.problems import PolicyLoadError
    from gateway.policy.store import PolicyStore

    try:
        longest = PolicyStore(settings.policy_path, settings.shadow_policy_path).policy.max_grant_ttl
    except (PolicyLoadError, OSError) as error:
        print(
            f"warning: the policy in {settings.policy_path} did not load ({type(error).__name__}); "
            f"replaced keys stay valid for the default {DEFAULT_MAX_TOKEN_TTL_SECONDS} s",
            file=err,
        )
        return DEFAULT_MAX_TOKEN_TTL_SECONDS
    return int(longest or 0)


def cli_actor() -> str:
    """Return the audit actor for commands run from a shell: `cli:<os user>`."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        # Containers often run under a uid without a passwd entry.
        user = f"uid{os.getuid()}"
    return f"cli:{user}"


def _parse(
    args: Sequence[str] | argparse.Namespace,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    prog: str,
) -> argparse.Namespace | None:
    if isinstance(args, argparse.Namespace):
        return args
    parser = argparse.ArgumentParser(prog=prog)
    add_arguments(parser)
    try:
        return parser.parse_args(list(args))
    except SystemExit:
        return None


def _print_json(out: TextIO, value: Any) -> None:
    out.write(json.dumps(value, indent=2, sort_keys=True) + "\n")
    out.flush()
