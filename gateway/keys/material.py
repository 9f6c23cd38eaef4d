"""Parse Mux signing-key private keys from the many shapes they arrive in.

Mux's System API returns base64 of a PKCS#1 PEM, the dashboard download is a raw PEM, and
env files and secret stores add quotes, literal "\\n" escapes, CRLF line ends or fold the PEM
onto one line. All of these are accepted. Nothing in this module ever echoes key text.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa

MIN_RSA_BITS = 2048

_PEM_BLOCK = re.compile(
    r"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----",
    re.DOTALL,
)
_BASE64_TEXT = re.compile(r"^[A-Za-z0-9+/=_\-\s]+$")


class KeyMaterialError(ValueError):
    """Key text that is not a usable RSA private key. The message never contains the text."""


@dataclass(frozen=True, eq=False)
class SigningKey:
    """A parsed Mux signing key: its id and the RSA private key object, held in memory only."""

    kid: str
    private_key: rsa.RSAPrivateKey = field(repr=False)
    source: str = "env"

    def __repr__(self) -> str:
        return f"SigningKey(kid={self.kid!r}, source={self.source!r}, bits={self.bits})"

    __str__ = __repr__

    @property
    def bits(self) -> int:
        return self.private_key.key_size

    def public_pem(self) -> bytes:
        """Return the public half as a SubjectPublicKeyInfo PEM."""
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def private_pem(self) -> bytes:
        """Return the private key as a PKCS#8 PEM, for encryption into the keyring only."""
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def parse_private_key(text: str | bytes) -> rsa.RSAPrivateKey:
    """Parse an RSA private key of at least 2048 bits from PEM, base64 of PEM, or base64 DER.

    Raises KeyMaterialError describing what was found and what is expected.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise KeyMaterialError(
                "found binary data that is not UTF-8 text; expected an RSA private key as PEM "
                "or base64 of a PEM"
            ) from None

    cleaned = _undo_env_damage(text)
    if not cleaned:
        raise KeyMaterialError("found an empty value; expected an RSA private key")

    pem = _find_pem(cleaned)
    if pem is None:
        pem = _pem_from_base64(cleaned)
    return _load_rsa_key(pem)


def _undo_env_damage(text: str) -> str:
    """Strip the quoting and escaping that env files and secret stores add around a value."""
    value = text.strip()

    # Matching quotes around the whole value, sometimes doubled by two layers of tooling.
    while len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1].strip()

    return value.replace("\\r\\n", "\n").replace("\\n", "\n").replace("\r\n", "\n").strip()


def _find_pem(text: str) -> bytes | None:
    """Return a normalized PEM if the text contains PEM armor, rebuilding lost line breaks."""
    match = _PEM_BLOCK.search(text)
    if match is None:
        if "-----BEGIN" in text:
            raise KeyMaterialError(
                "found a PEM header without its matching END line; expected a complete PEM block"
            )
        return None

    label, body = match.group(1), match.group(2)
    headers, body = _split_pem_headers(body)
    if "ENCRYPTED" in label or "Proc-Type" in headers:
        raise KeyMaterialError(
            "found a passphrase-encrypted private key; export it without a passphrase"
        )

    base64_body = re.sub(r"\s+", "", body)
    lines = [base64_body[i : i + 64] for i in range(0, len(base64_body), 64)]
    return ("\n".join([f"-----BEGIN {label}-----", *lines, f"-----END {label}-----"]) + "\n").encode()


def _split_pem_headers(body: str) -> tuple[str, str]:
    """Separate RFC 1421 headers (Proc-Type, DEK-Info) from the base64 body."""
    if ":" not in body:
        return "", body
    header_lines = [line for line in body.splitlines() if ":" in line]
    body_lines = [line for line in body.splitlines() if ":" not in line]
    return "\n".join(header_lines), "\n".join(body_lines)


def _pem_from_base64(text: str) -> bytes:
    """Decode base64 that wraps a PEM (System API form) or raw DER (PEM body without armor)."""
    if not _BASE64_TEXT.match(text):
        raise KeyMaterialError(
            f"found {len(text)} characters that are neither a PEM block nor base64; expected an "
            "RSA private key (PEM, or base64 of a PEM as the System API returns it)"
        )

    compact = re.sub(r"\s+", "", text).replace("-", "+").replace("_", "/")
    try:
        decoded = base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise KeyMaterialError(
            f"found {len(text)} characters of invalid base64; expected base64 of a PEM private key"
        ) from None

    try:
        inner = decoded.decode("utf-8")
    except UnicodeDecodeError:
        return _der_to_pem(decoded)

    pem = _find_pem(_undo_env_damage(inner))
    if pem is None:
        raise KeyMaterialError(
            f"found {len(text)} characters of base64 that do not decode to a PEM private key "
            "(a Mux API token secret pasted here is a common mistake); expected the signing "
            "key's private key"
        )
    return pem


def _der_to_pem(der: bytes) -> bytes:
    # Base64 DER is a PEM body without its armor, so try PKCS#8 and PKCS#1 labels in turn.
    body = base64.b64encode(der).decode()
    lines = "\n".join(body[i : i + 64] for i in range(0, len(body), 64))
    for label in ("PRIVATE KEY", "RSA PRIVATE KEY"):
        candidate = f"-----BEGIN {label}-----\n{lines}\n-----END {label}-----\n".encode()
        try:
            serialization.load_pem_private_key(candidate, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            continue
        return candidate
    raise KeyMaterialError(
        f"found {len(der)} bytes of base64 binary that are not a private key (a Mux API token "
        "secret pasted here is a common mistake); expected the signing key's private key"
    )


def _load_rsa_key(pem: bytes) -> rsa.RSAPrivateKey:
    label = pem.split(b"\n", 1)[0].decode(errors="replace")
    if "PUBLIC KEY" in label or "CERTIFICATE" in label:
        raise KeyMaterialError(
            f"found a {label.strip('- ').replace('BEGIN ', '').lower()}; expected the private key "
            "(the System API returns it only when the key is created)"
        )

    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        raise KeyMaterialError(
            "found a passphrase-encrypted private key; export it without a passphrase"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise KeyMaterialError(
            f"found a PEM block labelled '{label.strip('- ').replace('BEGIN ', '')}' that does "
            "not parse as a private key; expected an RSA private key in PKCS#1 or PKCS#8 form"
        ) from None

    if not isinstance(key, rsa.RSAPrivateKey):
        raise KeyMaterialError(f"found {_key_kind(key)} private key; Mux signing keys are RSA")

    if key.key_size < MIN_RSA_BITS:
        raise KeyMaterialError(
            f"found an RSA key of {key.key_size} bits; expected at least {MIN_RSA_BITS} bits"
        )
    return key


def _key_kind(key: object) -> str:
    kinds = {
        ec.EllipticCurvePrivateKey: "an EC",
        ed25519.Ed25519PrivateKey: "an Ed25519",
        ed448.Ed448PrivateKey: "an Ed448",
        dsa.DSAPrivateKey: "a DSA",
    }
    return next((name for kind, name in kinds.items() if isinstance(key, kind)), "a non-RSA")


def generate_rsa_key(bits: int = MIN_RSA_BITS) -> rsa.RSAPrivateKey:
    """Generate a fresh RSA private key, as Mux does for new signing keys."""
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def pkcs1_pem(key: rsa.RSAPrivateKey) -> bytes:
    """Return the key as a PKCS#1 PEM (`BEGIN RSA PRIVATE KEY`), the form Mux issues."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
