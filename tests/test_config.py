"""Settings from the environment: defaults, conversions and start-up errors."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from gateway.config import ConfigError, RateLimit, Settings, parse_rate_limits


def test_defaults_with_empty_environment() -> None:
    settings = Settings.from_env({})
    assert settings.mux_signing_key is None
    assert settings.mux_api_url == "https://api.mux.com"
    assert settings.policy_path == Path("policies")
    assert settings.data_dir == Path(".gateway")
    assert settings.max_body_bytes == 1_048_576
    assert settings.trusted_proxies == 0
    assert settings.rate_limits == {}
    assert settings.cors_origins == ()
    assert settings.viewer_entitlements_claim == "entitlements"
    assert settings.rotation_enabled is False


def test_full_environment() -> None:
    keyring = base64.b64encode(bytes(range(32))).decode()
    settings = Settings.from_env({
        "MUX_SIGNING_KEY": " key123 ",
        "MUX_PRIVATE_KEY": "pem",
        "MUX_TOKEN_ID": "id",
        "MUX_TOKEN_SECRET": "secret",
        "GATEWAY_MUX_API_URL": "http://127.0.0.1:9000/",
        "GATEWAY_REDIS_URL": "redis://127.0.0.1:7000/0",
        "GATEWAY_KEYRING_KEY": keyring,
        "GATEWAY_CORS_ORIGINS": "https://app.example.com, http://localhost:3000/",
        "GATEWAY_RATE_LIMITS": "viewer=120/minute,client=6000/minute,ip=10/second",
        "GATEWAY_TRUSTED_PROXIES": "2",
        "GATEWAY_MAX_BODY_BYTES": "4096",
        "GATEWAY_COUNTRY_HEADER": "CF-IPCountry",
    })
    assert settings.mux_signing_key == "key123"
    assert settings.mux_api_url == "http://127.0.0.1:9000"
    assert settings.keyring_key == bytes(range(32))
    assert settings.cors_origins == ("https://app.example.com", "http://localhost:3000")
    assert settings.rate_limits == {
        "viewer": RateLimit(120, 60), "client": RateLimit(6000, 60), "ip": RateLimit(10, 1),
    }
    assert settings.trusted_proxies == 2
    assert settings.max_body_bytes == 4096
    assert settings.rotation_enabled is True


def test_repr_hides_secrets() -> None:
    settings = Settings.from_env({
        "MUX_SIGNING_KEY": "k", "MUX_PRIVATE_KEY": "PRIVATEPEM", "MUX_TOKEN_ID": "i",
        "MUX_TOKEN_SECRET": "SECRETVALUE", "GATEWAY_REDIS_URL": "redis://:REDISPASS@127.0.0.1/0",
    })
    text = repr(settings)
    assert "PRIVATEPEM" not in text
    assert "SECRETVALUE" not in text
    assert "REDISPASS" not in text


@pytest.mark.parametrize(
    ("environment", "message"),
    [
        ({"MUX_SIGNING_KEY": "k"}, "MUX_PRIVATE_KEY is missing: set MUX_SIGNING_KEY and MUX_PRIVATE_KEY "
         "together, or neither to use the embedded dev key"),
        ({"MUX_PRIVATE_KEY": "p"}, "MUX_SIGNING_KEY is missing: set MUX_SIGNING_KEY and MUX_PRIVATE_KEY "
         "together, or neither to use the embedded dev key"),
        ({"MUX_TOKEN_ID": "i"}, "MUX_TOKEN_SECRET is missing: set MUX_TOKEN_ID and MUX_TOKEN_SECRET together"),
        ({"GATEWAY_MUX_API_URL": "ftp://x"}, "GATEWAY_MUX_API_URL must be an http:// or https:// URL, got 'ftp://x'"),
        ({"GATEWAY_REDIS_URL": "memcached://:pw@h"}, "GATEWAY_REDIS_URL has unsupported scheme 'memcached': use "
         "redis://, rediss://, unix://, redis+sentinel:// or redis+cluster://"),
        ({"GATEWAY_KEYRING_KEY": "abc"}, "GATEWAY_KEYRING_KEY is not valid base64: generate one with "
         "`python -c 'import os,base64;print(base64.b64encode(os.urandom(32)).decode())'`"),
        ({"GATEWAY_KEYRING_KEY": base64.b64encode(b"short").decode()},
         "GATEWAY_KEYRING_KEY must decode to 32 bytes for AES-256-GCM, got 5 bytes"),
        ({"GATEWAY_CORS_ORIGINS": "*"}, "GATEWAY_CORS_ORIGINS entry '*' is not an origin: list full origins such "
         "as https://app.example.com (a wildcard is not allowed)"),
        ({"GATEWAY_RATE_LIMITS": "viewer=10"}, "GATEWAY_RATE_LIMITS entry 'viewer=10' is invalid: use "
         "KIND=COUNT/UNIT, for example viewer=120/minute"),
        ({"GATEWAY_RATE_LIMITS": "user=10/minute"}, "GATEWAY_RATE_LIMITS kind 'user' is unknown: use viewer, "
         "client or ip"),
        ({"GATEWAY_RATE_LIMITS": "ip=10/day"}, "GATEWAY_RATE_LIMITS unit 'day' is unknown: use second, minute "
         "or hour"),
        ({"GATEWAY_RATE_LIMITS": "ip=0/second"}, "GATEWAY_RATE_LIMITS count for ip must be at least 1"),
        ({"GATEWAY_TRUSTED_PROXIES": "two"}, "GATEWAY_TRUSTED_PROXIES must be an integer, got 'two'"),
        ({"GATEWAY_TRUSTED_PROXIES": "-1"}, "GATEWAY_TRUSTED_PROXIES must be between 0 and 16, got -1"),
        ({"GATEWAY_MAX_BODY_BYTES": "10"}, "GATEWAY_MAX_BODY_BYTES must be between 1024 and 67108864, got 10"),
        ({"GATEWAY_COUNTRY_HEADER": "X Country"}, "GATEWAY_COUNTRY_HEADER must be an HTTP header name such as "
         "CF-IPCountry, got 'X Country'"),
        ({"GATEWAY_VIEWER_JWKS_URL": "https://idp.example/jwks", "GATEWAY_VIEWER_PUBLIC_KEY": "pem"},
         "GATEWAY_VIEWER_JWKS_URL and GATEWAY_VIEWER_PUBLIC_KEY are both set: keep one"),
        ({"GATEWAY_LOG_LEVEL": "loud"}, "GATEWAY_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got 'loud'"),
    ],
)
def test_invalid_setting_names_variable(environment: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(environment)
    assert str(caught.value) == message


def test_rate_limits_allow_spaces_and_empty_items() -> None:
    assert parse_rate_limits(" ip = 5/second , ") == {"ip": RateLimit(5, 1)}
