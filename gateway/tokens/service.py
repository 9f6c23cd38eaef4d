"""The mint pipeline on plain values: policy decision, claims per audience, cache, signature."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from gateway.api.problems import FieldError
from gateway.auth.principal import Caller, Viewer
from gateway.keys.provider import KeyProvider
from gateway.observability.logging import hash_identifier, log_event
from gateway.observability.metrics import POLICY_DECISIONS, TOKENS_ISSUED, TOKENS_MINTED, labelled
from gateway.policy.model import Decision, DecisionInput
from gateway.tokens.cache import TokenCache, cache_key
from gateway.tokens.claims import build_claims, merged_claim_errors
from gateway.tokens.mux import playback_url
from gateway.tokens.signer import sign

if TYPE_CHECKING:
    from gateway.policy.store import PolicyStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TokenRequest:
    """One validated token request: the body of POST /v1/tokens or one batch item."""

    playback_id: str
    audiences: tuple[str, ...] | None = None
    modifiers: dict[str, dict[str, Any]] = field(default_factory=dict)
    ttl: int | None = None
    viewer: Viewer | None = None
    # Dotted path of this request in the body ("" for a single request, "items[3]" in a batch).
    path: str = ""


@dataclass(frozen=True)
class RequestContext:
    """Facts about the HTTP request that policies may use."""

    country: str = ""
    origin: str | None = None


class PolicyDeniedError(Exception):
    """The policy denied the request. `rule` names the deny rule or the allow rule that matched."""

    def __init__(self, decision: Decision, detail: str) -> None:
        super().__init__(detail)
        self.decision = decision
        self.detail = detail


class InvalidClaimsError(Exception):
    """Claims that are invalid once the policy's fixed claims are merged in."""

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("invalid claims")
        self.errors = errors


@dataclass(frozen=True)
class TokenPlan:
    """The signing plan: the decision, the lifetime and each audience's claims."""

    decision: Decision
    ttl: int
    claims: dict[str, dict[str, Any]]


@dataclass(frozen=True)
class TokenResult:
    """Signed tokens for one request and the URLs that carry them."""

    playback_id: str
    tokens: dict[str, str]
    urls: dict[str, str]
    expires_at: int
    rule: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "playback_id": self.playback_id,
            "tokens": self.tokens,
            "urls": self.urls,
            "expires_at": self.expires_at,
            "rule": self.rule,
        }


class TokenService:
    """Decide, build claims and sign, on plain values with no HTTP types."""

    def __init__(
        self,
        keys: KeyProvider,
        policies: PolicyStore,
        cache: TokenCache,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._keys = keys
        self._policies = policies
        self._cache = cache
        self._clock = clock

    @property
    def cache(self) -> TokenCache:
        return self._cache

    def decide(self, request: TokenRequest, caller: Caller, context: RequestContext) -> Decision:
        """Evaluate the live policy (and the shadow, if any) for one request."""
        viewer = request.viewer or caller.viewer
        decision_input = DecisionInput(
            viewer=viewer,
            playback_id=request.playback_id,
            audiences=request.audiences,
            now=datetime.fromtimestamp(self._clock(), tz=UTC),
            country=context.country,
            client=caller.client_id,
            origin=context.origin,
        )
        decision = self._policies.evaluate(decision_input)

        labelled(POLICY_DECISIONS, decision.effect, decision.rule or "none").inc()
        log_event(
            logger, "policy.decision",
            effect=decision.effect, rule=decision.rule, policy_version=decision.policy_version,
            playback_id=request.playback_id, viewer=hash_identifier(viewer.id),
            client=caller.client_id,
        )
        return decision

    def plan(self, request: TokenRequest, caller: Caller, context: RequestContext) -> TokenPlan:
        """Return the decision and, when allowed, the claims each token would carry."""
        decision = self.decide(request, caller, context)
        if not decision.allowed or decision.grant is None:
            return TokenPlan(decision, 0, {})

        grant = decision.grant
        ttl = grant.ttl if request.ttl is None else min(request.ttl, grant.ttl)
        kid = self._keys.active().kid
        expires_at = int(self._clock()) + ttl

        errors = [
            FieldError(f"{_prefix(request.path)}{audience}", f"no {audience} token is granted here: "
                       f"add '{audience}' to audiences or remove this object")
            for audience in request.modifiers if audience not in grant.audiences
        ]
        claims: dict[str, dict[str, Any]] = {}
        for audience in grant.audiences:
            claims[audience] = build_claims(
                playback_id=request.playback_id,
                audience=audience,
                kid=kid,
                expires_at=expires_at,
                requested=request.modifiers.get(audience, {}),
                fixed=grant.claims.get(audience, {}),
            )
            errors.extend(merged_claim_errors(audience, claims[audience], f"{_prefix(request.path)}{audience}"))
        if errors:
            raise InvalidClaimsError(errors)
        return TokenPlan(decision, ttl, claims)

    def issue(self, request: TokenRequest, caller: Caller, context: RequestContext) -> TokenResult:
        """Decide and sign every granted audience's token, serving cached tokens where possible.

        Raises PolicyDeniedError, InvalidClaimsError or NoSigningKeyError.
        """
        plan = self.plan(request, caller, context)
        if not plan.decision.allowed:
            raise PolicyDeniedError(plan.decision, denial_detail(plan.decision))

        key = self._keys.active()
        tokens: dict[str, str] = {}
        urls: dict[str, str] = {}
        expirations: list[int] = []
        for audience, claims in plan.claims.items():
            token, exp = self._cached_or_signed(audience, claims, plan.ttl, key)
            tokens[audience] = token
            urls[audience] = playback_url(audience, request.playback_id, token)
            expirations.append(exp)
            labelled(TOKENS_ISSUED, audience).inc()

        assert plan.decision.rule is not None
        return TokenResult(request.playback_id, tokens, urls, min(expirations), plan.decision.rule)

    def _cached_or_signed(self, audience: str, claims: dict[str, Any], ttl: int, key: Any) -> tuple[str, int]:
        if claims["kid"] != key.kid:
            # The active key changed between planning and signing: sign with the new one.
            claims = {**claims, "kid": key.kid}

        def sign_now() -> str:
            labelled(TOKENS_MINTED, audience).inc()
            return sign(claims, key)

        return self._cache.get_or_sign(cache_key(key.kid, ttl, claims), ttl, claims["exp"], sign_now)


def denial_detail(decision: Decision) -> str:
    """Return the human explanation of a deny decision."""
    if decision.rule is None:
        return "No policy rule allows this request."
    if decision.denied_audiences:
        outside = ", ".join(decision.denied_audiences)
        return (f"Rule {decision.rule!r} does not grant {outside}: request only the audiences it "
                "grants, or ask the policy owner for a rule that grants these.")
    if decision.message:
        return f"Denied by rule {decision.rule!r}: {decision.message}"
    return f"Denied by rule {decision.rule!r}."


def _prefix(path: str) -> str:
    return f"{path}." if path else ""
