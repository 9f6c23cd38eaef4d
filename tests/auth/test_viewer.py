"""ViewerVerifier with real keys, a real JWKS server and PyJWT-signed tokens."""

from __future__ import annotations

import base64
import logging
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from gateway.auth.jwks import JwksCache
from gateway.auth.principal import Viewer
from gateway.auth.viewer import (
    ViewerAuthError,
    ViewerKeyConfigError,
    ViewerVerifier,
    bearer_token,
    load_viewer_public_key,
)
from gateway.config import ConfigError, Settings
from tests.auth.jwks_server import (
    FakeClock,
    JwksServer,
    forge_hs256,
    forge_unsigned,
    metric,
    public_jwk,
    sign,
)

ISSUER = "https://id.example.test/"
AUDIENCE = "playback-gateway"
FAILURES = "playback_gateway_viewer_auth_failures_total"


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "sub": "viewer-1",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "exp": now + 600,
        "iat": now,
        "nbf": now - 5,
        "jti": "session-1",
        "entitlements": ["premium", "hd"],
        "plan": "family",
    }
    base.update(overrides)
    return {name: value for name, value in base.items() if value is not None}


def pem(private_key: Any) -> str:
    return private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


@pytest.fixture
def jwks_verifier(jwks_server: JwksServer, rsa_key: rsa.RSAPrivateKey) -> ViewerVerifier:
    jwks_server.keys = [public_jwk(rsa_key, "key-1", "RS256")]
    return ViewerVerifier(
        jwks=JwksCache(jwks_server.url, min_refetch_interval=30),
        issuer=ISSUER,
        audience=AUDIENCE,
    )


def rejection(verifier: ViewerVerifier, token: str) -> ViewerAuthError:
    """Verify `token`, expecting a rejection, and check that nothing echoes the token."""
    with pytest.raises(ViewerAuthError) as caught:
        verifier.verify(token)
    error = caught.value
    segments = [segment for segment in token.split(".") if len(segment) >= 16]
    for text in (str(error), error.detail, repr(error)):
        assert token not in text
        for segment in segments:
            assert segment not in text
    return error


def test_valid_token_yields_viewer(jwks_verifier: ViewerVerifier, rsa_key: rsa.RSAPrivateKey) -> None:
    token_claims = claims()
    viewer = jwks_verifier.verify(sign(rsa_key, token_claims))

    assert viewer == Viewer(
        id="viewer-1",
        authenticated=True,
        entitlements=("premium", "hd"),
        claims={
            "sub": "viewer-1",
            "iss": ISSUER,
            "aud": AUDIENCE,
            "entitlements": ["premium", "hd"],
            "plan": "family",
        },
    )


def test_expired_token_is_rejected(jwks_verifier: ViewerVerifier, rsa_key: rsa.RSAPrivateKey) -> None:
    before = metric(FAILURES, reason="expired")
    error = rejection(jwks_verifier, sign(rsa_key, claims(exp=int(time.time()) - 120)))

    assert error.reason == "expired"
    assert error.detail == "The viewer token has expired."
    assert metric(FAILURES, reason="expired") == before + 1


def test_expiry_within_leeway_is_accepted(jwks_verifier: ViewerVerifier, rsa_key: rsa.RSAPrivateKey) -> None:
    viewer = jwks_verifier.verify(sign(rsa_key, claims(exp=int(time.time()) - 5)))

    assert viewer.id == "viewer-1"


def test_not_yet_valid_token_is_rejected(jwks_verifier: ViewerVerifier, rsa_key: rsa.RSAPrivateKey) -> None:
    error = rejection(jwks_verifier, sign(rsa_key, claims(nbf=int(time.time()) + 300)))

    assert error.reason == "not-yet-valid"
    assert error.detail == "The viewer token is not valid yet (The token is not yet valid (nbf))."


@pytest.mark.parametrize(
    ("overrides", "reason", "detail"),
    [
        ({"iss": "https://other.example.test/"}, "wrong-issuer",
         "The viewer token's iss claim is not the expected issuer."),
        ({"iss": None}, "wrong-issuer", "The viewer token has no iss claim."),
        ({"aud": "another-app"}, "wrong-audience",
         "The viewer token's aud claim is not the expected audience."),
        ({"aud": None}, "wrong-audience", "The viewer token has no aud claim."),
        ({"sub": None}, "missing-claim", "The viewer token has no sub claim."),
        ({"sub": ""}, "missing-claim", "The viewer token's sub claim is empty."),
        ({"sub": 42}, "invalid-claim", "The viewer token has an invalid claim: Subject must be a string."),
        ({"sub": "v" * 257}, "invalid-claim",
         "The viewer token's sub claim is longer than 256 characters."),
        ({"exp": None}, "missing-claim", "The viewer token has no exp claim."),
        ({"exp": "soon"}, "invalid-claim",
         "The viewer token has an invalid claim: Expiration Time claim (exp) must be an integer."),
        ({"entitlements": 3}, "invalid-entitlements",
         "The viewer token's entitlements claim must be a list of strings or a space-separated "
         "string, got int."),
        ({"entitlements": ["premium", 7]}, "invalid-entitlements",
         "The viewer token's entitlements claim must contain only non-empty strings."),
        ({"entitlements": {"premium": True}}, "invalid-entitlements",
         "The viewer token's entitlements claim must be a list of strings or a space-separated "
         "string, got dict."),
        ({"entitlements": [f"e{i}" for i in range(257)]}, "invalid-entitlements",
         "The viewer token's entitlements claim must hold at most 256 entries of at most 256 "
         "characters."),
    ],
)
def test_invalid_claims_are_rejected(
    jwks_verifier: ViewerVerifier,
    rsa_key: rsa.RSAPrivateKey,
    overrides: dict[str, Any],
    reason: str,
    detail: str,
) -> None:
    token_claims = claims()
    for name, value in overrides.items():
        if value is None:
            token_claims.pop(name)
        else:
            token_claims[name] = value

    error = rejection(jwks_verifier, sign(rsa_key, token_claims))

    assert error.reason == reason
    assert error.detail == detail


def test_space_separated_entitlements_are_split(
    jwks_verifier: ViewerVerifier, rsa_key: rsa.RSAPrivateKey
) -> None:
    viewer = jwks_verifier.verify(sign(rsa_key, claims(entitlements="premium  hd premium")))

    assert viewer.entitlements == ("premium", "hd")


def test_missing_entitlements_claim_means_none(
    jwks_server: JwksServer, rsa_key: rsa.RSAPrivateKey
) -> None:
    jwks_server.keys = [public_jwk(rsa_key, "key-1", "RS256")]
    verifier = ViewerVerifier(
        jwks=JwksCache(jwks_server.url), issuer=ISSUER, audience=AUDIENCE, entitlements_claim="roles"
    )

    viewer = verifier.verify(sign(rsa_key, claims()))

    assert viewer.entitlements == ()
    assert viewer.claims["entitlements"] == ["premium", "hd"]


def test_hs256_with_public_key_is_rejected(
    jwks_server: JwksServer, rsa_key: rsa.RSAPrivateKey
) -> None:
    verifier = ViewerVerifier(public_key=load_viewer_public_key(pem(rsa_key)), issuer=ISSUER, audience=AUDIENCE)
    forged = forge_hs256(pem(rsa_key).encode(), claims())

    error = rejection(verifier, forged)

    assert error.reason == "algorithm-not-allowed"
    assert error.detail == (
        "Viewer token algorithm 'HS256' is not allowed; allowed: RS256, RS384, RS512, PS256, "
        "PS384, PS512, ES256, ES384, EdDSA."
    )


def test_unsigned_token_is_rejected(jwks_verifier: ViewerVerifier) -> None:
    error = rejection(jwks_verifier, forge_unsigned(claims()))

    assert error.reason == "algorithm-not-allowed"
    assert error.detail.startswith("Viewer token algorithm 'none' is not allowed;")


def test_algorithm_of_other_key_type_is_rejected(
    jwks_server: JwksServer, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    jwks_server.keys = [public_jwk(rsa_key, "key-1", "RS256")]
    verifier = ViewerVerifier(jwks=JwksCache(jwks_server.url), issuer=ISSUER, audience=AUDIENCE)

    error = rejection(verifier, sign(ec_key, claims(), alg="ES256"))

    assert error.reason == "algorithm-not-allowed"
    assert error.detail == "Viewer token algorithm ES256 does not match its key, which allows RS256."


def test_unknown_kid_refetches_once_then_throttles(
    jwks_server: JwksServer, rsa_key: rsa.RSAPrivateKey, other_rsa_key: rsa.RSAPrivateKey
) -> None:
    clock = FakeClock()
    jwks_server.keys = [public_jwk(rsa_key, "key-1", "RS256")]
    verifier = ViewerVerifier(
        jwks=JwksCache(jwks_server.url, min_refetch_interval=30, clock=clock),
        issuer=ISSUER,
        audience=AUDIENCE,
    )
    verifier.verify(sign(rsa_key, claims()))
    throttled_before = metric("playback_gateway_jwks_fetches_total", result="throttled")
    assert jwks_server.hits == 1
    clock.advance(31)

    first = rejection(verifier, sign(other_rsa_key, claims(), kid="attacker-1"))
    second = rejection(verifier, sign(other_rsa_key, claims(), kid="attacker-2"))

    assert first.reason == "unknown-kid"
    assert first.detail == "The viewer token's kid 'attacker-1' is not in the JWKS."
    assert second.reason == "unknown-kid"
    assert jwks_server.hits == 2
    assert metric("playback_gateway_jwks_fetches_total", result="throttled") == throttled_before + 1


def test_rotated_key_is_picked_up(
    jwks_server: JwksServer, rsa_key: rsa.RSAPrivateKey, other_rsa_key: rsa.RSAPrivateKey
) -> None:
    clock = FakeClock()
    jwks_server.keys = [public_jwk(rsa_key, "key-1", "RS256")]
    verifier = ViewerVerifier(
        jwks=JwksCache(jwks_server.url, clock=clock), issuer=ISSUER, audience=AUDIENCE
    )
    verifier.verify(sign(rsa_key, claims()))

    jwks_server.keys.append(public_jwk(other_rsa_key, "key-2", "RS256"))
    clock.advance(30)
    viewer = verifier.verify(sign(other_rsa_key, claims(sub="viewer-2"), kid="key-2"))

    assert viewer.id == "viewer-2"
    assert jwks_server.hits == 2


def test_unreachable_jwks_is_keys_unavailable(jwks_server: JwksServer, rsa_key: rsa.RSAPrivateKey) -> None:
    jwks_server.status = 503
    verifier = ViewerVerifier(jwks=JwksCache(jwks_server.url), issuer=ISSUER, audience=AUDIENCE)

    error = rejection(verifier, sign(rsa_key, claims()))

    assert error.reason == "keys-unavailable"
    assert error.detail == (
        "Viewer tokens cannot be verified because the identity provider's JWKS could not be "
        "fetched; retry later."
    )


def test_tampered_signature_is_rejected(jwks_verifier: ViewerVerifier, rsa_key: rsa.RSAPrivateKey) -> None:
    token = sign(rsa_key, claims())
    head, payload, signature = token.split(".")
    middle = len(signature) // 2
    flipped = "A" if signature[middle] != "A" else "B"
    tampered = f"{head}.{payload}.{signature[:middle]}{flipped}{signature[middle + 1:]}"

    error = rejection(jwks_verifier, tampered)

    assert error.reason == "bad-signature"
    assert error.detail == "The viewer token's signature is invalid."


def test_tampered_payload_is_rejected(
    jwks_verifier: ViewerVerifier, rsa_key: rsa.RSAPrivateKey
) -> None:
    original = sign(rsa_key, claims())
    upgraded = sign(rsa_key, claims(entitlements=["premium", "4k"]))
    head, _, signature = original.split(".")
    spliced = f"{head}.{upgraded.split('.')[1]}.{signature}"

    error = rejection(jwks_verifier, spliced)

    assert error.reason == "bad-signature"


@pytest.mark.parametrize(
    ("token", "detail"),
    [
        ("", "The viewer token is empty."),
        ("not-a-jwt", "The viewer token is not a JWT: expected three base64url segments."),
        ("e30.e30.e30.e30", "The viewer token is not a JWT: expected three base64url segments."),
        ("x" * 16385, "The viewer token is longer than 16384 characters."),
    ],
)
def test_malformed_tokens_are_rejected(jwks_verifier: ViewerVerifier, token: str, detail: str) -> None:
    with pytest.raises(ViewerAuthError) as caught:
        jwks_verifier.verify(token)

    assert caught.value.reason == "malformed"
    assert caught.value.detail == detail


def test_token_with_numeric_kid_is_malformed(jwks_verifier: ViewerVerifier) -> None:
    unsigned = forge_unsigned(claims(), kid=None)
    header = base64.urlsafe_b64encode(b'{"alg":"RS256","kid":7}').rstrip(b"=").decode()
    token = header + unsigned[unsigned.index("."):] + "c2lnbmF0dXJl"

    error = rejection(jwks_verifier, token)

    assert error.reason == "malformed"
    assert error.detail == "The viewer token header is invalid: Key ID header parameter must be a string."


def test_token_without_kid_is_malformed(jwks_verifier: ViewerVerifier, rsa_key: rsa.RSAPrivateKey) -> None:
    error = rejection(jwks_verifier, sign(rsa_key, claims(), kid=None))

    assert error.reason == "malformed"
    assert error.detail == "The viewer token header has no kid."


def test_pem_keys_of_each_type_verify(
    rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey, ed_key: ed25519.Ed25519PrivateKey
) -> None:
    cases = [(rsa_key, "PS256"), (rsa_key, "RS512"), (ec_key, "ES256"), (ed_key, "EdDSA")]
    for private_key, alg in cases:
        verifier = ViewerVerifier(
            public_key=load_viewer_public_key(pem(private_key)), issuer=ISSUER, audience=AUDIENCE
        )
        viewer = verifier.verify(sign(private_key, claims(), alg=alg, kid=None))
        assert viewer.id == "viewer-1", alg


def test_pem_key_rejects_other_key(
    rsa_key: rsa.RSAPrivateKey, other_rsa_key: rsa.RSAPrivateKey
) -> None:
    verifier = ViewerVerifier(public_key=load_viewer_public_key(pem(rsa_key)), issuer=ISSUER, audience=AUDIENCE)

    error = rejection(verifier, sign(other_rsa_key, claims()))

    assert error.reason == "bad-signature"


def test_unconfigured_checks_log_warnings(
    rsa_key: rsa.RSAPrivateKey, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="gateway.auth.viewer"):
        verifier = ViewerVerifier(public_key=load_viewer_public_key(pem(rsa_key)))

    events = [getattr(record, "event", None) for record in caplog.records]
    assert events == ["viewer.issuer_not_checked", "viewer.audience_not_checked"]
    # Without a configured audience, a token that carries one is still accepted.
    assert verifier.verify(sign(rsa_key, claims(iss="anyone", aud="other-app"))).id == "viewer-1"


def test_from_settings_without_viewer_config_is_none() -> None:
    assert ViewerVerifier.from_settings(Settings.from_env({})) is None


def test_from_settings_builds_jwks_and_pem_verifiers(
    jwks_server: JwksServer, rsa_key: rsa.RSAPrivateKey
) -> None:
    jwks_server.keys = [public_jwk(rsa_key, "key-1", "RS256")]
    common = {
        "GATEWAY_VIEWER_ISSUER": ISSUER,
        "GATEWAY_VIEWER_AUDIENCE": AUDIENCE,
        "GATEWAY_VIEWER_ENTITLEMENTS_CLAIM": "plan",
    }
    from_jwks = ViewerVerifier.from_settings(
        Settings.from_env({"GATEWAY_VIEWER_JWKS_URL": jwks_server.url, **common})
    )
    from_pem = ViewerVerifier.from_settings(
        Settings.from_env({"GATEWAY_VIEWER_PUBLIC_KEY": pem(rsa_key), **common})
    )
    token = sign(rsa_key, claims())

    assert from_jwks is not None
    assert from_pem is not None
    assert from_jwks.verify(token).entitlements == ("family",)
    assert from_pem.verify(token).entitlements == ("family",)


def test_public_key_encodings_are_accepted(rsa_key: rsa.RSAPrivateKey) -> None:
    text = pem(rsa_key)
    der_base64 = "".join(text.strip().splitlines()[1:-1])
    pkcs1 = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.PKCS1
    ).decode()
    token = sign(rsa_key, claims(), kid=None)

    for value in (
        text,
        text.replace("\n", "\\n"),
        base64.b64encode(text.encode()).decode(),
        der_base64,
        pkcs1,
        self_signed_certificate(rsa_key),
    ):
        verifier = ViewerVerifier(public_key=load_viewer_public_key(value), issuer=ISSUER, audience=AUDIENCE)
        assert verifier.verify(token).id == "viewer-1"


def self_signed_certificate(private_key: rsa.RSAPrivateKey) -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "id.example.test")])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private_key.public_key())
        .serial_number(1)
        .not_valid_before(datetime(2025, 1, 1, tzinfo=UTC))
        .not_valid_after(datetime(2035, 1, 1, tzinfo=UTC))
        .sign(private_key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def test_unusable_public_keys_fail_start_up(rsa_key: rsa.RSAPrivateKey) -> None:
    private_pem = rsa_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    truncated = pem(rsa_key)[:120] + "\n-----END PUBLIC KEY-----\n"
    p521 = pem(ec.generate_private_key(ec.SECP521R1()))
    cases = [
        (private_pem, "GATEWAY_VIEWER_PUBLIC_KEY contains a private key: set only the public key "
         "(for example `openssl pkey -in key.pem -pubout`), and treat the private key as leaked"),
        ("hunter2-not-a-key", "GATEWAY_VIEWER_PUBLIC_KEY is not a PEM public key: expected a "
         "'-----BEGIN PUBLIC KEY-----' block (or its base64)"),
        (truncated, "GATEWAY_VIEWER_PUBLIC_KEY contains a PUBLIC KEY block that cannot be parsed: "
         "check that the PEM was copied whole"),
        (p521, "GATEWAY_VIEWER_PUBLIC_KEY cannot be used: EC curve secp521r1 is not supported: "
         "use P-256 (ES256) or P-384 (ES384)"),
    ]
    for value, message in cases:
        settings = Settings.from_env({"GATEWAY_VIEWER_PUBLIC_KEY": value})
        with pytest.raises(ViewerKeyConfigError) as caught:
            ViewerVerifier.from_settings(settings)
        assert str(caught.value) == message
        assert isinstance(caught.value, ConfigError)
        for line in value.splitlines():
            if not line.startswith("-----"):
                assert line not in str(caught.value)


def test_bearer_token_parses_header() -> None:
    assert bearer_token(None) is None
    assert bearer_token("Bearer abc.def.ghi") == "abc.def.ghi"
    assert bearer_token("bearer   abc.def.ghi ") == "abc.def.ghi"


@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer   ", "abc.def.ghi", ""])
def test_bearer_token_rejects_other_schemes(header: str) -> None:
    before = metric(FAILURES, reason="malformed")

    with pytest.raises(ViewerAuthError) as caught:
        bearer_token(header)

    assert caught.value.reason == "malformed"
    assert caught.value.detail == "The Authorization header must be 'Bearer <viewer token>'."
    assert caught.value.www_authenticate == 'Bearer realm="playback-gateway", error="invalid_token"'
    assert metric(FAILURES, reason="malformed") == before + 1
