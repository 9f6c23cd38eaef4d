"""A load-time dry run of every rule condition against sample requests, to catch type mistakes.

CEL as used here is dynamically typed, so `when: "content.playback_id"` (a string) or
`when: "viewer.entitlements + 1"` compile, then fail on every request and the rule never matches.

Before the dry run, two checks read the expression itself. The fields of `viewer`, `request`
and `content` are known at load time, because `content` has `playback_id` plus every catalog
attribute (defaults included). So a field outside them is a typo. It would fail with a missing
key on every request, and a deny rule using it would never deny. Keys under `viewer.claims` are
not checked, because JWT claims differ between viewers. The second check rejects
`field == literal` and `field != literal` where no value the field can take has the literal's
type. CEL returns false (or true) for every such request instead of failing, as in
`content.tier == 1` with string tiers or `viewer.entitlements == "premium"`.

The dry run then evaluates each condition with sample values of every documented variable. It
rejects a condition that returns a non-boolean for any sample, or fails with a type error for
all of them. A missing key is allowed even when every sample fails with it. The field check has
already caught typos in `variable.field` selections, so such a key is most likely one that
depends on data, such as a claim under `viewer.claims`.

NOTE: both expression checks read `root.field` selections only. Index syntax
(`viewer["entitlement"]`), fields reached through a macro variable, and comparisons whose
operand is more than a bare field or literal are left to the dry run.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import cel

from gateway.auth.principal import Viewer
from gateway.policy.conditions import _STRING_LITERAL, NotBooleanError, _macro_bound_names
from gateway.policy.engine import Policy, Rule
from gateway.policy.model import DecisionInput
from gateway.policy.problems import ProblemCollector

# Catalog entries with the same attributes give the same sample, so only distinct attribute sets
# count, and at most this many of them keep loading a large catalog fast.
MAX_SAMPLE_CONTENTS = 50

# A playback id missing from the catalog, whose content gets the attribute defaults.
_UNCATALOGED_ID = "DryRunPlaybackIdNotInTheCatalog"

_SAMPLE_VIEWERS: tuple[tuple[str, Viewer], ...] = (
    ("an anonymous viewer", Viewer()),
    (
        "an authenticated viewer",
        Viewer(id="dry-run-viewer", authenticated=True, entitlements=("dry-run-entitlement",)),
    ),
)

# A request from a browser through a service client, and a bare one, so conditions on
# `request.client` and `request.origin` see both a string and null.
_SAMPLE_REQUESTS: tuple[dict[str, Any], ...] = (
    {"country": "US", "client": None, "origin": None},
    {"country": "", "client": "dry-run-client", "origin": "https://viewer.example"},
)


# The fields of the `viewer` and `request` variables, with the CEL types their values can have.
# The engine builds both maps with exactly these keys for every request.
_FIXED_FIELD_TYPES: dict[str, dict[str, frozenset[str]]] = {
    "viewer": {
        "id": frozenset({"a string", "null"}),
        "authenticated": frozenset({"a bool"}),
        "entitlements": frozenset({"a list"}),
        "claims": frozenset({"a map"}),
    },
    "request": {
        "audiences": frozenset({"a list"}),
        "country": frozenset({"a string"}),
        "client": frozenset({"a string", "null"}),
        "origin": frozenset({"a string", "null"}),
    },
}

# String literals are blanked with this character, which CEL source cannot contain, so the
# patterns below never match text inside a string and keep the literals' offsets.
_MASK = "\x00"
_FIELD = re.compile(r"(?<![\w.\x00])(viewer|request|content)\s*\.\s*([A-Za-z_]\w*)")
_LITERAL = r"(?:\x00+|-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?[uU]?|true|false|null)(?![\w.])"
_FIELD_OPERAND = r"(?<![\w.\x00])(?:viewer|request|content)\s*\.\s*[A-Za-z_]\w*(?![\w.(\[])"
# A comparison whose operands are exactly a field and a literal: the text before it may only be
# the start or an operator of lower precedence, and so may the text after it.
_BEFORE = r"(?:^|(?<=[(\[,?:])|(?<=&&)|(?<=\|\|))\s*"
_AFTER = r"\s*(?=$|[)\],?:}]|&&|\|\|)"
_FIELD_FIRST = re.compile(
    _BEFORE + rf"(?P<field>{_FIELD_OPERAND})\s*(?P<operator>==|!=)\s*(?P<literal>{_LITERAL})" + _AFTER
)
_LITERAL_FIRST = re.compile(
    _BEFORE + rf"(?P<literal>{_LITERAL})\s*(?P<operator>==|!=)\s*(?P<field>{_FIELD_OPERAND})" + _AFTER
)
_NUMBER_TYPES = frozenset({"an int", "a uint", "a double"})


@dataclass(frozen=True)
class _Sample:
    description: str
    context: cel.Context


def check_conditions_by_dry_run(policy: Policy, problems: ProblemCollector) -> None:
    """Add a problem for each rule condition that can never evaluate to a bool."""
    rules = [rule for rule in policy.rules if rule.condition.program is not None]
    if not rules:
        return

    field_types = _field_types(policy)
    samples = _build_samples(policy)
    for rule in rules:
        message = _check_expression(rule, field_types) or _dry_run(rule, samples)
        if message is not None:
            problems.add(rule.file, rule.when_line or rule.line, rule.name, f"when: {message}")


def _field_types(policy: Policy) -> dict[str, dict[str, frozenset[str]]]:
    """Return the fields of each variable that has fields, with the CEL types of their values."""
    content: dict[str, set[str]] = {"playback_id": {"a string"}}
    # Content missing from the catalog gets the defaults, so every default is a possible value.
    for attributes in (policy.attribute_defaults, *policy.catalog.values()):
        for name, value in attributes.items():
            content.setdefault(name, set()).add(cel_type_name(value))
    return {**_FIXED_FIELD_TYPES, "content": {name: frozenset(types) for name, types in content.items()}}


def _check_expression(rule: Rule, field_types: Mapping[str, Mapping[str, frozenset[str]]]) -> str | None:
    """Return why the expression uses an unknown field or compares a field with a literal it never equals."""
    source = rule.condition.source or ""
    masked = _STRING_LITERAL.sub(lambda match: _MASK * len(match.group()), source)
    bound = _macro_bound_names(source)
    return _unknown_field(masked, bound, field_types) or _impossible_comparison(source, masked, bound, field_types)


def _unknown_field(
    masked: str, bound: set[str], field_types: Mapping[str, Mapping[str, frozenset[str]]]
) -> str | None:
    for match in _FIELD.finditer(masked):
        variable, name = match.groups()
        known = field_types[variable]
        if variable in bound or name in known:
            continue
        listed = ", ".join(sorted(known))
        hint = " (catalog attributes and playback_id)" if variable == "content" else ""
        return f"unknown field '{variable}.{name}'; the fields of {variable}{hint} are {listed}"
    return None


def _impossible_comparison(
    source: str, masked: str, bound: set[str], field_types: Mapping[str, Mapping[str, frozenset[str]]]
) -> str | None:
    for pattern in (_FIELD_FIRST, _LITERAL_FIRST):
        for match in pattern.finditer(masked):
            variable, name = (part.strip() for part in match["field"].split("."))
            if variable in bound:
                continue
            literal = source[match.start("literal"):match.end("literal")]
            literal_type = _literal_type(literal)
            field_type_names = field_types[variable][name]
            if _comparable(literal_type, field_type_names):
                continue
            outcome = "false" if match["operator"] == "==" else "true"
            expression = source[match.start():match.end()].strip()
            hint = f"; to test membership, write `{literal} in {variable}.{name}`" if field_type_names == {
                "a list"} else ""
            return (
                f"`{expression}` is always {outcome} because {variable}.{name} is always "
                f"{_describe_types(field_type_names)}, never {literal_type}{hint}"
            )
    return None


def _literal_type(literal: str) -> str:
    if literal in ("true", "false"):
        return "a bool"
    if literal == "null":
        return "null"
    if literal[:1] in "bB" and len(literal) > 1 and literal[1] in "\"'rR":
        return "bytes"
    if literal[:1] in "\"'rR":
        return "a string"
    if literal[-1:] in "uU":
        return "a uint"
    return "a double" if any(mark in literal for mark in ".eE") else "an int"


def _comparable(literal_type: str, field_type_names: frozenset[str]) -> bool:
    # CEL compares ints, uints and doubles by numeric value, so any number matches any number.
    if literal_type in _NUMBER_TYPES:
        return bool(field_type_names & _NUMBER_TYPES)
    return literal_type in field_type_names


def _describe_types(type_names: frozenset[str]) -> str:
    ordered = sorted(type_names, key=lambda name: (name == "null", name))
    return " or ".join(ordered)


def _build_samples(policy: Policy) -> list[_Sample]:
    contents = _sample_playback_ids(policy)
    now = datetime.now(UTC)
    samples: list[_Sample] = []
    for viewer_description, viewer in _SAMPLE_VIEWERS:
        for content_description, playback_id in contents:
            for request in _SAMPLE_REQUESTS:
                request_input = DecisionInput(
                    viewer=viewer, playback_id=playback_id, audiences=None, now=now, **request
                )
                description = f"{viewer_description} and {content_description}"
                samples.append(_Sample(description, cel.Context(policy.condition_variables(request_input))))
    return samples


def _sample_playback_ids(policy: Policy) -> list[tuple[str, str]]:
    contents = [("content not in the catalog", _UNCATALOGED_ID)]
    seen: set[str] = set()
    for playback_id, attributes in policy.catalog.items():
        key = repr(sorted(attributes.items()))
        if key in seen:
            continue
        seen.add(key)
        contents.append((f"the catalog entry for {playback_id}", playback_id))
        if len(contents) > MAX_SAMPLE_CONTENTS:
            break
    return contents


def _dry_run(rule: Rule, samples: list[_Sample]) -> str | None:
    """Return why the rule's condition can never hold, or None when it can evaluate to a bool."""
    type_errors: list[TypeError] = []
    for sample in samples:
        try:
            rule.condition.evaluate(sample.context)
        except NotBooleanError:
            assert rule.condition.program is not None
            result = rule.condition.program.execute(sample.context)
            return (
                f"returns {cel_type_name(result)}, not a bool, with {sample.description}; "
                'compare explicitly, as in `content.tier == "free"` or `content.drm == true`'
            )
        except TypeError as error:
            type_errors.append(error)
        except Exception:  # noqa: BLE001, S112 - failures that depend on the data are allowed
            continue

    if type_errors and len(type_errors) == len(samples):
        return (
            f"fails with a type error for every sample request ({_first_sentence(str(type_errors[0]))}); "
            "compare values of the same type"
        )
    return None


def cel_type_name(value: Any) -> str:
    """Return the CEL name of the type of a value a CEL program returned."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a bool"
    names: tuple[tuple[type, str], ...] = (
        (str, "a string"),
        (int, "an int"),
        (float, "a double"),
        (bytes, "bytes"),
        (list, "a list"),
        (dict, "a map"),
        (datetime, "a timestamp"),
        (timedelta, "a duration"),
    )
    for python_type, name in names:
        if isinstance(value, python_type):
            return name
    return f"a {type(value).__name__}"


def _first_sentence(message: str) -> str:
    sentence = message.split(". ", 1)[0].strip()
    return sentence.rstrip(".")
