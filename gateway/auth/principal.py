"""Request principals: the viewer the policy reasons about and the API client that sent the request."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Viewer:
    """The viewer a token is for. An anonymous viewer has no id and no entitlements."""

    id: str | None = None
    authenticated: bool = False
    entitlements: tuple[str, ...] = ()
    claims: dict[str, Any] = field(default_factory=dict)

    def as_policy_value(self) -> dict[str, Any]:
        """Return the `viewer` variable that policy conditions see."""
        return {
            "id": self.id,
            "authenticated": self.authenticated,
            "entitlements": list(self.entitlements),
            "claims": dict(self.claims),
        }


ANONYMOUS = Viewer()


@dataclass(frozen=True)
class Client:
    """A service client from the clients file. The key itself is never kept, only its hash."""

    id: str
    scopes: frozenset[str]
    key_sha256: str = field(repr=False)


@dataclass(frozen=True)
class Caller:
    """The authenticated caller of one request: a viewer, optionally through a service client."""

    viewer: Viewer = ANONYMOUS
    client: Client | None = None

    @property
    def client_id(self) -> str | None:
        return self.client.id if self.client else None

    def has_scope(self, scope: str) -> bool:
        return self.client is not None and scope in self.client.scopes
