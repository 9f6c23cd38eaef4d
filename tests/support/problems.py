"""Exact checks of problem+json responses (RFC 9457) from the gateway."""

from __future__ import annotations

from typing import Any

import requests

PROBLEM_BASE = "https://playback-gateway.dev/problems/"


def assert_problem(response: requests.Response, status: int, code: str, detail: str,
                   **extra: Any) -> dict[str, Any]:
    """Assert the status, media type and whole body of a problem response; return the body.

    `extra` lists the members beyond type, title, status and detail (such as rule or errors),
    so a member the test does not name fails the check.
    """
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body == {
        "type": PROBLEM_BASE + code,
        "title": _TITLES[status],
        "status": status,
        "detail": detail,
        **extra,
    }
    return body


_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    429: "Too Many Requests",
    503: "Service Unavailable",
}
