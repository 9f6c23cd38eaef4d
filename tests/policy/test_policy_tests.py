"""Policy test cases: passing and failing runs, the failure report and invalid case files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.policy.problems import PolicyLoadError
from gateway.policy.testing import (
    format_report,
    load_test_cases,
    resolve_test_paths,
    run_policy_tests,
)
from tests.policy.helpers import FREE_ID, PREMIUM_ID

POLICY = f"""
version: 1
catalog:
  - playback_ids: [{FREE_ID}]
    attributes: {{tier: free}}
  - playback_ids: [{PREMIUM_ID}]
    attributes: {{tier: premium, available_from: 2027-01-01T00:00:00Z}}
rules:
  - name: premiere
    effect: deny
    when: 'content.available_from != null && now < content.available_from'
    message: not yet
  - name: premium-subscribers
    effect: allow
    when: 'content.tier == "premium" && "premium" in viewer.entitlements'
    audiences: [video, thumbnail, storyboard]
    ttl: 2h
    claims: {{max_resolution: 1080p}}
  - name: free
    effect: allow
    when: 'content.tier == "free"'
    audiences: [video, thumbnail, storyboard, gif]
    claims: {{max_resolution: 720p, asset_end_time: 60}}
"""

PASSING_CASES = f"""
cases:
  - name: subscriber after premiere
    viewer: {{id: viewer-1, entitlements: [premium]}}
    playback_id: {PREMIUM_ID}
    now: 2027-01-01T00:00:00Z
    request: {{audiences: [video], country: US}}
    expect:
      effect: allow
      rule: premium-subscribers
      ttl: 2h
      audiences: [video]
      claims: {{video: {{max_resolution: 1080p, asset_end_time: null}}}}
  - name: subscriber before premiere
    viewer: {{id: viewer-1, entitlements: [premium]}}
    playback_id: {PREMIUM_ID}
    now: "2026-12-31T23:59:59+00:00"
    expect: {{effect: deny, rule: premiere, message: not yet}}
  - name: gif outside grant
    viewer: {{id: viewer-1, entitlements: [premium]}}
    playback_id: {PREMIUM_ID}
    now: 2027-06-01T00:00:00Z
    request: {{audiences: [video, gif]}}
    expect: {{effect: deny, rule: premium-subscribers, denied_audiences: [gif]}}
  - name: anonymous free
    playback_id: {FREE_ID}
    expect:
      effect: allow
      rule: free
      ttl: 3600
      audiences: [video, thumbnail, storyboard]
      claims:
        video: {{max_resolution: 720p, asset_end_time: 60}}
        storyboard: {{asset_end_time: 60}}
"""

FAILING_CASES = f"""
cases:
  - name: passes
    playback_id: {FREE_ID}
    expect: {{effect: allow}}
  - name: wrong everything
    viewer: {{id: viewer-1}}
    playback_id: {PREMIUM_ID}
    now: 2027-01-01T00:00:00Z
    expect:
      effect: allow
      rule: premium-subscribers
      ttl: 2h
      claims: {{video: {{max_resolution: 1080p}}}}
  - name: wrong grant details
    playback_id: {FREE_ID}
    request: {{audiences: [video, thumbnail]}}
    expect:
      effect: allow
      rule: free
      ttl: 2h
      audiences: [video, gif]
      claims:
        video: {{max_resolution: 1080p, asset_end_time: null}}
        thumbnail: {{time: 5}}
        gif: {{}}
"""


@pytest.fixture
def policy_dir(write_policy: Callable[..., Path]) -> Path:
    return write_policy(POLICY, "policies/policy.yaml").parent


def test_passing_cases_report_ok(policy_dir: Path, write_policy: Callable[..., Path]) -> None:
    tests = write_policy(PASSING_CASES, "policies/tests/cases.yaml")

    report = run_policy_tests(policy_dir, tests)

    assert report.ok is True
    assert [result.case.name for result in report.passed] == [
        "subscriber after premiere", "subscriber before premiere", "gif outside grant", "anonymous free",
    ]
    assert report.failed == []
    assert format_report(report) == (
        "PASS subscriber after premiere\n"
        "PASS subscriber before premiere\n"
        "PASS gif outside grant\n"
        "PASS anonymous free\n"
        f"4 passed, 0 failed (policy {policy_dir}, version {report.policy_version})\n"
    )


def test_failing_cases_show_expected_and_got(policy_dir: Path, write_policy: Callable[..., Path]) -> None:
    tests = write_policy(FAILING_CASES, "policies/tests/cases.yaml")

    report = run_policy_tests(policy_dir, tests)

    assert report.ok is False
    assert [result.case.name for result in report.failed] == ["wrong everything", "wrong grant details"]
    assert format_report(report) == (
        "PASS passes\n"
        f"FAIL {tests}:5: wrong everything\n"
        "    effect: expected allow, got deny\n"
        "    rule: expected premium-subscribers, got null\n"
        "    ttl: expected 2h, got no grant\n"
        "    claims.video: expected a video token, got no video grant\n"
        "    decision: deny by null (no rule allows this request); matched: none\n"
        f"FAIL {tests}:14: wrong grant details\n"
        "    ttl: expected 2h, got 1h\n"
        "    audiences: expected [video, gif], got [video, thumbnail]\n"
        "    claims.video.max_resolution: expected '1080p', got '720p'\n"
        "    claims.video.asset_end_time: expected absent, got 60\n"
        "    claims.thumbnail.time: expected 5, got absent\n"
        "    claims.gif: expected a gif token, got no gif grant\n"
        "    decision: allow by free; matched: free\n"
        f"1 passed, 2 failed (policy {policy_dir}, version {report.policy_version})\n"
    )


def test_boolean_claim_is_not_number(write_policy: Callable[..., Path]) -> None:
    policy = write_policy(
        """
        version: 1
        rules:
          - name: everyone
            effect: allow
            audiences: [video]
            claims: {redundant_streams: true}
        """,
        "policies/policy.yaml",
    )
    tests = write_policy(
        f"""
        cases:
          - name: one is not true
            playback_id: {FREE_ID}
            expect: {{effect: allow, claims: {{video: {{redundant_streams: 1}}}}}}
        """,
        "policies/tests/cases.yaml",
    )

    report = run_policy_tests(policy.parent, tests)

    assert report.failed[0].failures == ("claims.video.redundant_streams: expected 1, got True",)


def test_no_cases_is_not_ok(policy_dir: Path, write_policy: Callable[..., Path]) -> None:
    tests = write_policy("cases: []\n", "policies/tests/cases.yaml")

    report = run_policy_tests(policy_dir, tests)

    assert report.ok is False
    assert format_report(report).endswith("no test cases found\n")


def test_invalid_case_file_reports_problems(write_policy: Callable[..., Path]) -> None:
    tests = write_policy(
        """
        cases:
          - name: bad fields
            playback_id: 12345
            viewer: {id: 7, authenticated: maybe, entitlements: premium, role: admin}
            request: {audiences: [video], country: NO, client: 5}
            now: yesterday
            expect: {effect: permit}
          - name: bad expectations
            playback_id: abc
            expect:
              effect: allow
              ttl: 1.5h
              audiences: [videos]
              claims: {vid: {}, video: [x]}
              rule: 5
              colour: red
          - name: bad expectations
            playback_id: abc
            expect: {effect: deny}
          - playback_id: abc
            expect: {effect: deny}
          - name: no expect
            playback_id: abc
        extra: 1
        """,
        "cases.yaml",
    )

    with pytest.raises(PolicyLoadError) as raised:
        load_test_cases(tests)

    assert [str(problem) for problem in raised.value.problems] == [
        f"{tests}:3: bad fields: playback_id must be a non-empty string; quote it in YAML",
        f"{tests}:4: bad fields: unknown key 'role' in viewer; allowed keys: authenticated, claims, "
        "entitlements, id",
        f"{tests}:4: bad fields: viewer.id must be a string or null, not a number",
        f"{tests}:4: bad fields: viewer.authenticated must be true or false",
        f"{tests}:4: bad fields: viewer.entitlements must be a list, not a string",
        f"{tests}:5: bad fields: request.country must be a string, not a boolean; quote it in YAML, "
        "where NO and ON read as booleans",
        f"{tests}:5: bad fields: request.client must be a string or null, not a number; quote it in YAML, "
        "where NO and ON read as booleans",
        f"{tests}:6: bad fields: now 'yesterday' is not an ISO 8601 time such as 2026-05-01T12:00:00Z",
        f"{tests}:7: bad fields: expect.effect must be allow or deny, not 'permit'",
        f"{tests}:12: bad expectations: expect.ttl: invalid duration '1.5h': use a positive whole number "
        "with a unit s, m, h or d (90s, 15m, 4h, 1d) or integer seconds",
        f"{tests}:13: bad expectations: unknown audience 'videos'; audiences: video, thumbnail, storyboard, "
        "gif, drm_license",
        f"{tests}:14: bad expectations: expect.claims: unknown audience 'vid'; audiences: video, thumbnail, "
        "storyboard, gif, drm_license",
        f"{tests}:14: bad expectations: expect.claims.video must be a mapping, not a list",
        f"{tests}:15: bad expectations: expect.rule must be a string or null",
        f"{tests}:16: bad expectations: unknown key 'colour' in expect; allowed keys: audiences, claims, "
        "denied_audiences, effect, message, rule, ttl",
        f"{tests}:17: bad expectations: duplicate case name (first at line 8)",
        f"{tests}:20: a test case needs a `name`: a non-empty string",
        f"{tests}:22: no expect: a test case is missing required key 'expect'",
        f"{tests}:24: unknown key 'extra' in a test file; allowed keys: cases",
    ]


def test_resolve_paths_for_policy_folder(policy_dir: Path, write_policy: Callable[..., Path]) -> None:
    write_policy(PASSING_CASES, "policies/tests/cases.yaml")

    assert resolve_test_paths(policy_dir) == (policy_dir, policy_dir / "tests")


def test_resolve_paths_for_tests_file_and_folder(policy_dir: Path, write_policy: Callable[..., Path]) -> None:
    tests_file = write_policy(PASSING_CASES, "policies/tests/cases.yaml")

    assert resolve_test_paths(tests_file) == (policy_dir, tests_file)
    assert resolve_test_paths(tests_file.parent) == (policy_dir, tests_file.parent)


def test_shipped_example_tests_pass() -> None:
    root = Path(__file__).resolve().parents[2]

    report = run_policy_tests(root / "policies", root / "policies" / "tests")

    assert report.ok is True
    assert len(report.results) == 13
