"""`policy check` and `policy test` commands: exit codes and output."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

from gateway.policy.commands import check_command, test_command
from gateway.policy.loader import load_policy
from tests.policy.helpers import FREE_ID

POLICY = f"""
version: 1
defaults: {{max_ttl: 4h}}
catalog:
  - playback_ids: [{FREE_ID}]
    attributes: {{tier: free}}
rules:
  - name: free
    effect: allow
    when: 'content.tier == "free"'
    audiences: [video]
    ttl: 6h
"""

PASSING = f"""
cases:
  - name: free video
    playback_id: {FREE_ID}
    expect: {{effect: allow, rule: free, ttl: 4h}}
"""

FAILING = f"""
cases:
  - name: expects deny
    playback_id: {FREE_ID}
    expect: {{effect: deny}}
"""

ROOT = Path(__file__).resolve().parents[2]


def run(command: Callable[[Path, io.StringIO], int], path: Path) -> tuple[int, str]:
    out = io.StringIO()
    code = command(path, out)
    return code, out.getvalue()


def test_check_valid_policy_prints_summary(write_policy: Callable[..., Path]) -> None:
    path = write_policy(POLICY)
    version = load_policy(path).version

    code, output = run(check_command, path)

    assert code == 0
    assert output == (
        f"{path}:7: free: ttl 6h is above defaults.max_ttl 4h; tokens get 4h (warning)\n"
        f"OK {path}: 1 file, 1 rule, 1 playback id in the catalog, longest grant 4h, version {version}\n"
    )


def test_check_invalid_policy_lists_problems(write_policy: Callable[..., Path]) -> None:
    path = write_policy(
        """
        version: 1
        rules:
          - name: free
            effect: allow
            audiences: [video, vod]
            when: 'content.tier = "free"'
        """
    )

    code, output = run(check_command, path)

    assert code == 1
    assert output == (
        f"{path}:5: free: unknown audience 'vod'; audiences: video, thumbnail, storyboard, gif, drm_license\n"
        f"{path}:6: free: when: invalid CEL: line 1 column 14 of the expression: Syntax error: "
        "token recognition error at: '= '\n"
        "2 problems found\n"
    )


def test_check_missing_path_fails(tmp_path: Path) -> None:
    code, output = run(check_command, tmp_path / "absent.yaml")

    assert code == 1
    assert output == f"{tmp_path / 'absent.yaml'}: no such file or folder\n1 problem found\n"


def test_check_shipped_example() -> None:
    code, output = run(check_command, ROOT / "policies")

    assert code == 0
    assert output.startswith(f"OK {ROOT / 'policies'}: 1 file, 7 rules, 6 playback ids in the catalog")


def test_test_command_passes_for_policy_folder(write_policy: Callable[..., Path]) -> None:
    policy = write_policy(POLICY, "policies/policy.yaml")
    write_policy(PASSING, "policies/tests/cases.yaml")
    version = load_policy(policy.parent).version

    code, output = run(test_command, policy.parent)

    assert code == 0
    assert output == f"PASS free video\n1 passed, 0 failed (policy {policy.parent}, version {version})\n"


def test_test_command_fails_for_failing_case(write_policy: Callable[..., Path]) -> None:
    policy = write_policy(POLICY, "policies/policy.yaml")
    tests = write_policy(FAILING, "policies/tests/cases.yaml")
    version = load_policy(policy.parent).version

    code, output = run(test_command, tests)

    assert code == 1
    assert output == (
        f"FAIL {tests}:2: expects deny\n"
        "    effect: expected deny, got allow\n"
        "    decision: allow by free; matched: free\n"
        f"0 passed, 1 failed (policy {policy.parent}, version {version})\n"
    )


def test_test_command_reports_invalid_policy(write_policy: Callable[..., Path]) -> None:
    policy = write_policy("version: 3\n", "policies/policy.yaml")
    write_policy(PASSING, "policies/tests/cases.yaml")

    code, output = run(test_command, policy.parent)

    assert code == 1
    assert output == f"{policy}:1: unsupported version 3; this gateway reads version 1\n1 problem found\n"


def test_test_command_with_explicit_tests_path(write_policy: Callable[..., Path]) -> None:
    policy = write_policy(POLICY, "policy.yaml")
    tests = write_policy(PASSING, "elsewhere/cases.yaml")
    out = io.StringIO()

    code = test_command(policy, out, tests_path=tests)

    assert code == 0
    assert out.getvalue().startswith("PASS free video\n")


def test_test_command_runs_shipped_examples() -> None:
    code, output = run(test_command, ROOT / "policies")

    assert code == 0
    assert "13 passed, 0 failed" in output
