"""Errors of key management. Each carries the HTTP status and problem code the admin routes use.

Messages name the key id, the step that failed and what to do next. They never contain key
material, API secrets or response bodies beyond Mux's own error messages.
"""

from __future__ import annotations


class KeyManagementError(Exception):
    """Base class. `http_status`, `code` and `retry_after` drive the problem+json response."""

    http_status = 500
    code = "key-management-error"

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class KeyringDecryptError(KeyManagementError):
    """The keyring was written with another GATEWAY_KEYRING_KEY, or a record was tampered with."""

    code = "keyring-undecryptable"


class KeyringConfigError(KeyManagementError):
    """The keyring cannot be used with the current settings (for example no GATEWAY_KEYRING_KEY)."""

    code = "keyring-misconfigured"


class KeyringUnavailableError(KeyManagementError):
    """The shared keyring (Redis or the keyring file) cannot be read or written right now."""

    http_status = 503
    code = "keyring-unavailable"


class RotationInProgressError(KeyManagementError):
    """Another process holds the rotation lock."""

    http_status = 409
    code = "rotation-in-progress"


class LockLostError(KeyManagementError):
    """The rotation lock expired while this process was still working, so it stopped."""

    http_status = 503
    code = "rotation-lock-lost"


class UnknownKeyError(KeyManagementError):
    """No held key has the given id."""

    http_status = 404
    code = "unknown-key"


class RevokeRefusedError(KeyManagementError):
    """Revoking this key would leave the gateway without a signing key."""

    http_status = 400
    code = "revoke-refused"


class MuxApiError(KeyManagementError):
    """The System API returned an error envelope (or a status it should not have)."""

    http_status = 502
    code = "mux-api-error"

    def __init__(
        self,
        message: str,
        *,
        status: int,
        error_type: str | None = None,
        messages: tuple[str, ...] = (),
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message, retry_after=retry_after)
        self.status = status
        self.error_type = error_type
        self.messages = messages


class MuxResponseError(MuxApiError):
    """The System API returned 2xx with a body that is not what its contract describes."""

    code = "mux-invalid-response"


class MuxUnavailableError(KeyManagementError):
    """The System API could not be reached, timed out, or kept returning 429/5xx through retries."""

    http_status = 503
    code = "mux-api-unavailable"

    def __init__(self, message: str, *, status: int | None = None, retry_after: int | None = None) -> None:
        super().__init__(message, retry_after=retry_after)
        self.status = status


class PartialFailureError(KeyManagementError):
    """Some keys of a batch operation (retire, reconcile --fix) were handled and others failed.

    `result` is the operation's normal result, listing what succeeded and what failed.
    """

    http_status = 502
    code = "key-operation-incomplete"

    def __init__(self, message: str, result: dict[str, object], *, retry_after: int | None = None) -> None:
        super().__init__(message, retry_after=retry_after)
        self.result = result
