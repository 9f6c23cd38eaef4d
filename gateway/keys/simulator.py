"""A local stand-in for Mux's System API signing-key endpoints, with injectable faults.

It is a real HTTP server (stdlib ThreadingHTTPServer) bound to 127.0.0.1 that checks HTTP Basic
credentials, responds with Mux's envelopes (201 create, 200 list/get, 204 delete, 401, 404,
429), paginates with `limit`/`page`, and rate-limits each client per second: POST at 1 request
per second and other verbs at 5, each with a small burst, as Mux's guide describes for its API.

Faults are queued per operation (`create`, `list`, `get`, `delete`, or `any`) and consumed in
order, from Python (`Simulator.inject`) or over HTTP (`POST /_sim/faults`), so tests that run
gateway processes separately can use them too:

- `latency`: perform the operation, then wait `seconds` before answering;
- `error`: answer `status` (default 503) without performing the operation;
- `rate_limit`: answer 429, with `Retry-After: retry_after` when given;
- `malformed`: perform the operation, then answer 2xx with a body that is not JSON;
- `lost_response`: perform the operation, then close the connection without an answer.

Run `python -m gateway.keys.simulator --port 8081` for local development, or `--demo` to start
the gateway against it (see `gateway.keys.demo`). The `/_sim/` control routes are unauthenticated: the server only ever
binds to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import math
import os
import secrets
import string
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.keys.material import generate_rsa_key, pkcs1_pem

HOST = "127.0.0.1"
SIGNING_KEYS_PATH = "/system/v1/signing-keys"
FAULT_KINDS = ("latency", "error", "rate_limit", "malformed", "lost_response")
OPERATIONS = ("create", "list", "get", "delete", "any")
MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 25
_ID_ALPHABET = string.ascii_letters + string.digits


@dataclass
class Fault:
    """One injected fault, consumed by the next `count` matching requests."""

    kind: str
    operation: str = "any"
    count: int = 1
    status: int = 503
    seconds: float = 0.0
    retry_after: int | None = None

    @classmethod
    def from_json(cls, item: Any) -> Fault:
        if not isinstance(item, dict):
            raise ValueError("a fault must be a JSON object")
        kind = item.get("kind")
        if kind not in FAULT_KINDS:
            raise ValueError(f"fault kind must be one of {', '.join(FAULT_KINDS)}, got {kind!r}")
        operation = item.get("operation", "any")
        if operation not in OPERATIONS:
            raise ValueError(f"fault operation must be one of {', '.join(OPERATIONS)}, got {operation!r}")
        count = int(item.get("count", 1))
        status = int(item.get("status", 503))
        if count < 1 or not 400 <= status <= 599:
            raise ValueError("fault count must be at least 1 and status between 400 and 599")
        retry_after = item.get("retry_after")
        return cls(
            kind=kind, operation=operation, count=count, status=status,
            seconds=float(item.get("seconds", 0.0)),
            retry_after=int(retry_after) if retry_after is not None else None,
        )


@dataclass
class SimulatedKey:
    """A key the simulator holds. The private key is kept so tests can check signatures."""

    kid: str
    created_at: int
    private_key: rsa.RSAPrivateKey = field(repr=False)

    def public_pem(self) -> str:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()


class _TokenBucket:
    """`rate` requests per second with bursts of up to `burst`."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.updated = time.monotonic()

    def take(self) -> float:
        """Take one token; return 0 on success, else the seconds until one is available."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class Simulator:
    """The System API simulator: keys, faults, rate limits and a request log."""

    def __init__(
        self,
        token_id: str | None = None,
        token_secret: str | None = None,
        *,
        port: int = 0,
        post_rate: float = 1.0,
        post_burst: int = 5,
        other_rate: float = 5.0,
        other_burst: int = 20,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.token_id = token_id or "sim-" + secrets.token_hex(8)
        self.token_secret = token_secret or secrets.token_urlsafe(24)
        self._port = port
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: dict[str, SimulatedKey] = {}
        self._faults: list[Fault] = []
        self._buckets = {"POST": _TokenBucket(post_rate, post_burst), "OTHER": _TokenBucket(other_rate, other_burst)}
        self.requests: list[tuple[str, str, int]] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"Simulator(url={self.url if self._server else None!r}, keys={len(self._keys)})"

    # Lifecycle

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the simulator is not running: call start() first")
        return f"http://{HOST}:{self._server.server_address[1]}"

    def start(self) -> Simulator:
        handler = type("BoundHandler", (_Handler,), {"simulator": self})
        self._server = ThreadingHTTPServer((HOST, self._port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="mux-simulator", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # Test helpers

    def inject(self, kind: str, operation: str = "any", *, count: int = 1, status: int = 503,
               seconds: float = 0.0, retry_after: int | None = None) -> None:
        """Queue a fault for the next `count` requests of `operation`."""
        fault = Fault.from_json({
            "kind": kind, "operation": operation, "count": count, "status": status,
            "seconds": seconds, "retry_after": retry_after,
        })
        with self._lock:
            self._faults.append(fault)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def pending_faults(self) -> int:
        with self._lock:
            return sum(fault.count for fault in self._faults)

    def key_ids(self) -> list[str]:
        with self._lock:
            return list(self._keys)

    def get_key(self, kid: str) -> SimulatedKey | None:
        with self._lock:
            return self._keys.get(kid)

    def add_key(self, private_key: rsa.RSAPrivateKey | None = None) -> tuple[SimulatedKey, str]:
        """Create a key as if through the API; return it and its base64 PKCS#1 private key.

        Passing `private_key` skips generating one, for tests that need many keys quickly.
        """
        key = self._create_key(private_key)
        return key, base64.b64encode(pkcs1_pem(key.private_key)).decode()

    def set_rate_limits(self, post_rate: float, post_burst: int, other_rate: float, other_burst: int) -> None:
        with self._lock:
            self._buckets = {
                "POST": _TokenBucket(post_rate, post_burst), "OTHER": _TokenBucket(other_rate, other_burst),
            }

    def count_requests(self, method: str, status: int | None = None) -> int:
        with self._lock:
            return sum(1 for m, _, s in self.requests if m == method and (status is None or s == status))

    # Request handling, called by the handler

    def _create_key(self, private_key: rsa.RSAPrivateKey | None = None) -> SimulatedKey:
        private_key = private_key or generate_rsa_key()
        with self._lock:
            kid = "".join(secrets.choice(_ID_ALPHABET) for _ in range(40))
            key = SimulatedKey(kid=kid, created_at=int(self._clock()), private_key=private_key)
            self._keys[kid] = key
        return key

    def _delete_key(self, kid: str) -> bool:
        with self._lock:
            return self._keys.pop(kid, None) is not None

    def _page(self, limit: int, page: int) -> list[SimulatedKey]:
        with self._lock:
            ordered = list(self._keys.values())  # creation order
        start = (page - 1) * limit
        return ordered[start : start + limit]

    def _next_fault(self, operation: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.operation in (operation, "any"):
                    fault.count -= 1
                    if fault.count == 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def _rate_limit_wait(self, method: str) -> float:
        with self._lock:
            return self._buckets["POST" if method == "POST" else "OTHER"].take()

    def _record(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self.requests.append((method, path, status))


class _LostResponse(Exception):
    """Close the connection without a response."""


class _Handler(BaseHTTPRequestHandler):
    simulator: Simulator
    protocol_version = "HTTP/1.1"
    request_body = b""

    def log_message(self, format: str, *args: Any) -> None:
        # Requests are recorded in Simulator.requests; stderr stays quiet for test output.
        return

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        parsed = urlparse(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        # Read the whole request body first, so keep-alive connections stay in step.
        self.request_body = self.rfile.read(min(length, 65536)) if length > 0 else b""
        try:
            if parsed.path.startswith("/_sim/"):
                self._control(method, parsed.path)
                return
            self._api(method, parsed.path, parse_qs(parsed.query))
        except _LostResponse:
            self.simulator._record(method, parsed.path, 0)
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(2)

    # The System API

    def _api(self, method: str, path: str, query: dict[str, list[str]]) -> None:
        operation, kid = _operation(method, path)
        if operation is None:
            self._error(404, "not_found", "No such route")
            return
        if not self._authorized():
            self._error(401, "unauthorized", "Unauthorized request: check the access token id and secret")
            return

        wait = self.simulator._rate_limit_wait(method)
        if wait > 0:
            self._error(429, "too_many_requests", "Too many requests",
                        headers={"Retry-After": str(max(1, math.ceil(wait)))})
            return

        fault = self.simulator._next_fault(operation)
        if fault is not None and fault.kind in ("error", "rate_limit"):
            status = 429 if fault.kind == "rate_limit" else fault.status
            headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
            self._error(status, "injected_fault", f"Injected {fault.kind} fault", headers=headers)
            return

        status, body = self._perform(operation, kid, query)
        if fault is not None:
            if fault.kind == "latency":
                time.sleep(fault.seconds)
            elif fault.kind == "lost_response":
                raise _LostResponse
            elif fault.kind == "malformed" and status < 300:
                self._send(status, b"{\"data\": <not json", "application/json")
                return
        if status == 204:
            self._send(204, b"", None)
        else:
            self._json(status, body)

    def _perform(self, operation: str, kid: str | None, query: dict[str, list[str]]) -> tuple[int, Any]:
        simulator = self.simulator
        if operation == "create":
            key, private_key_b64 = simulator.add_key()
            return 201, {"data": {
                "id": key.kid, "created_at": str(key.created_at), "private_key": private_key_b64,
            }}

        if operation == "list":
            try:
                limit = int(query.get("limit", [str(DEFAULT_PAGE_SIZE)])[0])
                page = int(query.get("page", ["1"])[0])
            except ValueError:
                return _envelope(400, "invalid_parameters", "limit and page must be integers")
            if not 1 <= limit <= MAX_PAGE_SIZE or page < 1:
                return _envelope(400, "invalid_parameters", f"limit must be 1-{MAX_PAGE_SIZE} and page at least 1")
            items = simulator._page(limit, page)
            return 200, {"data": [{"id": k.kid, "created_at": str(k.created_at)} for k in items]}

        assert kid is not None
        if operation == "get":
            key = simulator.get_key(kid)
            if key is None:
                return _envelope(404, "not_found", "Signing key not found")
            return 200, {"data": {"id": key.kid, "created_at": str(key.created_at)}}

        if simulator._delete_key(kid):
            return 204, None
        return _envelope(404, "not_found", "Signing key not found")

    def _authorized(self) -> bool:
        header = self.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return False
        try:
            decoded = base64.b64decode(header[6:], validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return False
        token_id, _, token_secret = decoded.partition(":")
        expected_id, expected_secret = self.simulator.token_id, self.simulator.token_secret
        return secrets.compare_digest(token_id, expected_id) & secrets.compare_digest(token_secret, expected_secret)

    # Control routes for tests in other processes

    def _control(self, method: str, path: str) -> None:
        simulator = self.simulator
        if path == "/_sim/faults" and method == "POST":
            try:
                items = json.loads(self.request_body or b"null")
                faults = [Fault.from_json(item) for item in (items if isinstance(items, list) else [items])]
            except ValueError as error:
                self._json(400, {"error": str(error)})
                return
            for fault in faults:
                simulator.inject(fault.kind, fault.operation, count=fault.count, status=fault.status,
                                 seconds=fault.seconds, retry_after=fault.retry_after)
            self._json(200, {"pending": simulator.pending_faults()})
        elif path == "/_sim/faults" and method == "DELETE":
            simulator.clear_faults()
            self._json(200, {"pending": 0})
        elif path == "/_sim/keys" and method == "GET":
            with simulator._lock:
                keys = list(simulator._keys.values())
            self._json(200, {"data": [
                {"id": k.kid, "created_at": str(k.created_at), "public_key": k.public_pem()} for k in keys
            ]})
        else:
            self._json(404, {"error": "unknown control route"})

    # Responses

    def _error(self, status: int, error_type: str, message: str, headers: dict[str, str] | None = None) -> None:
        self._json(status, {"error": {"type": error_type, "messages": [message]}}, headers)

    def _json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(body).encode(), "application/json", headers)

    def _send(self, status: int, payload: bytes, content_type: str | None,
              headers: dict[str, str] | None = None) -> None:
        self.simulator._record(self.command, urlparse(self.path).path, status)
        # A client that timed out has closed its end; that is the fault under test, not an error.
        with contextlib.suppress(OSError):
            self.send_response(status)
            if content_type is not None:
                self.send_header("Content-Type", content_type)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if payload:
                self.wfile.write(payload)


def _envelope(status: int, error_type: str, message: str) -> tuple[int, Any]:
    return status, {"error": {"type": error_type, "messages": [message]}}


def _operation(method: str, path: str) -> tuple[str | None, str | None]:
    if path.rstrip("/") == SIGNING_KEYS_PATH:
        return {"POST": "create", "GET": "list"}.get(method), None
    prefix = SIGNING_KEYS_PATH + "/"
    if path.startswith(prefix) and "/" not in path[len(prefix):] and path[len(prefix):]:
        return {"GET": "get", "DELETE": "delete"}.get(method), path[len(prefix):]
    return None, None


# Command line


def main(argv: list[str] | None = None) -> int:
    from gateway.keys.demo import DEFAULT_GATEWAY_PORT, TOKEN_SECRET_VARIABLE, run_demo

    parser = argparse.ArgumentParser(
        prog="python -m gateway.keys.simulator",
        description="Run a local System API simulator for signing keys on 127.0.0.1.",
    )
    parser.add_argument("--port", type=int, default=0,
                        help="TCP port of the simulator (default: a free port)")
    parser.add_argument("--token-id", help="access token id clients must send (default: generated)")
    parser.add_argument("--token-secret", default=os.environ.get(TOKEN_SECRET_VARIABLE),
                        help=f"access token secret clients must send (default: ${TOKEN_SECRET_VARIABLE}, "
                             "else generated); prefer the variable, which does not show in `ps`")
    parser.add_argument("--demo", action="store_true",
                        help="also run `playback-gateway serve` against the simulator, after one rotation")
    parser.add_argument("--gateway-port", type=_port, default=DEFAULT_GATEWAY_PORT,
                        help=f"TCP port of the gateway that --demo starts (default: {DEFAULT_GATEWAY_PORT})")
    args = parser.parse_args(argv)
    secret_supplied = args.token_secret is not None

    try:
        simulator = Simulator(args.token_id, args.token_secret, port=args.port).start()
    except OSError as error:
        print(f"error: the simulator cannot listen on {HOST}:{args.port}: {error.strerror}", file=sys.stderr)
        return 2
    print(f"System API simulator listening on {simulator.url}", flush=True)
    try:
        if args.demo:
            return run_demo(simulator, args.gateway_port, sys.stdout, secret_from_environment=secret_supplied)
        print(f"MUX_TOKEN_ID={simulator.token_id}", flush=True)
        if not secret_supplied:
            # A throwaway credential of this local simulator, printed so a gateway can be pointed at it.
            print(f"MUX_TOKEN_SECRET={simulator.token_secret}", flush=True)
        print("Press Ctrl-C to stop.", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
        return 0
    finally:
        simulator.stop()


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port {value!r}: expected a number from 1 to 65535") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port {port}: expected a number from 1 to 65535")
    return port


if __name__ == "__main__":
    sys.exit(main())
