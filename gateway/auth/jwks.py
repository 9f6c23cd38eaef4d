"""Viewer verification keys from a JWKS URL, cached by kid, refreshed with a rate limit.

A token with an unknown kid triggers a refetch, because that is how an identity provider's key
rotation shows up. Refetches are limited to one per `min_refetch_interval` seconds so that a flood
of tokens with random kids cannot turn the gateway into a load generator aimed at the provider.
When a refresh fails, the keys already held keep being served.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt import PyJWK
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from jwt.exceptions import PyJWTError

from gateway.observability.logging import log_event
from gateway.observability.metrics import JWKS_FETCHES

# Asymmetric algorithms only: HS* would let anyone with the public key sign tokens, and `none`
# has no signature. ES512 is not on the list, so P-521 keys are rejected.
SUPPORTED_ALGORITHMS: tuple[str, ...] = (
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
)
_RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
_EC_ALGORITHMS_BY_CURVE = {"P-256": ("ES256",), "P-384": ("ES384",)}
_OKP_CURVES = frozenset({"Ed25519", "Ed448"})

MIN_RSA_KEY_BITS = 2048
MAX_JWKS_BYTES = 256 * 1024
MAX_KID_LENGTH = 256
# JWK members that only private or symmetric keys have. A JWKS that publishes them leaks secrets.
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})

logger = logging.getLogger(__name__)


class JwksFetchError(Exception):
    """A JWKS fetch that failed. The message names the cause, never key material."""


class UnsupportedKeyError(ValueError):
    """A public key of a type or size that viewer tokens may not be signed with."""


@dataclass(frozen=True)
class VerificationKey:
    """One public key with a PyJWK per algorithm it may verify."""

    kid: str | None
    by_algorithm: Mapping[str, PyJWK] = field(repr=False)

    @property
    def algorithms(self) -> tuple[str, ...]:
        return tuple(self.by_algorithm)


def algorithms_for_public_key(key: Any) -> tuple[str, ...]:
    """Return the supported algorithms that `key` can verify. Raises UnsupportedKeyError."""
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_KEY_BITS:
            raise UnsupportedKeyError(
                f"RSA key has {key.key_size} bits, fewer than the minimum of {MIN_RSA_KEY_BITS}"
            )
        return _RSA_ALGORITHMS
    if isinstance(key, ec.EllipticCurvePublicKey):
        curve = {"secp256r1": "P-256", "secp384r1": "P-384"}.get(key.curve.name)
        if curve is None:
            raise UnsupportedKeyError(
                f"EC curve {key.curve.name} is not supported: use P-256 (ES256) or P-384 (ES384)"
            )
        return _EC_ALGORITHMS_BY_CURVE[curve]
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return ("EdDSA",)
    raise UnsupportedKeyError(
        f"{type(key).__name__} is not a supported public key: use RSA, EC P-256/P-384 or Ed25519"
    )


def verification_key_from_public_key(key: Any, kid: str | None = None) -> VerificationKey:
    """Build a VerificationKey for a public key object (from a PEM). Raises UnsupportedKeyError."""
    algorithms = algorithms_for_public_key(key)
    if isinstance(key, rsa.RSAPublicKey):
        jwk = RSAAlgorithm.to_jwk(key, as_dict=True)
    elif isinstance(key, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(key, as_dict=True)
    else:
        jwk = OKPAlgorithm.to_jwk(key, as_dict=True)
    return VerificationKey(kid=kid, by_algorithm={alg: PyJWK(jwk, alg) for alg in algorithms})


def verification_key_from_jwk(jwk: Any) -> VerificationKey:
    """Build a VerificationKey from one JWKS entry. Raises UnsupportedKeyError with the reason."""
    if not isinstance(jwk, dict):
        raise UnsupportedKeyError("entry is not a JSON object")

    kid = jwk.get("kid")
    if not isinstance(kid, str) or not kid or len(kid) > MAX_KID_LENGTH:
        raise UnsupportedKeyError(f"kid is missing or not a string of 1-{MAX_KID_LENGTH} characters")
    if _PRIVATE_MEMBERS & set(jwk):
        raise UnsupportedKeyError(f"key {kid!r} contains private or symmetric key material")
    if jwk.get("use") not in (None, "sig"):
        raise UnsupportedKeyError(f"key {kid!r} has use {jwk.get('use')!r}, not 'sig'")
    key_ops = jwk.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        raise UnsupportedKeyError(f"key {kid!r} has key_ops without 'verify'")

    algorithms = _algorithms_for_jwk(kid, jwk)
    try:
        by_algorithm = {alg: PyJWK(jwk, alg) for alg in algorithms}
    except PyJWTError as error:
        raise UnsupportedKeyError(f"key {kid!r} is invalid ({error.__class__.__name__})") from None

    # The key object is the same for every algorithm, so checking one covers the size limit.
    algorithms_for_public_key(next(iter(by_algorithm.values())).key)
    return VerificationKey(kid=kid, by_algorithm=by_algorithm)


def _algorithms_for_jwk(kid: str, jwk: dict[str, Any]) -> tuple[str, ...]:
    kty, crv, alg = jwk.get("kty"), jwk.get("crv"), jwk.get("alg")
    if kty == "RSA":
        family: tuple[str, ...] = _RSA_ALGORITHMS
    elif kty == "EC" and crv in _EC_ALGORITHMS_BY_CURVE:
        family = _EC_ALGORITHMS_BY_CURVE[crv]
    elif kty == "OKP" and crv in _OKP_CURVES:
        family = ("EdDSA",)
    else:
        raise UnsupportedKeyError(f"key {kid!r} has unsupported kty {kty!r} or crv {crv!r}")

    if alg is None:
        return family
    if alg not in family:
        raise UnsupportedKeyError(f"key {kid!r} has alg {alg!r}, which is not allowed for kty {kty!r}")
    return (alg,)


class JwksCache:
    """Public keys from one JWKS URL, shared by all threads of a worker.

    `get(kid)` returns the cached key, refetching when the kid is unknown or the cache is older
    than `max_age` seconds. Fetches, successful or not, are at least `min_refetch_interval`
    seconds apart. A failed fetch keeps the previous keys, so stale keys are served for as long
    as the identity provider stays unreachable.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 2.0,
        min_refetch_interval: float = 30.0,
        max_age: float = 300.0,
        max_bytes: int = MAX_JWKS_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if timeout <= 0 or min_refetch_interval < 0 or max_age < 0 or max_bytes < 1:
            raise ValueError("timeout and max_bytes must be positive, and intervals must not be negative")
        self._url = url
        self._log_url = _url_for_logs(url)
        self._timeout = timeout
        self._min_refetch_interval = min_refetch_interval
        self._max_age = max_age
        self._max_bytes = max_bytes
        self._clock = clock
        self._session = requests.Session()
        self._fetch_lock = threading.Lock()
        self._keys: dict[str, VerificationKey] = {}
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None

        if _is_plain_http_off_host(url):
            log_event(
                logger, "jwks.insecure_url", logging.WARNING, url=self._log_url,
                detail="the JWKS URL uses plain http: anyone on the network path can swap in their "
                "own keys and sign viewer tokens; use https",
            )

    def __repr__(self) -> str:
        return f"JwksCache(url={self._log_url!r}, keys={sorted(self._keys)!r})"

    @property
    def has_keys(self) -> bool:
        return bool(self._keys)

    def get(self, kid: str) -> VerificationKey | None:
        """Return the key for `kid`, fetching the JWKS first when needed, or None if it is unknown."""
        keys = self._keys
        if kid in keys and not self._is_stale():
            return keys[kid]

        if kid in keys:
            # A known key stays usable while it is refreshed, so when another thread is already
            # fetching, this one serves the cached key instead of waiting for the fetch.
            if not self._fetch_lock.acquire(blocking=False):
                return keys[kid]
            try:
                self._refresh_if_allowed(kid)
            finally:
                self._fetch_lock.release()
            # A failed refresh keeps the old keys, but a successful one may have dropped this kid.
            return self._keys.get(kid)

        with self._fetch_lock:
            if kid not in self._keys:
                self._refresh_if_allowed(kid)
        return self._keys.get(kid)

    def refresh(self) -> bool:
        """Fetch the JWKS now, ignoring the refetch interval. Returns True on success."""
        with self._fetch_lock:
            return self._fetch_and_store()

    def _is_stale(self) -> bool:
        return self._fetched_at is None or self._clock() - self._fetched_at >= self._max_age

    def _refresh_if_allowed(self, kid: str) -> None:
        # Called with the fetch lock held. Another thread may have refreshed while this one waited.
        if kid in self._keys and not self._is_stale():
            return
        now = self._clock()
        if self._attempted_at is not None and now - self._attempted_at < self._min_refetch_interval:
            JWKS_FETCHES.labels(result="throttled").inc()
            return
        self._fetch_and_store()

    def _fetch_and_store(self) -> bool:
        self._attempted_at = self._clock()
        try:
            keys = self._fetch()
        except JwksFetchError as error:
            JWKS_FETCHES.labels(result="error").inc()
            log_event(
                logger, "jwks.fetch_failed", logging.WARNING, url=self._log_url, error=str(error),
                cached_keys=len(self._keys),
            )
            return False

        self._keys = keys
        self._fetched_at = self._clock()
        JWKS_FETCHES.labels(result="ok").inc()
        log_event(logger, "jwks.fetched", url=self._log_url, kids=sorted(keys))
        return True

    def _fetch(self) -> dict[str, VerificationKey]:
        body = self._download()
        try:
            document = json.loads(body)
        except (ValueError, RecursionError):
            raise JwksFetchError("response is not valid JSON") from None
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise JwksFetchError("response is not a JWKS: expected an object with a 'keys' list")
        return self._parse_keys(document["keys"])

    def _download(self) -> bytes:
        try:
            response = self._session.get(
                self._url,
                timeout=(self._timeout, self._timeout),
                stream=True,
                allow_redirects=False,
                headers={"Accept": "application/jwk-set+json, application/json"},
            )
        except requests.Timeout:
            raise JwksFetchError(f"timed out after {self._timeout:g} s") from None
        except requests.RequestException as error:
            raise JwksFetchError(f"request failed ({error.__class__.__name__})") from None

        with response:
            if response.is_redirect:
                raise JwksFetchError(
                    f"HTTP {response.status_code} redirect: set GATEWAY_VIEWER_JWKS_URL to the final URL"
                )
            if response.status_code != 200:
                raise JwksFetchError(f"HTTP {response.status_code}")
            return self._read_capped(response)

    def _read_capped(self, response: requests.Response) -> bytes:
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > self._max_bytes:
            raise JwksFetchError(f"response of {declared} bytes exceeds the {self._max_bytes}-byte limit")

        # The read timeout applies to each socket read, so a server that trickles bytes could keep
        # the fetch open indefinitely. The deadline bounds the time for the whole body.
        deadline = time.monotonic() + 2 * self._timeout
        chunks: list[bytes] = []
        size = 0
        try:
            for chunk in response.iter_content(chunk_size=16 * 1024):
                size += len(chunk)
                if size > self._max_bytes:
                    raise JwksFetchError(f"response exceeds the {self._max_bytes}-byte limit")
                if time.monotonic() > deadline:
                    raise JwksFetchError(f"body not received within {2 * self._timeout:g} s")
                chunks.append(chunk)
        except requests.RequestException as error:
            raise JwksFetchError(f"reading the response failed ({error.__class__.__name__})") from None
        return b"".join(chunks)

    def _parse_keys(self, entries: list[Any]) -> dict[str, VerificationKey]:
        keys: dict[str, VerificationKey] = {}
        skipped: list[str] = []
        for entry in entries:
            try:
                key = verification_key_from_jwk(entry)
            except UnsupportedKeyError as error:
                skipped.append(str(error))
                continue
            if key.kid in keys:
                skipped.append(f"key {key.kid!r} appears twice; the first one is used")
                continue
            keys[str(key.kid)] = key

        if skipped:
            log_event(logger, "jwks.keys_skipped", logging.WARNING, url=self._log_url, reasons=skipped[:20])
        if not keys:
            raise JwksFetchError(f"JWKS has no usable signing keys ({len(entries)} entries)")
        return keys


def _is_plain_http_off_host(url: str) -> bool:
    """Return True for an http:// URL whose host is not a loopback address or localhost."""
    parts = urlsplit(url)
    if parts.scheme != "http":
        return False
    host = parts.hostname or ""
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True


def _url_for_logs(url: str) -> str:
    """Return `url` without user info, query or fragment, which may carry credentials."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))
