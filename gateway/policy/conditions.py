"""Rule conditions: CEL expressions compiled once at load and evaluated per request."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import cel

# The variables every condition may use. The engine always defines all of them.
CONDITION_VARIABLES: tuple[str, ...] = ("viewer", "content", "request", "now")

# Long enough for any hand-written rule, short enough that a pasted blob is caught at load.
MAX_CONDITION_LENGTH = 4096

# `program.references()` lists comprehension variables (the `x` in `list.exists(x, ...)`) next to
# the real top-level ones, so the names bound by macros are found in the source and set aside.
_MACRO_BINDING = re.compile(
    r"\.\s*(?:all|exists|exists_one|map|filter)\s*\(\s*([A-Za-z_]\w*)\s*,(?:\s*([A-Za-z_]\w*)\s*,)?"
)
_STRING_LITERAL = re.compile(
    r"[rRbB]{0,2}(?:\"\"\"[\s\S]*?\"\"\"|'''[\s\S]*?'''|\"(?:\\.|[^\"\\])*\"|'(?:\\.|[^'\\])*')"
)

_PARSE_ERROR = re.compile(r"ERROR: <input>:(?P<line>\d+):(?P<column>\d+): (?P<reason>[^\n]*)")


class ConditionCompileError(ValueError):
    """A `when` expression that does not compile or uses an undefined variable."""


class NotBooleanError(TypeError):
    """A condition that evaluated to something other than true or false."""


@dataclass(frozen=True)
class Condition:
    """A compiled `when` expression. A rule without `when` gets an always-true condition."""

    source: str | None
    program: cel.Program | None = field(default=None, repr=False, compare=False)

    @property
    def always_true(self) -> bool:
        """Whether the condition matches every request: no `when`, or `when: "true"`."""
        return self.program is None or (self.source or "").strip() == "true"

    def evaluate(self, context: cel.Context) -> bool:
        """Evaluate against one request's variables.

        Raises whatever the CEL runtime raises (KeyError, TypeError, RuntimeError, ...) and
        NotBooleanError when the result is not a bool.
        """
        if self.program is None:
            return True

        result = self.program.execute(context)
        if not isinstance(result, bool):
            raise NotBooleanError(f"condition returned {type(result).__name__}, expected a bool")
        return result


ALWAYS = Condition(source=None)


def compile_condition(source: str) -> Condition:
    """Compile a `when` expression and check that it only uses the condition variables.

    Raises ConditionCompileError with a message fit for a load error.
    """
    if not source.strip():
        raise ConditionCompileError("must be a non-empty CEL expression; omit `when` to always match")
    if len(source) > MAX_CONDITION_LENGTH:
        raise ConditionCompileError(f"is {len(source)} characters long; the limit is {MAX_CONDITION_LENGTH}")

    try:
        program = cel.compile(source)
    except ValueError as error:
        raise ConditionCompileError(f"invalid CEL: {_parse_error_summary(str(error))}") from error

    unknown = _unknown_variables(source, program)
    if unknown:
        names = ", ".join(f"'{name}'" for name in unknown)
        noun = "variable" if len(unknown) == 1 else "variables"
        known = ", ".join(CONDITION_VARIABLES)
        raise ConditionCompileError(f"unknown {noun} {names}; conditions may use {known}")
    return Condition(source=source, program=program)


def _unknown_variables(source: str, program: cel.Program) -> list[str]:
    referenced = set(program.references().get("variables", []))
    bound = _macro_bound_names(source)
    return sorted(referenced - bound - set(CONDITION_VARIABLES))


def _macro_bound_names(source: str) -> set[str]:
    without_strings = _STRING_LITERAL.sub('""', source)
    names: set[str] = set()
    for match in _MACRO_BINDING.finditer(without_strings):
        names.update(name for name in match.groups() if name)
    return names


def _parse_error_summary(message: str) -> str:
    # The CEL parser reports "... ERROR: <input>:LINE:COLUMN: reason" and then repeats the source
    # with a caret. Keep the position and the reason only.
    match = _PARSE_ERROR.search(message)
    if match is None:
        return message.splitlines()[0] if message else "syntax error"
    return f"line {match['line']} column {match['column']} of the expression: {match['reason'].strip()}"
