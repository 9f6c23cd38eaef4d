"""`playback-gateway policy check PATH` and `policy test PATH`: exit code 0 when all is well, else 1."""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

from gateway.policy.durations import format_duration
from gateway.policy.loader import load_policy
from gateway.policy.problems import PolicyLoadError
from gateway.policy.testing import format_report, resolve_test_paths, run_policy_tests

EXIT_OK = 0
EXIT_FAILED = 1


def check_command(path: Path, out: TextIO) -> int:
    """Validate the policy at `path` and print one line per problem (`file:line: rule: message`)."""
    try:
        policy = load_policy(path)
    except PolicyLoadError as error:
        _print_problems(error, out)
        return EXIT_FAILED

    for warning in policy.warnings:
        out.write(f"{warning} (warning)\n")

    longest = format_duration(policy.max_grant_ttl) if policy.max_grant_ttl else "none"
    out.write(
        f"OK {path}: {_count(len(policy.files), 'file')}, {_count(len(policy.rules), 'rule')}, "
        f"{_count(len(policy.catalog), 'playback id')} in the catalog, longest grant {longest}, "
        f"version {policy.version}\n"
    )
    return EXIT_OK


def test_command(path: Path, out: TextIO, *, tests_path: Path | None = None) -> int:
    """Run policy test cases and print a line per case, with details under each failure.

    Without `tests_path`, PATH is either a policy folder with a `tests/` subfolder, or a test
    file or folder whose parent folder is the policy (see `resolve_test_paths`).
    """
    if tests_path is None:
        policy_path, tests_path = resolve_test_paths(path)
    else:
        policy_path = path

    try:
        report = run_policy_tests(policy_path, tests_path)
    except PolicyLoadError as error:
        _print_problems(error, out)
        return EXIT_FAILED

    out.write(format_report(report))
    return EXIT_OK if report.ok else EXIT_FAILED


# Keep pytest from collecting the command as a test when a test module imports it.
test_command.__test__ = False  # type: ignore[attr-defined]


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _print_problems(error: PolicyLoadError, out: TextIO) -> None:
    for problem in error.problems:
        out.write(f"{problem}\n")
    out.write(f"{_count(len(error.problems), 'problem')} found\n")
