"""Service clients with fresh API keys, written to a clients file the way operators write one."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from gateway.auth.clients import new_api_key


@dataclass(frozen=True)
class ServiceClient:
    """One entry of the clients file plus the plain API key that only the test holds."""

    id: str
    scopes: tuple[str, ...]
    key: str = field(repr=False)
    key_sha256: str = field(repr=False)

    @property
    def headers(self) -> dict[str, str]:
        return {"X-Api-Key": self.key}


def new_client(client_id: str, *scopes: str) -> ServiceClient:
    """Return a client with a fresh key from `new_api_key()`, as `clients new-key` prints it."""
    key, digest = new_api_key()
    return ServiceClient(id=client_id, scopes=scopes, key=key, key_sha256=digest)


def write_clients_file(path: Path, clients: Iterable[ServiceClient]) -> None:
    """Write the clients file atomically, so a gateway polling it never reads half a file."""
    document = {
        "clients": [
            {"id": client.id, "key_sha256": client.key_sha256, "scopes": list(client.scopes)}
            for client in clients
        ],
    }
    staging = path.with_name(path.name + ".tmp")
    staging.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    staging.replace(path)
