"""Values that flow into and out of policy evaluation. Plain, immutable, free of Flask."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from gateway.auth.principal import Viewer

Effect = Literal["allow", "deny"]


@dataclass(frozen=True)
class DecisionInput:
    """Everything a policy condition may look at for one token request.

    `audiences` is what the request named, or None when it named none (the policy then grants
    its audiences among video, thumbnail and storyboard).
    """

    viewer: Viewer
    playback_id: str
    audiences: tuple[str, ...] | None
    now: datetime
    country: str = ""
    client: str | None = None
    origin: str | None = None


@dataclass(frozen=True)
class Grant:
    """The grant of an allow rule: audiences, the token lifetime in seconds, fixed claims.

    `claims` maps each granted audience to the rule's claims that Mux defines for it.
    """

    rule: str
    audiences: tuple[str, ...]
    ttl: int
    claims: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class RuleMiss:
    """A rule that did not match, and why (condition false, or it failed to evaluate)."""

    rule: str
    reason: str


@dataclass(frozen=True)
class Decision:
    """The outcome of one evaluation.

    For a deny, `rule` is the deny rule or None when no rule matched. An allow whose grant does
    not cover every requested audience is a deny with `rule` set to the allow rule and
    `denied_audiences` listing what fell outside the grant.
    """

    effect: Effect
    rule: str | None
    policy_version: str
    grant: Grant | None = None
    message: str | None = None
    matched: tuple[str, ...] = ()
    not_matched: tuple[RuleMiss, ...] = ()
    denied_audiences: tuple[str, ...] = ()

    @property
    def allowed(self) -> bool:
        return self.effect == "allow"
