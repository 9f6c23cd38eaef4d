"""Settings read once from the environment and validated before anything starts.

An invalid value stops start-up with a ConfigError that names the variable and the fix.
Secrets are kept in fields that never print.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

DEFAULT_MUX_API_URL = "https://api.mux.com"
DEFAULT_MAX_BODY_BYTES = 1_048_576

_RATE_UNITS = {"second": 1, "minute": 60, "hour": 3600}
_RATE_KINDS = ("viewer", "client", "ip")
_RATE_ITEM = re.compile(r"^(?P<kind>[a-z]+)=(?P<count>\d+)/(?P<unit>[a-z]+)$")


class ConfigError(ValueError):
    """A setting that cannot be used. The message names the variable and how to fix it."""


@dataclass(frozen=True)
class RateLimit:
    """At most `count` requests per `period` seconds for one caller of a kind."""

    count: int
    period: int


@dataclass(frozen=True)
class Settings:
    """Validated gateway settings. Build with `Settings.from_env()`."""

    mux_signing_key: str | None = None
    mux_private_key: str | None = field(default=None, repr=False)
    mux_token_id: str | None = None
    mux_token_secret: str | None = field(default=None, repr=False)
    mux_api_url: str = DEFAULT_MUX_API_URL
    redis_url: str | None = field(default=None, repr=False)
    policy_path: Path = Path("policies")
    shadow_policy_path: Path | None = None
    data_dir: Path = Path(".gateway")
    keyring_key: bytes | None = field(default=None, repr=False)
    clients_file: Path | None = None
    viewer_jwks_url: str | None = None
    viewer_public_key: str | None = field(default=None, repr=False)
    viewer_issuer: str | None = None
    viewer_audience: str | None = None
    viewer_entitlements_claim: str = "entitlements"
    country_header: str | None = None
    cors_origins: tuple[str, ...] = ()
    rate_limits: dict[str, RateLimit] = field(default_factory=dict)
    trusted_proxies: int = 0
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    log_level: str = "INFO"
    audit_log_path: Path | None = None

    @property
    def rotation_enabled(self) -> bool:
        return bool(self.mux_token_id and self.mux_token_secret)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read and validate every GATEWAY_* and MUX_* variable. Raises ConfigError."""
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(name)
            return value if value is not None and value.strip() != "" else None

        signing_key, private_key = get("MUX_SIGNING_KEY"), get("MUX_PRIVATE_KEY")
        if bool(signing_key) != bool(private_key):
            missing = "MUX_PRIVATE_KEY" if signing_key else "MUX_SIGNING_KEY"
            raise ConfigError(
                f"{missing} is missing: set MUX_SIGNING_KEY and MUX_PRIVATE_KEY together, "
                "or neither to use the embedded dev key"
            )

        token_id, token_secret = get("MUX_TOKEN_ID"), get("MUX_TOKEN_SECRET")
        if bool(token_id) != bool(token_secret):
            missing = "MUX_TOKEN_SECRET" if token_id else "MUX_TOKEN_ID"
            raise ConfigError(f"{missing} is missing: set MUX_TOKEN_ID and MUX_TOKEN_SECRET together")

        jwks_url, public_key = get("GATEWAY_VIEWER_JWKS_URL"), get("GATEWAY_VIEWER_PUBLIC_KEY")
        if jwks_url and public_key:
            raise ConfigError(
                "GATEWAY_VIEWER_JWKS_URL and GATEWAY_VIEWER_PUBLIC_KEY are both set: keep one"
            )

        return cls(
            mux_signing_key=signing_key.strip() if signing_key else None,
            mux_private_key=private_key,
            mux_token_id=token_id,
            mux_token_secret=token_secret,
            mux_api_url=_http_url("GATEWAY_MUX_API_URL", get("GATEWAY_MUX_API_URL"))
            or DEFAULT_MUX_API_URL,
            redis_url=_redis_url(get("GATEWAY_REDIS_URL")),
            policy_path=Path(get("GATEWAY_POLICY_PATH") or "policies"),
            shadow_policy_path=_optional_path(get("GATEWAY_SHADOW_POLICY_PATH")),
            data_dir=Path(get("GATEWAY_DATA_DIR") or ".gateway"),
            keyring_key=_keyring_key(get("GATEWAY_KEYRING_KEY")),
            clients_file=_optional_path(get("GATEWAY_CLIENTS_FILE")),
            viewer_jwks_url=_http_url("GATEWAY_VIEWER_JWKS_URL", jwks_url),
            viewer_public_key=public_key,
            viewer_issuer=get("GATEWAY_VIEWER_ISSUER"),
            viewer_audience=get("GATEWAY_VIEWER_AUDIENCE"),
            viewer_entitlements_claim=get("GATEWAY_VIEWER_ENTITLEMENTS_CLAIM") or "entitlements",
            country_header=_header_name("GATEWAY_COUNTRY_HEADER", get("GATEWAY_COUNTRY_HEADER")),
            cors_origins=_origins(get("GATEWAY_CORS_ORIGINS")),
            rate_limits=parse_rate_limits(get("GATEWAY_RATE_LIMITS")),
            trusted_proxies=_int("GATEWAY_TRUSTED_PROXIES", get("GATEWAY_TRUSTED_PROXIES"), 0, 0, 16),
            max_body_bytes=_int(
                "GATEWAY_MAX_BODY_BYTES", get("GATEWAY_MAX_BODY_BYTES"),
                DEFAULT_MAX_BODY_BYTES, 1024, 64 * 1_048_576,
            ),
            log_level=_log_level(get("GATEWAY_LOG_LEVEL")),
            audit_log_path=_audit_log_path(get("GATEWAY_AUDIT_LOG")),
        )


def _optional_path(value: str | None) -> Path | None:
    return Path(value) if value else None


def _audit_log_path(value: str | None) -> Path | None:
    if value is None:
        return None
    path = Path(value.strip())
    if path.is_dir():
        raise ConfigError(f"GATEWAY_AUDIT_LOG must be a file path, got the folder {value!r}: name a file in it")
    if not path.parent.is_dir():
        raise ConfigError(
            f"GATEWAY_AUDIT_LOG folder {str(path.parent)!r} does not exist: create it or choose another path"
        )
    return path


def _int(name: str, value: str | None, default: int, minimum: int, maximum: int) -> int:
    if value is None:
        return default
    try:
        number = int(value.strip())
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {value!r}") from None
    if not minimum <= number <= maximum:
        raise ConfigError(f"{name} must be between {minimum} and {maximum}, got {number}")
    return number


def _http_url(name: str, value: str | None) -> str | None:
    if value is None:
        return None
    parsed = urlparse(value.strip())
    if parsed.scheme not in {"http", "https"} or not parsed.hostname:
        raise ConfigError(f"{name} must be an http:// or https:// URL, got {value!r}")
    return value.strip().rstrip("/")


def _redis_url(value: str | None) -> str | None:
    if value is None:
        return None
    scheme = urlparse(value.strip()).scheme
    if scheme not in {"redis", "rediss", "unix", "redis+sentinel", "redis+cluster"}:
        # The URL may carry a password, so only the scheme is echoed.
        raise ConfigError(
            f"GATEWAY_REDIS_URL has unsupported scheme {scheme!r}: use redis://, rediss://, "
            "unix://, redis+sentinel:// or redis+cluster://"
        )
    return value.strip()


def _keyring_key(value: str | None) -> bytes | None:
    if value is None:
        return None
    try:
        key = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(
            "GATEWAY_KEYRING_KEY is not valid base64: generate one with "
            "`python -c 'import os,base64;print(base64.b64encode(os.urandom(32)).decode())'`"
        ) from None
    if len(key) != 32:
        raise ConfigError(
            f"GATEWAY_KEYRING_KEY must decode to 32 bytes for AES-256-GCM, got {len(key)} bytes"
        )
    return key


def _header_name(name: str, value: str | None) -> str | None:
    if value is None:
        return None
    if not re.fullmatch(r"[A-Za-z0-9-]{1,64}", value.strip()):
        raise ConfigError(f"{name} must be an HTTP header name such as CF-IPCountry, got {value!r}")
    return value.strip()


def _origins(value: str | None) -> tuple[str, ...]:
    if value is None:
        return ()
    origins = []
    for raw in value.split(","):
        origin = raw.strip().rstrip("/")
        if not origin:
            continue
        parsed = urlparse(origin)
        if origin == "*" or parsed.scheme not in {"http", "https"} or not parsed.netloc or parsed.path:
            raise ConfigError(
                f"GATEWAY_CORS_ORIGINS entry {raw.strip()!r} is not an origin: list full origins "
                "such as https://app.example.com (a wildcard is not allowed)"
            )
        origins.append(origin.lower())
    return tuple(origins)


def parse_rate_limits(value: str | None) -> dict[str, RateLimit]:
    """Parse `viewer=120/minute,client=6000/minute,ip=600/minute`. Raises ConfigError."""
    if value is None:
        return {}
    limits: dict[str, RateLimit] = {}
    for raw in value.split(","):
        item = raw.strip().replace(" ", "")
        if not item:
            continue
        match = _RATE_ITEM.match(item)
        if not match:
            raise ConfigError(
                f"GATEWAY_RATE_LIMITS entry {raw.strip()!r} is invalid: use KIND=COUNT/UNIT, "
                "for example viewer=120/minute"
            )
        kind, count, unit = match["kind"], int(match["count"]), match["unit"]
        if kind not in _RATE_KINDS:
            raise ConfigError(
                f"GATEWAY_RATE_LIMITS kind {kind!r} is unknown: use viewer, client or ip"
            )
        if unit not in _RATE_UNITS:
            raise ConfigError(
                f"GATEWAY_RATE_LIMITS unit {unit!r} is unknown: use second, minute or hour"
            )
        if count < 1:
            raise ConfigError(f"GATEWAY_RATE_LIMITS count for {kind} must be at least 1")
        limits[kind] = RateLimit(count=count, period=_RATE_UNITS[unit])
    return limits


def _log_level(value: str | None) -> str:
    level = (value or "INFO").upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ConfigError(f"GATEWAY_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {value!r}")
    return level
