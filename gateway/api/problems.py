"""RFC 9457 problem details: the one error format of every route."""

from __future__ import annotations

from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

PROBLEM_MEDIA_TYPE = "application/problem+json"
_TYPE_BASE = "https://playback-gateway.dev/problems/"


@dataclass(frozen=True)
class FieldError:
    """One invalid field: a dotted path into the request body and how to fix it."""

    field: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "message": self.message}


@dataclass
class Problem(Exception):
    """An error response. Raise it anywhere below a route; the handler renders it.

    `code` is a fixed kebab-case identifier that becomes the `type` URI; `detail` is for humans
    and never contains secrets.
    """

    status: int
    code: str
    detail: str
    errors: list[FieldError] = field(default_factory=list)
    rule: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.detail)

    @property
    def title(self) -> str:
        return HTTPStatus(self.status).phrase

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": _TYPE_BASE + self.code,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if self.errors:
            body["errors"] = [error.as_dict() for error in self.errors]
        if self.rule is not None:
            body["rule"] = self.rule
        body.update(self.extra)
        return body


def invalid_request(errors: list[FieldError]) -> Problem:
    """Return a 400 problem listing every invalid field."""
    fields = ", ".join(error.field for error in errors[:5])
    more = "" if len(errors) <= 5 else f" and {len(errors) - 5} more"
    return Problem(400, "invalid-request", f"Invalid fields: {fields}{more}.", errors=errors)
