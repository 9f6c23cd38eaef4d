"""The `rules` section: names, effects, conditions and, for allow rules, grants."""

from __future__ import annotations

import difflib
import re
from typing import Any

from gateway.policy.conditions import ALWAYS, Condition, ConditionCompileError, compile_condition
from gateway.policy.durations import DurationError, parse_duration
from gateway.policy.engine import Rule
from gateway.policy.fields import FileContext, check_keys, check_mapping, describe_type, string_list
from gateway.policy.yamlsource import LineMapping
from gateway.tokens.mux import (
    AUDIENCES,
    CLAIM_SPECS,
    RESERVED_CLAIMS,
    ClaimValueError,
    check_claim,
    check_claim_set,
)

ALLOW_RULE_KEYS = ("name", "effect", "when", "audiences", "ttl", "claims")
DENY_RULE_KEYS = ("name", "effect", "when", "message")
_GRANT_KEYS = ("audiences", "ttl", "claims")

# Rule names appear in metrics labels, logs and API responses, so they are short plain tokens.
RULE_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
MAX_MESSAGE_LENGTH = 500


def parse_rule(value: Any, line: int, ctx: FileContext) -> Rule | None:
    """Validate one rule mapping. Return the Rule, or None when its name, effect or condition is invalid.

    Every problem is reported, including those in the other keys. A rule whose name, effect and
    condition are valid is returned even with other problems, so that the checks across rules
    (unique names, unreachable rules) still run and one load reports everything.
    """
    mapping = check_mapping(value, "a rule", line, ctx)
    if mapping is None:
        return None

    name = _rule_name(mapping, ctx)
    rule_ctx = ctx.for_rule(name)
    effect = _effect(mapping, rule_ctx)
    if effect is None:
        check_keys(mapping, set(ALLOW_RULE_KEYS) | set(DENY_RULE_KEYS), "a rule", rule_ctx)
    else:
        _check_rule_keys(mapping, effect, rule_ctx)
    condition = _condition(mapping, rule_ctx)

    if effect == "deny":
        message = _message(mapping, rule_ctx)
        if name is None or condition is None:
            return None
        return Rule(
            name=name, effect="deny", condition=condition, message=message, file=ctx.file, line=mapping.line,
            when_line=mapping.line_of("when") if "when" in mapping else 0,
        )

    if effect == "allow":
        audiences = _audiences(mapping, rule_ctx)
        ttl = _ttl(mapping, rule_ctx)
        claims = _claims(mapping, audiences, rule_ctx)
        if name is None or condition is None:
            return None
        return Rule(
            name=name,
            effect="allow",
            condition=condition,
            audiences=audiences,
            ttl=ttl,
            claims=claims,
            file=ctx.file,
            line=mapping.line,
            when_line=mapping.line_of("when") if "when" in mapping else 0,
        )
    return None


def _rule_name(mapping: LineMapping, ctx: FileContext) -> str | None:
    if "name" not in mapping:
        ctx.add(mapping.line, "a rule is missing required key 'name'")
        return None

    name = mapping["name"]
    if not isinstance(name, str) or not RULE_NAME_PATTERN.match(name):
        message = (
            f"invalid rule name {name!r}: use lowercase letters, digits, '-' and '_', "
            "starting with a letter or digit, at most 64 characters"
        )
        ctx.add(mapping.line_of("name"), message)
        return None
    return name


def _effect(mapping: LineMapping, ctx: FileContext) -> str | None:
    if "effect" not in mapping:
        ctx.add(mapping.line, "missing required key 'effect' (allow or deny)")
        return None

    effect = mapping["effect"]
    if effect not in ("allow", "deny"):
        ctx.add(mapping.line_of("effect"), f"invalid effect {effect!r}: use allow or deny")
        return None
    return effect


def _check_rule_keys(mapping: LineMapping, effect: str, ctx: FileContext) -> None:
    if effect == "deny":
        for key in _GRANT_KEYS:
            if key in mapping:
                message = f"'{key}' is only for allow rules; a deny rule has name, effect, when and message"
                ctx.add(mapping.line_of(key), message)
        check_keys(mapping, DENY_RULE_KEYS, "a deny rule", ctx, already_reported=_GRANT_KEYS)
        return

    if "message" in mapping:
        message = (
            "'message' is only for deny rules; an allow rule has name, effect, when, audiences, ttl and claims"
        )
        ctx.add(mapping.line_of("message"), message)
    check_keys(mapping, ALLOW_RULE_KEYS, "an allow rule", ctx, already_reported=("message",))


def _condition(mapping: LineMapping, ctx: FileContext) -> Condition | None:
    if "when" not in mapping:
        return ALWAYS

    source = mapping["when"]
    line = mapping.line_of("when")
    # An unquoted `when: true` reaches here as a YAML boolean. It means the same as the CEL literal.
    if isinstance(source, bool):
        source = "true" if source else "false"
    if not isinstance(source, str):
        ctx.add(line, f"when: must be a CEL expression in a string, not {describe_type(source)}")
        return None

    try:
        return compile_condition(source)
    except ConditionCompileError as error:
        ctx.add(line, f"when: {error}")
        return None


def _message(mapping: LineMapping, ctx: FileContext) -> str | None:
    if "message" not in mapping:
        return None

    message = mapping["message"]
    line = mapping.line_of("message")
    if not isinstance(message, str) or not message.strip():
        ctx.add(line, f"message must be a non-empty string, not {describe_type(message)}")
        return None
    if len(message) > MAX_MESSAGE_LENGTH:
        ctx.add(line, f"message is {len(message)} characters long; the limit is {MAX_MESSAGE_LENGTH}")
        return None
    return message


def _audiences(mapping: LineMapping, ctx: FileContext) -> tuple[str, ...]:
    if "audiences" not in mapping:
        ctx.add(mapping.line, f"an allow rule is missing required key 'audiences' ({', '.join(AUDIENCES)})")
        return ()

    line = mapping.line_of("audiences")
    items = string_list(mapping["audiences"], "audiences", line, ctx)
    if items is None:
        return ()
    if not items and not mapping["audiences"]:
        ctx.add(line, "audiences must list at least one audience")

    audiences: list[str] = []
    for audience, item_line in items:
        if audience not in AUDIENCES:
            ctx.add(item_line, f"unknown audience '{audience}'; audiences: {', '.join(AUDIENCES)}")
        elif audience in audiences:
            ctx.add(item_line, f"audience '{audience}' is listed twice")
        else:
            audiences.append(audience)
    return tuple(audiences)


def _ttl(mapping: LineMapping, ctx: FileContext) -> int | None:
    if "ttl" not in mapping:
        return None
    try:
        return parse_duration(mapping["ttl"])
    except DurationError as error:
        ctx.add(mapping.line_of("ttl"), f"ttl: {error}")
        return None


def _claims(mapping: LineMapping, audiences: tuple[str, ...], ctx: FileContext) -> dict[str, Any]:
    if "claims" not in mapping:
        return {}
    claims_map = check_mapping(mapping["claims"], "claims", mapping.line_of("claims"), ctx)
    if claims_map is None:
        return {}

    claims: dict[str, Any] = {}
    for name, value in claims_map.items():
        line = claims_map.line_of(name)
        if _claim_fits(str(name), value, audiences, line, ctx):
            claims[str(name)] = value

    _check_claim_combinations(claims, audiences, claims_map, ctx)
    return claims


def _claim_fits(name: str, value: Any, audiences: tuple[str, ...], line: int, ctx: FileContext) -> bool:
    """Report a claim that is reserved, unknown, fits none of the audiences or has a bad value."""
    if name in RESERVED_CLAIMS:
        ctx.add(line, f"claims.{name} is set by the gateway and cannot be set by a policy: remove '{name}'")
        return False

    spec = CLAIM_SPECS.get(name)
    if spec is None:
        suggestion = difflib.get_close_matches(name, list(CLAIM_SPECS), n=1)
        hint = f" (did you mean '{suggestion[0]}'?)" if suggestion else ""
        ctx.add(line, f"claims.{name} is not a Mux claim{hint}")
        return False

    fitting = [audience for audience in audiences if audience in spec.audiences]
    if not fitting:
        if audiences:
            defined_for = ", ".join(audience for audience in AUDIENCES if audience in spec.audiences)
            message = (
                f"claims.{name} fits none of the rule's audiences ({', '.join(audiences)}); "
                f"Mux defines it for: {defined_for}"
            )
            ctx.add(line, message)
        return False

    # A claim goes into every fitting audience's token, so it must be valid for each of them.
    messages = []
    for audience in fitting:
        try:
            check_claim(audience, name, value)
        except ClaimValueError as error:
            messages.append(str(error))
    for message in dict.fromkeys(messages):
        ctx.add(line, f"claims.{name} {message}")
    return not messages


def _check_claim_combinations(
    claims: dict[str, Any], audiences: tuple[str, ...], claims_map: LineMapping, ctx: FileContext
) -> None:
    reported: set[tuple[str, str]] = set()
    for audience in audiences:
        in_token = {name: value for name, value in claims.items() if audience in CLAIM_SPECS[name].audiences}
        for name, message in check_claim_set(audience, in_token):
            if (name, message) not in reported:
                reported.add((name, message))
                ctx.add(claims_map.line_of(name), f"claims.{name} {message}")
