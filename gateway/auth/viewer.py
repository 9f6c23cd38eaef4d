"""Viewer session JWTs, verified against a JWKS URL or one PEM public key.

Only asymmetric algorithms are accepted, and each key verifies only the algorithms of its own
type, so a token cannot pick HS256 with the public key as the secret, or `none`.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from typing import Any, cast

import jwt
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_der_public_key, load_pem_public_key
from jwt.exceptions import (
    DecodeError,
    ExpiredSignatureError,
    ImmatureSignatureError,
    InvalidAlgorithmError,
    InvalidAudienceError,
    InvalidIssuedAtError,
    InvalidIssuerError,
    InvalidJTIError,
    InvalidSignatureError,
    InvalidSubjectError,
    MissingRequiredClaimError,
    PyJWTError,
)
from jwt.types import Options

from gateway.auth.jwks import (
    SUPPORTED_ALGORITHMS,
    JwksCache,
    UnsupportedKeyError,
    VerificationKey,
    verification_key_from_public_key,
)
from gateway.auth.principal import Viewer
from gateway.config import ConfigError, Settings
from gateway.observability.logging import log_event
from gateway.observability.metrics import VIEWER_AUTH_FAILURES

# Identity providers and the gateway run on different hosts whose clocks drift apart when time
# synchronization is missing or broken. 30 s absorbs such skew on exp, nbf and iat, while a token
# that expired more than half a minute ago is still rejected.
LEEWAY_SECONDS = 30

MAX_TOKEN_LENGTH = 16 * 1024
MAX_VIEWER_ID_LENGTH = 256
MAX_ENTITLEMENTS = 256
MAX_ENTITLEMENT_LENGTH = 256

# Claims for the expiry and replay checks done here, which policies are not meant to repeat.
_DROPPED_CLAIMS = frozenset({"exp", "iat", "nbf", "jti"})

logger = logging.getLogger(__name__)


class ViewerKeyConfigError(ConfigError):
    """GATEWAY_VIEWER_PUBLIC_KEY cannot be used. The message never contains the value."""


class ViewerAuthError(Exception):
    """A viewer JWT that was rejected.

    `reason` is a fixed code, used as the metric label and as a stable identifier for clients.
    `detail` is a sentence for humans. Neither ever contains the token.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail

    def __repr__(self) -> str:
        return f"ViewerAuthError(reason={self.reason!r}, detail={self.detail!r})"

    @property
    def www_authenticate(self) -> str:
        """Return the WWW-Authenticate value for the 401 response (RFC 6750, section 3)."""
        return 'Bearer realm="playback-gateway", error="invalid_token"'


def bearer_token(authorization: str | None) -> str | None:
    """Return the token of an `Authorization: Bearer` header, or None when the header is absent.

    Raises ViewerAuthError("malformed") for another scheme or an empty token, because a caller
    that sends credentials the gateway cannot read must not be served as anonymous.
    """
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        VIEWER_AUTH_FAILURES.labels(reason="malformed").inc()
        raise ViewerAuthError(
            "malformed", "The Authorization header must be 'Bearer <viewer token>'."
        )
    return token.strip()


class ViewerVerifier:
    """Verify viewer session JWTs and turn them into Viewer values for the policy."""

    def __init__(
        self,
        *,
        jwks: JwksCache | None = None,
        public_key: VerificationKey | None = None,
        issuer: str | None = None,
        audience: str | None = None,
        entitlements_claim: str = "entitlements",
    ) -> None:
        if (jwks is None) == (public_key is None):
            raise ValueError("pass exactly one of jwks and public_key")
        self._jwks = jwks
        self._public_key = public_key
        self._issuer = issuer
        self._audience = audience
        self._entitlements_claim = entitlements_claim

        if issuer is None:
            log_event(
                logger, "viewer.issuer_not_checked", logging.WARNING,
                detail="GATEWAY_VIEWER_ISSUER is unset: viewer tokens from any issuer that has "
                "a trusted key are accepted",
            )
        if audience is None:
            log_event(
                logger, "viewer.audience_not_checked", logging.WARNING,
                detail="GATEWAY_VIEWER_AUDIENCE is unset: viewer tokens issued for other "
                "applications of the same identity provider are accepted",
            )

    @classmethod
    def from_settings(cls, settings: Settings) -> ViewerVerifier | None:
        """Build the verifier the settings describe, or return None when viewer tokens are off.

        Raises ViewerKeyConfigError when GATEWAY_VIEWER_PUBLIC_KEY does not contain a usable key.
        """
        common: dict[str, Any] = {
            "issuer": settings.viewer_issuer,
            "audience": settings.viewer_audience,
            "entitlements_claim": settings.viewer_entitlements_claim,
        }
        if settings.viewer_jwks_url:
            return cls(jwks=JwksCache(settings.viewer_jwks_url), **common)
        if settings.viewer_public_key:
            return cls(public_key=load_viewer_public_key(settings.viewer_public_key), **common)
        return None

    def verify(self, token: str) -> Viewer:
        """Verify `token` and return the authenticated viewer. Raises ViewerAuthError."""
        try:
            return self._verify(token)
        except ViewerAuthError as error:
            VIEWER_AUTH_FAILURES.labels(reason=error.reason).inc()
            raise

    def _verify(self, token: str) -> Viewer:
        if not isinstance(token, str) or not token:
            raise ViewerAuthError("malformed", "The viewer token is empty.")
        if len(token) > MAX_TOKEN_LENGTH:
            raise ViewerAuthError(
                "malformed", f"The viewer token is longer than {MAX_TOKEN_LENGTH} characters."
            )

        header = _unverified_header(token)
        algorithm = header.get("alg")
        if algorithm not in SUPPORTED_ALGORITHMS:
            raise ViewerAuthError(
                "algorithm-not-allowed",
                f"Viewer token algorithm {_short(algorithm)} is not allowed; "
                f"allowed: {', '.join(SUPPORTED_ALGORITHMS)}.",
            )

        key = self._key_for(header)
        if algorithm not in key.by_algorithm:
            raise ViewerAuthError(
                "algorithm-not-allowed",
                f"Viewer token algorithm {algorithm} does not match its key, which allows "
                f"{', '.join(key.algorithms)}.",
            )

        claims = self._decode(token, key, algorithm)
        return self._viewer_from_claims(claims)

    def _key_for(self, header: dict[str, Any]) -> VerificationKey:
        if self._jwks is None:
            return cast(VerificationKey, self._public_key)

        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise ViewerAuthError("malformed", "The viewer token header has no kid.")
        key = self._jwks.get(kid)
        if key is not None:
            return key
        if not self._jwks.has_keys:
            raise ViewerAuthError(
                "keys-unavailable",
                "Viewer tokens cannot be verified because the identity provider's JWKS could not "
                "be fetched; retry later.",
            )
        raise ViewerAuthError("unknown-kid", f"The viewer token's kid {_short(kid)} is not in the JWKS.")

    def _decode(self, token: str, key: VerificationKey, algorithm: str) -> dict[str, Any]:
        options: Options = {
            "verify_signature": True,
            "verify_exp": True,
            "verify_nbf": True,
            "verify_iat": True,
            "verify_iss": self._issuer is not None,
            # PyJWT rejects any token carrying `aud` when no audience is given, so the check is
            # switched off, not left on, when GATEWAY_VIEWER_AUDIENCE is unset.
            "verify_aud": self._audience is not None,
            "verify_sub": True,
            "verify_jti": True,
            "strict_aud": False,
            "require": ["exp", "sub"],
            "enforce_minimum_key_length": True,
        }
        try:
            return jwt.decode(
                token,
                key=key.by_algorithm[algorithm],
                algorithms=[algorithm],
                options=options,
                issuer=self._issuer,
                audience=self._audience,
                leeway=LEEWAY_SECONDS,
            )
        except PyJWTError as error:
            raise _auth_error_from(error) from None

    def _viewer_from_claims(self, claims: dict[str, Any]) -> Viewer:
        subject = claims["sub"]
        if subject == "":
            raise ViewerAuthError("missing-claim", "The viewer token's sub claim is empty.")
        if len(subject) > MAX_VIEWER_ID_LENGTH:
            raise ViewerAuthError(
                "invalid-claim",
                f"The viewer token's sub claim is longer than {MAX_VIEWER_ID_LENGTH} characters.",
            )

        entitlements = self._entitlements(claims.get(self._entitlements_claim))
        policy_claims = {name: value for name, value in claims.items() if name not in _DROPPED_CLAIMS}
        return Viewer(id=subject, authenticated=True, entitlements=entitlements, claims=policy_claims)

    def _entitlements(self, value: Any) -> tuple[str, ...]:
        """Return the entitlements claim as a tuple of unique strings, in token order.

        A missing claim means no entitlements. A list of strings or a space-separated string (the
        OAuth `scope` style) is accepted. Any other shape rejects the token rather than yielding
        no entitlements: otherwise a deny rule that matches on an entitlement would silently stop
        matching when the identity provider changes the claim's format.
        """
        if value is None:
            return ()
        if isinstance(value, str):
            items: list[Any] = value.split()
        elif isinstance(value, list):
            items = value
        else:
            raise ViewerAuthError(
                "invalid-entitlements",
                f"The viewer token's {self._entitlements_claim} claim must be a list of strings or "
                f"a space-separated string, got {type(value).__name__}.",
            )

        if not all(isinstance(item, str) and item for item in items):
            raise ViewerAuthError(
                "invalid-entitlements",
                f"The viewer token's {self._entitlements_claim} claim must contain only non-empty strings.",
            )
        if len(items) > MAX_ENTITLEMENTS or any(len(item) > MAX_ENTITLEMENT_LENGTH for item in items):
            raise ViewerAuthError(
                "invalid-entitlements",
                f"The viewer token's {self._entitlements_claim} claim must hold at most "
                f"{MAX_ENTITLEMENTS} entries of at most {MAX_ENTITLEMENT_LENGTH} characters.",
            )
        return tuple(dict.fromkeys(items))


def _unverified_header(token: str) -> dict[str, Any]:
    try:
        header = jwt.get_unverified_header(token)
    except DecodeError:
        raise ViewerAuthError(
            "malformed", "The viewer token is not a JWT: expected three base64url segments."
        ) from None
    except PyJWTError as error:
        # For example a kid that is not a string, or an unsupported `crit` extension.
        raise ViewerAuthError("malformed", f"The viewer token header is invalid: {error}.") from None
    return header


def _auth_error_from(error: PyJWTError) -> ViewerAuthError:
    """Map a PyJWT exception to a reason code. PyJWT messages never include the token."""
    if isinstance(error, ExpiredSignatureError):
        return ViewerAuthError("expired", "The viewer token has expired.")
    if isinstance(error, ImmatureSignatureError):
        return ViewerAuthError("not-yet-valid", f"The viewer token is not valid yet ({error}).")
    if isinstance(error, InvalidIssuerError):
        return ViewerAuthError("wrong-issuer", "The viewer token's iss claim is not the expected issuer.")
    if isinstance(error, InvalidAudienceError):
        return ViewerAuthError("wrong-audience", "The viewer token's aud claim is not the expected audience.")
    if isinstance(error, MissingRequiredClaimError):
        return _missing_claim_error(error.claim)
    if isinstance(error, InvalidSignatureError):
        return ViewerAuthError("bad-signature", "The viewer token's signature is invalid.")
    if isinstance(error, InvalidAlgorithmError):
        return ViewerAuthError("algorithm-not-allowed", "The viewer token's algorithm is not allowed.")
    if isinstance(error, InvalidSubjectError | InvalidJTIError | InvalidIssuedAtError):
        return ViewerAuthError("invalid-claim", f"The viewer token has an invalid claim: {error}.")
    if isinstance(error, DecodeError) and "claim" in str(error):
        # PyJWT raises DecodeError for a non-integer exp or nbf.
        return ViewerAuthError("invalid-claim", f"The viewer token has an invalid claim: {error}")
    if isinstance(error, DecodeError):
        return ViewerAuthError("malformed", "The viewer token could not be decoded.")
    return ViewerAuthError("invalid-token", f"The viewer token is invalid ({error.__class__.__name__}).")


def _missing_claim_error(claim: str) -> ViewerAuthError:
    if claim == "iss":
        return ViewerAuthError("wrong-issuer", "The viewer token has no iss claim.")
    if claim == "aud":
        return ViewerAuthError("wrong-audience", "The viewer token has no aud claim.")
    return ViewerAuthError("missing-claim", f"The viewer token has no {claim} claim.")


def _short(value: Any) -> str:
    """Render an untrusted header value for a message, bounded in length."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----")


def load_viewer_public_key(value: str) -> VerificationKey:
    """Parse GATEWAY_VIEWER_PUBLIC_KEY into a VerificationKey. Raises ViewerKeyConfigError.

    Accepts a PEM public key (SubjectPublicKeyInfo or PKCS#1 RSA), a PEM certificate, or either
    one base64-encoded. Escaped newlines (a literal backslash-n, as env files often store them)
    are restored first. Error messages never include the value.
    """
    data = _pem_bytes(value)
    block = _PEM_BLOCK.search(data)
    if block is None:
        raise ViewerKeyConfigError(
            "GATEWAY_VIEWER_PUBLIC_KEY is not a PEM public key: expected a "
            "'-----BEGIN PUBLIC KEY-----' block (or its base64)"
        )
    label = block.group(1).decode()
    if "PRIVATE" in label:
        raise ViewerKeyConfigError(
            "GATEWAY_VIEWER_PUBLIC_KEY contains a private key: set only the public key "
            "(for example `openssl pkey -in key.pem -pubout`), and treat the private key as leaked"
        )

    try:
        if label == "CERTIFICATE":
            public_key: Any = x509.load_pem_x509_certificate(data).public_key()
        else:
            public_key = load_pem_public_key(data)
    except ValueError:
        raise ViewerKeyConfigError(
            f"GATEWAY_VIEWER_PUBLIC_KEY contains a {label} block that cannot be parsed: "
            "check that the PEM was copied whole"
        ) from None

    try:
        return verification_key_from_public_key(public_key)
    except UnsupportedKeyError as error:
        raise ViewerKeyConfigError(f"GATEWAY_VIEWER_PUBLIC_KEY cannot be used: {error}") from None


def _pem_bytes(value: str) -> bytes:
    text = value.strip().replace("\\n", "\n")
    if "-----BEGIN" in text:
        return text.encode()
    try:
        decoded = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        return text.encode()
    if b"-----BEGIN" in decoded:
        return decoded
    # Base64 of a DER SubjectPublicKeyInfo, the body of a PEM without its armour.
    try:
        load_der_public_key(decoded)
    except ValueError:
        return text.encode()
    body = base64.encodebytes(decoded).decode()
    return f"-----BEGIN PUBLIC KEY-----\n{body}-----END PUBLIC KEY-----\n".encode()
