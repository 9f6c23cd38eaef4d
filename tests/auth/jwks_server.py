"""A JWKS server on 127.0.0.1 whose responses a test controls, plus key and token helpers."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from prometheus_client import REGISTRY

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def public_jwk(private_key: PrivateKey, kid: str, alg: str | None = None, **extra: Any) -> dict[str, Any]:
    """Return the public JWK of `private_key` with `kid` (and `alg` when given)."""
    public_key = private_key.public_key()
    if isinstance(public_key, rsa.RSAPublicKey):
        jwk = RSAAlgorithm.to_jwk(public_key, as_dict=True)
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(public_key, as_dict=True)
    else:
        jwk = OKPAlgorithm.to_jwk(public_key, as_dict=True)
    jwk["kid"] = kid
    if alg is not None:
        jwk["alg"] = alg
    jwk.update(extra)
    return jwk


def sign(
    private_key: PrivateKey, claims: dict[str, Any], *, alg: str = "RS256", kid: str | None = "key-1"
) -> str:
    headers = {"kid": kid} if kid is not None else {}
    return jwt.encode(claims, private_key, algorithm=alg, headers=headers)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge_hs256(secret: bytes, claims: dict[str, Any], kid: str | None = "key-1") -> str:
    """Return an HS256 token signed with `secret`, built by hand because PyJWT refuses PEM secrets."""
    header: dict[str, Any] = {"alg": "HS256", "typ": "JWT"}
    if kid is not None:
        header["kid"] = kid
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def forge_unsigned(claims: dict[str, Any], kid: str | None = "key-1") -> str:
    header: dict[str, Any] = {"alg": "none", "typ": "JWT"}
    if kid is not None:
        header["kid"] = kid
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}."


def metric(name: str, **labels: str) -> float:
    """Return a counter's current value (0 when it has no sample yet)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


class FakeClock:
    """A monotonic clock that moves only when a test advances it."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class JwksServer:
    """Serve a JWKS on a free port. Tests set `keys`, `status`, `body`, `delay` and read `hits`."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.status = 200
        self.body: bytes | None = None
        self.send_length = True
        self.delay = 0.0
        self.extra_headers: dict[str, str] = {}
        self.hits = 0
        self._release = threading.Event()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/.well-known/jwks.json"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _respond(self, handler: BaseHTTPRequestHandler) -> None:
        with self._lock:
            self.hits += 1
        if self.delay:
            self._release.wait(self.delay)

        body = self.body if self.body is not None else json.dumps({"keys": self.keys}).encode()
        try:
            handler.send_response(self.status)
            handler.send_header("Content-Type", "application/json")
            for name, value in self.extra_headers.items():
                handler.send_header(name, value)
            if self.send_length:
                handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body)
        except OSError:
            # The client gave up (a timeout or size-limit test); nothing left to do.
            return

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server._respond(self)

            def log_message(self, format: str, *args: Any) -> None:
                return

        return Handler
