"""Problems found while loading policy files or policy test files, with file and line."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class PolicyProblem:
    """One reason a file was rejected. `rule` is the rule or test case name, when there is one.

    `line` is 1-based, or 0 when the problem concerns the whole file.
    """

    file: str
    line: int
    rule: str | None
    message: str

    def __str__(self) -> str:
        # Line 0 marks a problem with the file as a whole (missing, unreadable, not UTF-8).
        location = f"{self.file}:{self.line}" if self.line else self.file
        if self.rule:
            return f"{location}: {self.rule}: {self.message}"
        return f"{location}: {self.message}"


class PolicyLoadError(Exception):
    """Policy files that failed validation. `problems` lists every problem found, in file order."""

    def __init__(self, problems: Iterable[PolicyProblem]) -> None:
        self.problems: list[PolicyProblem] = list(problems)
        super().__init__("\n".join(str(problem) for problem in self.problems))


class ProblemCollector:
    """Gather problems during validation, so one run reports all of them instead of the first."""

    def __init__(self) -> None:
        self.problems: list[PolicyProblem] = []

    def add(self, file: str, line: int, rule: str | None, message: str) -> None:
        self.problems.append(PolicyProblem(file=file, line=line, rule=rule, message=message))

    def __bool__(self) -> bool:
        return bool(self.problems)

    def raise_if_any(self) -> None:
        """Raise PolicyLoadError listing everything gathered, sorted by file and line."""
        if self.problems:
            ordered = sorted(self.problems, key=lambda problem: (problem.file, problem.line))
            raise PolicyLoadError(ordered)
