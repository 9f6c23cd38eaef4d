"""Shared checks for the mappings in policy and policy test files."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

from gateway.policy.problems import ProblemCollector
from gateway.policy.yamlsource import LineMapping, LineSequence


class FileContext:
    """The destination of problem reports: one file, the problem collector and the current rule or case."""

    def __init__(self, file: str, problems: ProblemCollector, rule: str | None = None) -> None:
        self.file = file
        self.problems = problems
        self.rule = rule

    def for_rule(self, rule: str | None) -> FileContext:
        return FileContext(self.file, self.problems, rule)

    def add(self, line: int, message: str) -> None:
        self.problems.add(self.file, line, self.rule, message)


def describe_type(value: Any) -> str:
    """Return a YAML value's type in the words of the YAML format: a string, a list, a mapping."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def check_mapping(value: Any, where: str, line: int, ctx: FileContext) -> LineMapping | None:
    """Return `value` if it is a mapping, else report that `where` must be one and return None."""
    if isinstance(value, LineMapping):
        return value
    ctx.add(line, f"{where} must be a mapping, not {describe_type(value)}")
    return None


def check_sequence(value: Any, where: str, line: int, ctx: FileContext) -> LineSequence | None:
    """Return `value` if it is a list, else report that `where` must be one and return None."""
    if isinstance(value, LineSequence):
        return value
    ctx.add(line, f"{where} must be a list, not {describe_type(value)}")
    return None


def check_keys(
    mapping: LineMapping,
    allowed: Iterable[str],
    where: str,
    ctx: FileContext,
    already_reported: Iterable[str] = (),
) -> None:
    """Report every key of `mapping` that is not in `allowed`, with a suggestion when one is close.

    Keys in `already_reported` are skipped, because the caller reported them with a better message.
    """
    allowed_keys = sorted(allowed)
    skipped = set(already_reported)
    for key in mapping:
        if isinstance(key, str) and (key in allowed_keys or key in skipped):
            continue
        suggestion = difflib.get_close_matches(str(key), allowed_keys, n=1)
        hint = f" (did you mean '{suggestion[0]}'?)" if suggestion else ""
        listed = ", ".join(allowed_keys)
        ctx.add(mapping.line_of(key), f"unknown key '{key}' in {where}{hint}; allowed keys: {listed}")


def require_key(mapping: LineMapping, key: str, where: str, ctx: FileContext) -> bool:
    """Report a missing required key; return whether it is present."""
    if key in mapping:
        return True
    ctx.add(mapping.line, f"{where} is missing required key '{key}'")
    return False


def string_list(value: Any, where: str, line: int, ctx: FileContext) -> list[tuple[str, int]] | None:
    """Return the (string, line) items of a list of strings, reporting items of other types."""
    sequence = check_sequence(value, where, line, ctx)
    if sequence is None:
        return None

    items: list[tuple[str, int]] = []
    for index, item in enumerate(sequence):
        item_line = sequence.line_of(index)
        if isinstance(item, str):
            items.append((item, item_line))
        else:
            ctx.add(item_line, f"{where} item {item!r} must be a string; quote it in YAML")
    return items
