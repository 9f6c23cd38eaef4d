"""A client for Mux's System API signing-key endpoints.

Authenticates with HTTP Basic (access-token id and secret), puts a timeout on every call and
retries 429, 5xx and connection failures with exponential backoff and full jitter, honouring
Retry-After when the server sends one. Other 4xx responses are never retried. A failed call raises
MuxApiError (Mux returned an error), MuxResponseError (Mux returned 2xx with a body that
does not fit the contract) or MuxUnavailableError (no usable response through all attempts).
"""

from __future__ import annotations

import email.utils
import logging
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import requests

from gateway.keys.errors import MuxApiError, MuxResponseError, MuxUnavailableError
from gateway.keys.material import KeyMaterialError, SigningKey, parse_private_key
from gateway.observability.logging import log_event
from gateway.observability.metrics import MUX_API_REQUESTS

SIGNING_KEYS_PATH = "/system/v1/signing-keys"
# Mux documents a maximum page size of 100 for list endpoints.
PAGE_SIZE = 100
# A guard against a server that never returns a short page: 1,000 pages is 100,000 keys.
MAX_PAGES = 1000
CONNECT_TIMEOUT_SECONDS = 3.05
READ_TIMEOUT_SECONDS = 10.0
MAX_ATTEMPTS = 4
BACKOFF_BASE_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 8.0
# A Retry-After longer than this ends the retries instead of stalling an admin request.
RETRY_AFTER_MAX_SECONDS = 30.0
_MESSAGE_MAX_CHARS = 300

KEY_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RemoteKey:
    """A signing key as the System API lists it: id and creation time (Unix seconds)."""

    kid: str
    created_at: int


@dataclass(frozen=True)
class CreatedKey:
    """A key the System API just created, its private key already parsed and validated.

    `attempts` counts the POSTs sent: more than one means an earlier attempt may have created a
    key whose response never arrived.
    """

    key: SigningKey = field(repr=False)
    created_at: int
    attempts: int

    @property
    def kid(self) -> str:
        return self.key.kid

    def __repr__(self) -> str:
        return f"CreatedKey(kid={self.kid!r}, created_at={self.created_at}, attempts={self.attempts})"


class _Retry(Exception):
    """One attempt failed in a way that may succeed when repeated."""

    def __init__(self, reason: str, status: int | None, retry_after: float | None, final: Exception) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.retry_after = retry_after
        self.final = final


class SystemApiClient:
    """Create, list, get and delete signing keys through the System API."""

    def __init__(
        self,
        base_url: str,
        token_id: str,
        token_secret: str,
        *,
        connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
        read_timeout: float = READ_TIMEOUT_SECONDS,
        max_attempts: int = MAX_ATTEMPTS,
        backoff_base: float = BACKOFF_BASE_SECONDS,
        backoff_max: float = BACKOFF_MAX_SECONDS,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not token_id or not token_secret:
            raise ValueError("the System API client needs MUX_TOKEN_ID and MUX_TOKEN_SECRET")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        self.base_url = base_url.rstrip("/")
        self._auth = (token_id, token_secret)
        self._timeout = (connect_timeout, read_timeout)
        self._max_attempts = max_attempts
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._sleep = sleep
        self._session = requests.Session()

    def __repr__(self) -> str:
        return f"SystemApiClient(base_url={self.base_url!r})"

    @property
    def max_call_seconds(self) -> int:
        """Return an upper bound on how long one call may take, retries and waits included."""
        per_attempt = self._timeout[0] + self._timeout[1]
        waits = (self._max_attempts - 1) * max(self._backoff_max, RETRY_AFTER_MAX_SECONDS)
        return int(self._max_attempts * per_attempt + waits) + 1

    def close(self) -> None:
        self._session.close()

    def create_signing_key(self) -> CreatedKey:
        """Create a key and return it with its private key parsed. Raises MuxApiError and kin."""
        response, attempts = self._call("create", "POST", SIGNING_KEYS_PATH, expected=201)
        data = _data_object(response, "create")

        kid = _key_id(data, "create")
        created_at = _created_at(data, "create")
        private_key_text = data.get("private_key")
        if not isinstance(private_key_text, str) or not private_key_text:
            raise MuxResponseError(
                f"System API create returned key {kid} without a private_key; delete it at Mux "
                "and rotate again",
                status=response.status_code,
            )

        try:
            private_key = parse_private_key(private_key_text)
        except KeyMaterialError as error:
            # The message of KeyMaterialError describes the shape only, never the text.
            raise MuxResponseError(
                f"System API create returned key {kid} with an unusable private key ({error})",
                status=response.status_code,
            ) from None

        key = SigningKey(kid=kid, private_key=private_key, source="mux")
        return CreatedKey(key=key, created_at=created_at, attempts=attempts)

    def list_signing_keys(self) -> list[RemoteKey]:
        """Return every key of the environment, reading all pages."""
        keys: dict[str, RemoteKey] = {}
        for page in range(1, MAX_PAGES + 1):
            response, _ = self._call(
                "list", "GET", SIGNING_KEYS_PATH, expected=200,
                params={"limit": PAGE_SIZE, "page": page},
            )
            items = _data_list(response)
            for item in items:
                remote = RemoteKey(kid=_key_id(item, "list"), created_at=_created_at(item, "list"))
                keys[remote.kid] = remote
            if len(items) < PAGE_SIZE:
                return sorted(keys.values(), key=lambda remote: (remote.created_at, remote.kid))
        raise MuxResponseError(
            f"System API list returned more than {MAX_PAGES} full pages; refusing to read further",
            status=200,
        )

    def get_signing_key(self, kid: str) -> RemoteKey | None:
        """Return one key, or None when the System API returns 404."""
        path = f"{SIGNING_KEYS_PATH}/{_checked_key_id(kid)}"
        response, _ = self._call("get", "GET", path, expected=200, missing_ok=True)
        if response.status_code == 404:
            return None
        data = _data_object(response, "get")
        return RemoteKey(kid=_key_id(data, "get"), created_at=_created_at(data, "get"))

    def delete_signing_key(self, kid: str) -> bool:
        """Delete a key. Returns True if deleted now, False if Mux no longer had it (404)."""
        path = f"{SIGNING_KEYS_PATH}/{_checked_key_id(kid)}"
        response, _ = self._call("delete", "DELETE", path, expected=204, missing_ok=True)
        return response.status_code != 404

    def _call(
        self,
        operation: str,
        method: str,
        path: str,
        *,
        expected: int,
        params: dict[str, Any] | None = None,
        missing_ok: bool = False,
    ) -> tuple[requests.Response, int]:
        for attempt in range(1, self._max_attempts + 1):
            try:
                return self._attempt(operation, method, path, expected, params, missing_ok), attempt
            except _Retry as retry:
                if attempt == self._max_attempts:
                    raise retry.final from None
                delay = self._delay(attempt, retry.retry_after)
                if delay is None:
                    raise retry.final from None
                log_event(
                    logger, "mux_api.retry", logging.WARNING, operation=operation,
                    attempt=attempt, reason=retry.reason, status=retry.status,
                    delay_seconds=round(delay, 3),
                )
                self._sleep(delay)
        raise AssertionError("unreachable: the loop returns or raises")

    def _attempt(
        self,
        operation: str,
        method: str,
        path: str,
        expected: int,
        params: dict[str, Any] | None,
        missing_ok: bool,
    ) -> requests.Response:
        url = self.base_url + path
        try:
            response = self._session.request(
                method, url, params=params, auth=self._auth, timeout=self._timeout,
                allow_redirects=False,
            )
        except requests.Timeout:
            MUX_API_REQUESTS.labels(operation, "timeout").inc()
            final = MuxUnavailableError(
                f"System API {operation} ({method} {path}) timed out after {self._timeout[1]:g} s "
                f"on each of {self._max_attempts} attempts"
            )
            raise _Retry("timeout", None, None, final) from None
        except requests.RequestException as error:
            MUX_API_REQUESTS.labels(operation, "error").inc()
            final = MuxUnavailableError(
                f"System API {operation} ({method} {path}) failed: {type(error).__name__} "
                f"connecting to {self.base_url}, on each of {self._max_attempts} attempts"
            )
            raise _Retry(type(error).__name__, None, None, final) from None

        status = response.status_code
        MUX_API_REQUESTS.labels(operation, str(status)).inc()
        if status == expected or (missing_ok and status == 404):
            return response

        retry_after = _retry_after_seconds(response.headers.get("Retry-After"))
        error = _error_from_response(operation, method, path, response, retry_after)
        if status in _RETRYABLE_STATUSES:
            raise _Retry(f"HTTP {status}", status, retry_after, error)
        raise error

    def _delay(self, attempt: int, retry_after: float | None) -> float | None:
        if retry_after is not None:
            return None if retry_after > RETRY_AFTER_MAX_SECONDS else retry_after
        ceiling = min(self._backoff_max, self._backoff_base * 2 ** (attempt - 1))
        # Full jitter spreads the retries of several replicas hitting the same outage.
        return random.uniform(0, ceiling)  # noqa: S311 - jitter, not a secret


def _checked_key_id(kid: str) -> str:
    if not KEY_ID_PATTERN.match(kid):
        raise ValueError(f"invalid signing key id ({len(kid)} characters): expected letters, digits, '_' or '-'")
    return kid


def _retry_after_seconds(value: str | None) -> float | None:
    """Parse Retry-After as delta-seconds or an HTTP date; None when absent or unreadable."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _error_from_response(
    operation: str, method: str, path: str, response: requests.Response, retry_after: float | None
) -> MuxApiError | MuxUnavailableError:
    status = response.status_code
    error_type, messages = _error_envelope(response)
    told = "; ".join(messages) if messages else "no error message"
    retry_seconds = int(retry_after + 0.999) if retry_after is not None else None

    if status == 429 or status >= 500:
        return MuxUnavailableError(
            f"System API {operation} ({method} {path}) returned {status}"
            f"{f' {error_type}' if error_type else ''}: {told}",
            status=status,
            retry_after=retry_seconds if status == 429 else None,
        )

    hint = ""
    if status == 401:
        hint = " Check MUX_TOKEN_ID and MUX_TOKEN_SECRET."
    elif status == 403:
        hint = " The access token needs System write permission."
    return MuxApiError(
        f"System API {operation} ({method} {path}) returned {status}"
        f"{f' {error_type}' if error_type else ''}: {told}.{hint}",
        status=status,
        error_type=error_type,
        messages=messages,
    )


def _error_envelope(response: requests.Response) -> tuple[str | None, tuple[str, ...]]:
    """Read Mux's `{"error": {"type", "messages"}}`; anything else yields no type and no messages."""
    try:
        body = response.json()
    except ValueError:
        return None, ()
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return None, ()

    error_type = error.get("type")
    raw_messages = error.get("messages")
    messages = tuple(
        message[:_MESSAGE_MAX_CHARS]
        for message in (raw_messages if isinstance(raw_messages, list) else [])
        if isinstance(message, str)
    )
    return (error_type[:_MESSAGE_MAX_CHARS] if isinstance(error_type, str) else None), messages


def _json_body(response: requests.Response, operation: str) -> Any:
    try:
        return response.json()
    except ValueError:
        raise MuxResponseError(
            f"System API {operation} returned {response.status_code} with a body that is not JSON",
            status=response.status_code,
        ) from None


def _data_object(response: requests.Response, operation: str) -> dict[str, Any]:
    body = _json_body(response, operation)
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, dict):
        raise MuxResponseError(
            f"System API {operation} returned {response.status_code} without a `data` object",
            status=response.status_code,
        )
    return data


def _data_list(response: requests.Response) -> list[dict[str, Any]]:
    body = _json_body(response, "list")
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        raise MuxResponseError(
            f"System API list returned {response.status_code} without a `data` list of objects",
            status=response.status_code,
        )
    return data


def _key_id(data: dict[str, Any], operation: str) -> str:
    kid = data.get("id")
    if not isinstance(kid, str) or not KEY_ID_PATTERN.match(kid):
        raise MuxResponseError(
            f"System API {operation} returned a signing key without a valid `id`", status=200
        )
    return kid


def _created_at(data: dict[str, Any], operation: str) -> int:
    # Mux sends created_at as a string of Unix seconds; an integer is accepted too.
    value = data.get("created_at")
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    raise MuxResponseError(
        f"System API {operation} returned key {data.get('id')} without a valid `created_at`",
        status=200,
    )
