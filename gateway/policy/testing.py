"""Policy test cases (`policies/tests/*.yaml`): requests with the decision each one must get."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.auth.principal import Viewer
from gateway.policy.durations import DurationError, format_duration, parse_duration
from gateway.policy.engine import Policy, utc_now
from gateway.policy.fields import (
    FileContext,
    check_keys,
    check_mapping,
    check_sequence,
    describe_type,
    require_key,
    string_list,
)
from gateway.policy.loader import load_policy
from gateway.policy.model import Decision, DecisionInput
from gateway.policy.problems import PolicyLoadError, PolicyProblem, ProblemCollector
from gateway.policy.yamlsource import LineMapping, YamlSyntaxError, parse_yaml
from gateway.tokens.mux import AUDIENCES

TESTS_FILE_KEYS = ("cases",)
CASE_KEYS = ("name", "viewer", "playback_id", "request", "now", "expect")
VIEWER_KEYS = ("id", "authenticated", "entitlements", "claims")
REQUEST_KEYS = ("audiences", "country", "client", "origin")
EXPECT_KEYS = ("effect", "rule", "ttl", "audiences", "claims", "denied_audiences", "message")

_ABSENT = object()


@dataclass(frozen=True)
class Expectation:
    """The expected decision of a case. Fields left out of the case's `expect` are not checked."""

    effect: str
    rule: Any = _ABSENT
    ttl: int | None = None
    audiences: frozenset[str] | None = None
    claims: Mapping[str, Mapping[str, Any]] | None = None
    denied_audiences: frozenset[str] | None = None
    message: Any = _ABSENT


@dataclass(frozen=True)
class PolicyTestCase:
    """One parsed case: the request to decide and what the decision must be."""

    file: str
    line: int
    name: str
    request: DecisionInput
    expect: Expectation


@dataclass(frozen=True)
class CaseResult:
    """The outcome of one case. `failures` contains one line per field that differs."""

    case: PolicyTestCase
    decision: Decision
    failures: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return not self.failures


@dataclass(frozen=True)
class TestReport:
    """The results of running test cases against one policy version."""

    __test__ = False  # a library class, not a pytest test class

    policy_path: str
    policy_version: str
    results: tuple[CaseResult, ...] = field(default_factory=tuple)

    @property
    def passed(self) -> list[CaseResult]:
        return [result for result in self.results if result.passed]

    @property
    def failed(self) -> list[CaseResult]:
        return [result for result in self.results if not result.passed]

    @property
    def ok(self) -> bool:
        """Whether at least one case ran and every case passed."""
        return bool(self.results) and not self.failed


def run_policy_tests(policy_path: Path, tests_path: Path) -> TestReport:
    """Load the policy and the test cases, decide every case and compare.

    Raises PolicyLoadError when the policy or a test file is invalid.
    """
    policy = load_policy(policy_path)
    cases = load_test_cases(tests_path)
    results = tuple(run_case(policy, case) for case in cases)
    return TestReport(policy_path=str(policy_path), policy_version=policy.version, results=results)


def run_case(policy: Policy, case: PolicyTestCase) -> CaseResult:
    """Decide one case and list how the decision differs from the expectation."""
    decision = policy.evaluate(case.request)
    return CaseResult(case=case, decision=decision, failures=tuple(_compare(case.expect, decision)))


def format_report(report: TestReport) -> str:
    """Render a report for a terminal: one line per case, details under each failure."""
    lines: list[str] = []
    for result in report.results:
        case = result.case
        if result.passed:
            lines.append(f"PASS {case.name}")
            continue
        lines.append(f"FAIL {case.file}:{case.line}: {case.name}")
        lines.extend(f"    {failure}" for failure in result.failures)
        lines.append(f"    decision: {_describe_decision(result.decision)}")

    summary = f"{len(report.passed)} passed, {len(report.failed)} failed"
    lines.append(f"{summary} (policy {report.policy_path}, version {report.policy_version})")
    if not report.results:
        lines.append("no test cases found")
    return "\n".join(lines) + "\n"


def resolve_test_paths(path: Path) -> tuple[Path, Path]:
    """Return (policy path, tests path) for `policy test PATH`.

    A folder with a `tests/` subfolder is a policy folder whose cases live in that subfolder.
    Any other file or folder contains test cases, and the policy is the folder above the one
    that contains them: `policies/tests/example.yaml` and `policies/tests` both test `policies/`.
    """
    if path.is_dir() and (path / "tests").is_dir():
        return path, path / "tests"
    if path.is_file():
        return path.parent.parent, path
    return path.parent, path


def load_test_cases(path: Path) -> list[PolicyTestCase]:
    """Read the test cases in a file or a folder of `*.yaml` files, in name order.

    Raises PolicyLoadError listing every problem in every file.
    """
    files = _test_files(path)
    problems = ProblemCollector()
    cases: list[PolicyTestCase] = []
    for file in files:
        cases.extend(_load_test_file(file, problems))
    problems.raise_if_any()
    return cases


def _test_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise PolicyLoadError([PolicyProblem(str(path), 0, None, "no such file or folder")])

    files = sorted(
        child for child in path.iterdir()
        if child.suffix == ".yaml" and not child.name.startswith(".") and child.is_file()
    )
    if not files:
        raise PolicyLoadError([PolicyProblem(str(path), 0, None, "the folder has no *.yaml test files")])
    return files


def _load_test_file(file: Path, problems: ProblemCollector) -> list[PolicyTestCase]:
    ctx = FileContext(str(file), problems)
    try:
        document = parse_yaml(file.read_text(encoding="utf-8"))
    except YamlSyntaxError as error:
        ctx.add(error.line, error.message)
        return []
    except (OSError, UnicodeDecodeError) as error:
        ctx.add(0, f"cannot read the file: {error}")
        return []

    for line, message in document.duplicate_keys:
        ctx.add(line, message)
    root = check_mapping(document.value, "a test file", 1, ctx)
    if root is None:
        return []
    check_keys(root, TESTS_FILE_KEYS, "a test file", ctx)
    if not require_key(root, "cases", "a test file", ctx):
        return []
    entries = check_sequence(root["cases"], "cases", root.line_of("cases"), ctx)
    if entries is None:
        return []

    cases: list[PolicyTestCase] = []
    names: dict[str, int] = {}
    for index, entry in enumerate(entries):
        line = entries.line_of(index)
        name = entry.get("name") if isinstance(entry, LineMapping) else None
        if isinstance(name, str) and name in names:
            ctx.for_rule(name).add(line, f"duplicate case name (first at line {names[name]})")
            continue
        if isinstance(name, str):
            names[name] = line

        case = _parse_case(entry, line, ctx)
        if case is not None:
            cases.append(case)
    return cases


def _parse_case(value: Any, line: int, ctx: FileContext) -> PolicyTestCase | None:
    mapping = check_mapping(value, "a test case", line, ctx)
    if mapping is None:
        return None

    name = mapping.get("name")
    if not isinstance(name, str) or not name.strip():
        ctx.add(mapping.line_of("name"), "a test case needs a `name`: a non-empty string")
        name = None
    case_ctx = ctx.for_rule(name)
    check_keys(mapping, CASE_KEYS, "a test case", case_ctx)

    before = len(ctx.problems.problems)
    playback_id = _playback_id(mapping, case_ctx)
    viewer = _viewer(mapping, case_ctx)
    request = _request_fields(mapping, case_ctx)
    now = _now(mapping, case_ctx)
    expect = _expectation(mapping, case_ctx)
    if name is None or len(ctx.problems.problems) != before or expect is None:
        return None

    decision_input = DecisionInput(
        viewer=viewer,
        playback_id=playback_id,
        audiences=request["audiences"],
        now=now,
        country=request["country"],
        client=request["client"],
        origin=request["origin"],
    )
    return PolicyTestCase(file=ctx.file, line=mapping.line, name=name, request=decision_input, expect=expect)


def _playback_id(mapping: LineMapping, ctx: FileContext) -> str:
    if not require_key(mapping, "playback_id", "a test case", ctx):
        return ""
    playback_id = mapping["playback_id"]
    if not isinstance(playback_id, str) or not playback_id:
        ctx.add(mapping.line_of("playback_id"), "playback_id must be a non-empty string; quote it in YAML")
        return ""
    return playback_id


def _viewer(mapping: LineMapping, ctx: FileContext) -> Viewer:
    if "viewer" not in mapping:
        return Viewer()
    fields = check_mapping(mapping["viewer"], "viewer", mapping.line_of("viewer"), ctx)
    if fields is None:
        return Viewer()
    check_keys(fields, VIEWER_KEYS, "viewer", ctx)

    viewer_id = fields.get("id")
    if viewer_id is not None and not isinstance(viewer_id, str):
        ctx.add(fields.line_of("id"), f"viewer.id must be a string or null, not {describe_type(viewer_id)}")
        viewer_id = None

    # A viewer with an id is authenticated unless the case sets `authenticated: false`.
    authenticated = fields.get("authenticated", viewer_id is not None)
    if not isinstance(authenticated, bool):
        ctx.add(fields.line_of("authenticated"), "viewer.authenticated must be true or false")
        authenticated = False

    entitlements: list[str] = []
    if "entitlements" in fields:
        items = string_list(fields["entitlements"], "viewer.entitlements", fields.line_of("entitlements"), ctx)
        entitlements = [item for item, _ in items or []]

    claims: dict[str, Any] = {}
    if "claims" in fields:
        claims_map = check_mapping(fields["claims"], "viewer.claims", fields.line_of("claims"), ctx)
        claims = _plain(claims_map) if claims_map is not None else {}

    return Viewer(id=viewer_id, authenticated=authenticated, entitlements=tuple(entitlements), claims=claims)


def _request_fields(mapping: LineMapping, ctx: FileContext) -> dict[str, Any]:
    values: dict[str, Any] = {"audiences": None, "country": "", "client": None, "origin": None}
    if "request" not in mapping:
        return values
    fields = check_mapping(mapping["request"], "request", mapping.line_of("request"), ctx)
    if fields is None:
        return values
    check_keys(fields, REQUEST_KEYS, "request", ctx)

    if fields.get("audiences") is not None:
        items = string_list(fields["audiences"], "request.audiences", fields.line_of("audiences"), ctx)
        values["audiences"] = tuple(item for item, _ in items or [])

    for key, nullable in (("country", False), ("client", True), ("origin", True)):
        if key not in fields:
            continue
        value = fields[key]
        if value is None and nullable:
            continue
        if not isinstance(value, str):
            allowed = "a string or null" if nullable else "a string"
            message = (
                f"request.{key} must be {allowed}, not {describe_type(value)}; "
                "quote it in YAML, where NO and ON read as booleans"
            )
            ctx.add(fields.line_of(key), message)
            continue
        values[key] = value
    return values


def _now(mapping: LineMapping, ctx: FileContext) -> datetime:
    if "now" not in mapping:
        return utc_now()

    value = mapping["now"]
    line = mapping.line_of("now")
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            ctx.add(line, f"now {value!r} is not an ISO 8601 time such as 2026-05-01T12:00:00Z")
            return utc_now()
    if not isinstance(value, datetime):
        ctx.add(line, f"now must be an ISO 8601 time such as 2026-05-01T12:00:00Z, not {describe_type(value)}")
        return utc_now()
    # A time without an offset is UTC, as YAML defines for its timestamps.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _expectation(mapping: LineMapping, ctx: FileContext) -> Expectation | None:
    if not require_key(mapping, "expect", "a test case", ctx):
        return None
    fields = check_mapping(mapping["expect"], "expect", mapping.line_of("expect"), ctx)
    if fields is None:
        return None
    check_keys(fields, EXPECT_KEYS, "expect", ctx)

    effect = fields.get("effect")
    if effect not in ("allow", "deny"):
        ctx.add(fields.line_of("effect"), f"expect.effect must be allow or deny, not {effect!r}")
        return None

    values: dict[str, Any] = {"effect": effect}
    for key in ("rule", "message"):
        if key in fields:
            value = fields[key]
            if value is not None and not isinstance(value, str):
                ctx.add(fields.line_of(key), f"expect.{key} must be a string or null")
            values[key] = value
    if "ttl" in fields:
        try:
            values["ttl"] = parse_duration(fields["ttl"])
        except DurationError as error:
            ctx.add(fields.line_of("ttl"), f"expect.ttl: {error}")
    for key in ("audiences", "denied_audiences"):
        if key in fields:
            values[key] = _audience_set(fields, key, ctx)
    if "claims" in fields:
        values["claims"] = _expected_claims(fields, ctx)
    return Expectation(**values)


def _audience_set(fields: LineMapping, key: str, ctx: FileContext) -> frozenset[str]:
    items = string_list(fields[key], f"expect.{key}", fields.line_of(key), ctx) or []
    for audience, line in items:
        if audience not in AUDIENCES:
            ctx.add(line, f"unknown audience '{audience}'; audiences: {', '.join(AUDIENCES)}")
    return frozenset(audience for audience, _ in items)


def _expected_claims(fields: LineMapping, ctx: FileContext) -> dict[str, dict[str, Any]]:
    by_audience = check_mapping(fields["claims"], "expect.claims", fields.line_of("claims"), ctx)
    if by_audience is None:
        return {}

    expected: dict[str, dict[str, Any]] = {}
    for audience, claims in by_audience.items():
        line = by_audience.line_of(audience)
        if audience not in AUDIENCES:
            ctx.add(line, f"expect.claims: unknown audience '{audience}'; audiences: {', '.join(AUDIENCES)}")
            continue
        claims_map = check_mapping(claims, f"expect.claims.{audience}", line, ctx)
        if claims_map is not None:
            expected[audience] = _plain(claims_map)
    return expected


def _plain(value: Any) -> Any:
    """Copy YAML containers into plain dicts and lists, which is what real JWT claims are."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def _compare(expect: Expectation, decision: Decision) -> list[str]:
    failures: list[str] = []
    grant = decision.grant

    if decision.effect != expect.effect:
        failures.append(f"effect: expected {expect.effect}, got {decision.effect}")
    if expect.rule is not _ABSENT and decision.rule != expect.rule:
        failures.append(f"rule: expected {_show(expect.rule)}, got {_show(decision.rule)}")
    if expect.message is not _ABSENT and decision.message != expect.message:
        failures.append(f"message: expected {_show(expect.message)}, got {_show(decision.message)}")

    if expect.ttl is not None:
        got = grant.ttl if grant else None
        if got != expect.ttl:
            shown = "no grant" if got is None else format_duration(got)
            failures.append(f"ttl: expected {format_duration(expect.ttl)}, got {shown}")

    if expect.audiences is not None:
        got_audiences = frozenset(grant.audiences) if grant else frozenset()
        if got_audiences != expect.audiences:
            failures.append(
                f"audiences: expected {_show_set(expect.audiences)}, got {_show_set(got_audiences)}"
            )
    if expect.denied_audiences is not None and frozenset(decision.denied_audiences) != expect.denied_audiences:
        failures.append(
            f"denied_audiences: expected {_show_set(expect.denied_audiences)}, "
            f"got {_show_set(frozenset(decision.denied_audiences))}"
        )

    if expect.claims is not None:
        failures.extend(_compare_claims(expect.claims, decision))
    return failures


def _compare_claims(expected: Mapping[str, Mapping[str, Any]], decision: Decision) -> list[str]:
    """Compare claims per audience. Listed claims must match and null means the claim is absent."""
    failures: list[str] = []
    granted = decision.grant.claims if decision.grant else {}
    for audience, claims in expected.items():
        if audience not in granted:
            failures.append(f"claims.{audience}: expected a {audience} token, got no {audience} grant")
            continue
        for name, value in claims.items():
            got = granted[audience].get(name, _ABSENT)
            if value is None and got is _ABSENT:
                continue
            if got is _ABSENT or not _same_value(value, got):
                shown = "absent" if got is _ABSENT else repr(got)
                wanted = "absent" if value is None else repr(value)
                failures.append(f"claims.{audience}.{name}: expected {wanted}, got {shown}")
    return failures


def _same_value(expected: Any, got: Any) -> bool:
    # True == 1 in Python, but a boolean claim and a number claim are different claims to Mux.
    if isinstance(expected, bool) != isinstance(got, bool):
        return False
    return bool(expected == got)


def _show(value: Any) -> str:
    return "null" if value is None else str(value)


def _show_set(values: frozenset[str]) -> str:
    ordered = [audience for audience in AUDIENCES if audience in values]
    ordered += sorted(values - set(AUDIENCES))
    return "[" + ", ".join(ordered) + "]" if ordered else "[]"


def _describe_decision(decision: Decision) -> str:
    text = f"{decision.effect} by {_show(decision.rule)}"
    if decision.message:
        text += f" ({decision.message})"
    matched = ", ".join(decision.matched) or "none"
    return f"{text}; matched: {matched}"
