"""The long-lived objects one gateway process uses, built once by the app factory."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.auth.clients import ClientRegistry
from gateway.config import Settings
from gateway.keys.provider import KeyProvider

if TYPE_CHECKING:
    from gateway.policy.store import PolicyStore
    from gateway.tokens.service import TokenService


@dataclass
class Services:
    """Settings plus every component a request may need. Shared by all threads of a worker."""

    settings: Settings
    keys: KeyProvider
    policies: PolicyStore
    clients: ClientRegistry
    tokens: TokenService
    # Set when configured: viewer JWT verification, rate limiting, key management via Mux.
    viewers: Any = None
    rate_limiter: Any = None
    key_manager: Any = None
