"""Private key parsing: every shape Mux, dashboards, env files and secret stores produce."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from gateway.keys.material import KeyMaterialError, SigningKey, parse_private_key, pkcs1_pem


def _pkcs8(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _same_key(parsed: rsa.RSAPrivateKey, original: rsa.RSAPrivateKey) -> bool:
    return parsed.private_numbers() == original.private_numbers()


def _forms(key: rsa.RSAPrivateKey) -> dict[str, str]:
    pkcs1 = pkcs1_pem(key).decode()
    pkcs8 = _pkcs8(key).decode()
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    body = "".join(pkcs1.splitlines()[1:-1])
    return {
        "pkcs1 pem": pkcs1,
        "pkcs8 pem": pkcs8,
        "system api base64 of pkcs1": base64.b64encode(pkcs1.encode()).decode(),
        "base64 of pkcs8": base64.b64encode(pkcs8.encode()).decode(),
        "base64 wrapped at 76": "\n".join(
            base64.b64encode(pkcs1.encode()).decode()[i:i + 76] for i in range(0, 2400, 76)),
        "base64 without padding": base64.b64encode(pkcs1.encode()).decode().rstrip("="),
        "literal backslash n": pkcs1.replace("\n", "\\n"),
        "double quoted with escapes": '"' + pkcs1.replace("\n", "\\n") + '"',
        "single quoted": "'" + pkcs8 + "'",
        "crlf line ends": pkcs1.replace("\n", "\r\n"),
        "folded onto one line with spaces": pkcs1.replace("\n", " "),
        "pem body unwrapped": f"-----BEGIN RSA PRIVATE KEY-----\n{body}\n-----END RSA PRIVATE KEY-----",
        "indented lines": "\n".join("    " + line for line in pkcs8.splitlines()),
        "surrounding whitespace": "\n\n  " + pkcs1 + "  \n",
        "base64 der without armor": base64.b64encode(der).decode(),
        "urlsafe base64 of pem": base64.urlsafe_b64encode(pkcs1.encode()).decode(),
    }


@pytest.mark.parametrize("form", list(_forms(rsa.generate_private_key(65537, 2048)).keys()))
def test_parse_accepts_form(form: str, rsa_key: rsa.RSAPrivateKey) -> None:
    text = _forms(rsa_key)[form]
    assert _same_key(parse_private_key(text), rsa_key)


def test_parse_accepts_bytes(rsa_key: rsa.RSAPrivateKey) -> None:
    assert _same_key(parse_private_key(pkcs1_pem(rsa_key)), rsa_key)


def _small_key() -> str:
    small = rsa.generate_private_key(65537, 1024)
    return pkcs1_pem(small).decode()


def _ec_key() -> str:
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()


def _ed_key() -> str:
    return ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()


def _public_key(key: rsa.RSAPrivateKey) -> str:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def _encrypted(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.BestAvailableEncryption(b"passphrase")).decode()


API_SECRET = "xT9c2Lq0ZpRk8dYw3VbN7mHs1GfJeUaQoIiPlKjMnBvCxZsDfGhJkLqWeRtYuIoP+/aaaa"


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("empty", "found an empty value; expected an RSA private key"),
        ("api secret", "found 52 bytes of base64 binary that are not a private key (a Mux API token secret "
         "pasted here is a common mistake); expected the signing key's private key"),
        ("base64 text", "found 24 characters of base64 that do not decode to a PEM private key (a Mux API token "
         "secret pasted here is a common mistake); expected the signing key's private key"),
        ("token id", "found 37 characters that are neither a PEM block nor base64; expected an RSA private key "
         "(PEM, or base64 of a PEM as the System API returns it)"),
        ("small rsa", "found an RSA key of 1024 bits; expected at least 2048 bits"),
        ("ec", "found an EC private key; Mux signing keys are RSA"),
        ("ed25519", "found an Ed25519 private key; Mux signing keys are RSA"),
        ("public", "found a public key; expected the private key (the System API returns it only when the "
         "key is created)"),
        ("encrypted", "found a passphrase-encrypted private key; export it without a passphrase"),
        ("truncated", "found a PEM header without its matching END line; expected a complete PEM block"),
        ("garbage body", "found a PEM block labelled 'RSA PRIVATE KEY' that does not parse as a private key; "
         "expected an RSA private key in PKCS#1 or PKCS#8 form"),
    ],
)
def test_parse_rejects_with_message(case: str, message: str, rsa_key: rsa.RSAPrivateKey) -> None:
    texts = {
        "empty": "  \"\"  ",
        "api secret": API_SECRET,
        "base64 text": base64.b64encode(b"just some text!!!!").decode(),
        "token id": "5f1e4c2a-0d3b-4e6f-9a8b-7c6d5e4f3a2b!",
        "small rsa": _small_key(),
        "ec": _ec_key(),
        "ed25519": _ed_key(),
        "public": _public_key(rsa_key),
        "encrypted": _encrypted(rsa_key),
        "truncated": pkcs1_pem(rsa_key).decode()[:300],
        "garbage body": "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----",
    }
    with pytest.raises(KeyMaterialError) as caught:
        parse_private_key(texts[case])
    assert str(caught.value) == message
    assert texts[case].strip() not in str(caught.value) or not texts[case].strip()


def test_signing_key_repr_hides_material(rsa_key: rsa.RSAPrivateKey) -> None:
    key = SigningKey(kid="kid1", private_key=rsa_key, source="env")
    assert repr(key) == "SigningKey(kid='kid1', source='env', bits=2048)"
    assert str(key) == repr(key)
    assert "PRIVATE" not in repr(key)
