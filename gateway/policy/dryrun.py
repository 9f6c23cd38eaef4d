"""A load-time dry run of every rule condition against sample requests, to catch type mistakes.

CEL as used here is dynamically typed, so `when: "content.playback_id"` (a string) or
`when: "viewer.entitlements + 1"` compile, then fail on every request and the rule never matches.
The dry run evaluates each condition with sample values of every documented variable and rejects
a condition that returns a non-boolean for any sample, or fails with a type error for all of
them. A condition that fails on some samples only (a missing map key, say) depends on data and
is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import cel

from gateway.auth.principal import Viewer
from gateway.policy.conditions import NotBooleanError
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


@dataclass(frozen=True)
class _Sample:
    description: str
    context: cel.Context


def check_conditions_by_dry_run(policy: Policy, problems: ProblemCollector) -> None:
    """Add a problem for each rule condition that can never evaluate to a bool."""
    rules = [rule for rule in policy.rules if rule.condition.program is not None]
    if not rules:
        return

    samples = _build_samples(policy)
    for rule in rules:
        message = _dry_run(rule, samples)
        if message is not None:
            problems.add(rule.file, rule.when_line or rule.line, rule.name, f"when: {message}")


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
