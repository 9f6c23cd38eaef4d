"""A loaded policy and its evaluation: deny rules win, then the first matching allow rule decides."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import cel

from gateway.observability.logging import hash_identifier, log_event
from gateway.observability.metrics import POLICY_EVALUATION_ERRORS
from gateway.policy.conditions import Condition
from gateway.policy.model import Decision, DecisionInput, Effect, Grant, RuleMiss
from gateway.policy.problems import PolicyProblem
from gateway.tokens.mux import CLAIM_SPECS, DEFAULT_AUDIENCES

logger = logging.getLogger(__name__)

# Used when no file has a `defaults` section.
DEFAULT_TTL_SECONDS = 3600
DEFAULT_MAX_TTL_SECONDS = 86_400

REASON_CONDITION_FALSE = "condition is false"

# A failing condition usually fails on every request that reaches it. Each process therefore logs
# it at most once per interval for each rule and policy version, and counts the lines left out.
_ERROR_LOG_INTERVAL_SECONDS = 60.0
_MAX_LOGGED_ERROR_CHARS = 300


@dataclass(frozen=True)
class Rule:
    """One rule as loaded: where it came from, its condition and, for allow rules, what it grants."""

    name: str
    effect: Effect
    condition: Condition
    audiences: tuple[str, ...] = ()
    ttl: int | None = None
    claims: Mapping[str, Any] = field(default_factory=dict)
    message: str | None = None
    file: str = ""
    line: int = 0
    when_line: int = 0

    @property
    def when(self) -> str | None:
        return self.condition.source

    def claims_for(self, audience: str) -> dict[str, Any]:
        """Return the rule's claims that Mux defines for tokens of `audience`."""
        return {
            name: value for name, value in self.claims.items() if audience in CLAIM_SPECS[name].audiences
        }


@dataclass(frozen=True)
class Defaults:
    """Token lifetimes in seconds: `ttl` for rules without one, `max_ttl` caps every grant."""

    ttl: int = DEFAULT_TTL_SECONDS
    max_ttl: int = DEFAULT_MAX_TTL_SECONDS


@dataclass(frozen=True, eq=False)
class Policy:
    """A validated policy: rules in file order, defaults and the content catalog.

    `version` is the first 12 hex digits of the SHA-256 of the files' bytes, in load order.
    `catalog` maps each playback id to its attributes, with every attribute named anywhere in the
    catalog present (see `attribute_defaults`), so conditions can compare them without `has()`.
    `sources` contains each file's name and bytes as loaded, so a reload can share exactly this version.
    """

    version: str
    path: str
    files: tuple[str, ...]
    rules: tuple[Rule, ...]
    defaults: Defaults
    catalog: Mapping[str, Mapping[str, Any]]
    attribute_defaults: Mapping[str, Any]
    warnings: tuple[PolicyProblem, ...] = ()
    sources: tuple[tuple[str, bytes], ...] = field(default=(), repr=False)

    def rule(self, name: str) -> Rule | None:
        """Return the rule called `name`, or None."""
        return next((rule for rule in self.rules if rule.name == name), None)

    def grant_ttl(self, rule: Rule) -> int:
        """Return the token lifetime an allow rule grants, after the max_ttl cap."""
        return min(rule.ttl or self.defaults.ttl, self.defaults.max_ttl)

    @property
    def max_grant_ttl(self) -> int:
        """The maximum token lifetime any allow rule can grant, in seconds, or 0 without allow rules.

        A retiring signing key must stay valid at Mux at least this long.
        """
        return max((self.grant_ttl(rule) for rule in self.rules if rule.effect == "allow"), default=0)

    def content_for(self, playback_id: str) -> dict[str, Any]:
        """Return the `content` variable: the playback id plus its catalog attributes.

        A playback id missing from the catalog gets the attribute defaults.
        """
        attributes = self.catalog.get(playback_id, self.attribute_defaults)
        return {**attributes, "playback_id": playback_id}

    def condition_variables(self, request: DecisionInput) -> dict[str, Any]:
        """Return every variable a condition may use, all of them defined for every request."""
        # An empty list names no audiences, the same as leaving the field out.
        audiences = request.audiences or DEFAULT_AUDIENCES
        now = request.now if request.now.tzinfo is not None else request.now.replace(tzinfo=UTC)
        return {
            "viewer": request.viewer.as_policy_value(),
            "content": self.content_for(request.playback_id),
            "request": {
                "audiences": list(audiences),
                "country": request.country or "",
                "client": request.client,
                "origin": request.origin,
            },
            "now": now,
        }

    def evaluate(self, request: DecisionInput, *, record_errors: bool = True) -> Decision:
        """Decide one request. Never raises for a condition that fails: that rule does not match.

        With `record_errors` false (the shadow policy), failing conditions are logged but not
        counted in the evaluation error metric, which stays about the live policy.
        """
        # Converting the variables to CEL values costs more than most conditions, so it is
        # skipped when no rule has a condition to evaluate.
        needs_context = any(rule.condition.program is not None for rule in self.rules)
        context = cel.Context(self.condition_variables(request)) if needs_context else cel.Context({})

        matched: list[Rule] = []
        misses: list[RuleMiss] = []
        for rule in self.rules:
            reason = self._match(rule, context, request, record_errors)
            if reason is None:
                matched.append(rule)
            else:
                misses.append(RuleMiss(rule=rule.name, reason=reason))

        matched_names = tuple(rule.name for rule in matched)
        outcome = _DecisionParts(self.version, matched_names, tuple(misses))

        deny = next((rule for rule in matched if rule.effect == "deny"), None)
        if deny is not None:
            return outcome.deny(deny.name, deny.message)

        allow = next((rule for rule in matched if rule.effect == "allow"), None)
        if allow is None:
            return outcome.deny(None, "no rule allows this request")
        return self._grant(allow, request, outcome)

    def _match(
        self, rule: Rule, context: cel.Context, request: DecisionInput, record_errors: bool
    ) -> str | None:
        """Return None when the rule's condition holds, else the reason it does not."""
        try:
            holds = rule.condition.evaluate(context)
        except Exception as error:  # noqa: BLE001 - any failure in a condition means "not matched"
            _report_evaluation_error(self, rule, request, error, record_errors)
            return f"evaluation failed: {type(error).__name__}"
        return None if holds else REASON_CONDITION_FALSE

    def _grant(self, rule: Rule, request: DecisionInput, outcome: _DecisionParts) -> Decision:
        if not request.audiences:
            audiences = tuple(audience for audience in DEFAULT_AUDIENCES if audience in rule.audiences)
            if not audiences:
                listed = ", ".join(DEFAULT_AUDIENCES)
                granted = ", ".join(rule.audiences)
                message = (
                    f"rule '{rule.name}' grants none of the default audiences ({listed}); "
                    f"request audiences explicitly: {granted}"
                )
                return outcome.deny(rule.name, message)
        else:
            audiences = tuple(dict.fromkeys(request.audiences))
            outside = tuple(audience for audience in audiences if audience not in rule.audiences)
            if outside:
                message = f"rule '{rule.name}' does not grant: {', '.join(outside)}"
                return outcome.deny(rule.name, message, denied_audiences=outside)

        grant = Grant(
            rule=rule.name,
            audiences=audiences,
            ttl=self.grant_ttl(rule),
            claims={audience: rule.claims_for(audience) for audience in audiences},
        )
        return Decision(
            effect="allow",
            rule=rule.name,
            policy_version=self.version,
            grant=grant,
            matched=outcome.matched,
            not_matched=outcome.not_matched,
        )


@dataclass(frozen=True)
class _DecisionParts:
    """The fields shared by every decision of one evaluation."""

    policy_version: str
    matched: tuple[str, ...]
    not_matched: tuple[RuleMiss, ...]

    def deny(
        self, rule: str | None, message: str | None, denied_audiences: tuple[str, ...] = ()
    ) -> Decision:
        return Decision(
            effect="deny",
            rule=rule,
            policy_version=self.policy_version,
            message=message,
            matched=self.matched,
            not_matched=self.not_matched,
            denied_audiences=denied_audiences,
        )


class _ErrorLogThrottle:
    """Decide per (policy version, rule) whether a failure is logged now or only counted."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._lock = threading.Lock()
        self._last_logged: dict[tuple[str, str], float] = {}
        self._suppressed: dict[tuple[str, str], int] = {}

    def admit(self, key: tuple[str, str]) -> int | None:
        """Return the number of failures left unlogged since the last line, or None to skip."""
        now = time.monotonic()
        with self._lock:
            last = self._last_logged.get(key)
            if last is not None and now - last < self._interval:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return None
            self._last_logged[key] = now
            return self._suppressed.pop(key, 0)


_error_log_throttle = _ErrorLogThrottle(_ERROR_LOG_INTERVAL_SECONDS)


def _report_evaluation_error(
    policy: Policy, rule: Rule, request: DecisionInput, error: Exception, record_errors: bool
) -> None:
    if record_errors:
        POLICY_EVALUATION_ERRORS.labels(rule=rule.name).inc()

    suppressed = _error_log_throttle.admit((policy.version, rule.name))
    if suppressed is None:
        return
    log_event(
        logger,
        "policy.evaluation_failed",
        logging.WARNING,
        rule=rule.name,
        file=rule.file,
        line=rule.line,
        policy_version=policy.version,
        error_type=type(error).__name__,
        error=str(error)[:_MAX_LOGGED_ERROR_CHARS],
        playback_id=request.playback_id,
        viewer=hash_identifier(request.viewer.id),
        repeats_not_logged=suppressed,
        counted=record_errors,
    )


def utc_now() -> datetime:
    """Return the current time as the timezone-aware UTC datetime conditions see as `now`."""
    return datetime.now(UTC)
