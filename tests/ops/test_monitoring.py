"""Alert rules and the Grafana dashboard: valid PromQL over series the gateway really exposes."""

from __future__ import annotations

import re
from typing import Any

import promql_parser
import pytest

from tests.ops.promql_checks import REPO_ROOT, check_expression, substitute_grafana_variables

SEVERITIES = {"critical", "warning", "info"}

REQUIRED_ALERTS = {
    "PlaybackGatewayNoUsableSigningKey",
    "PlaybackGatewayNotReady",
    "PlaybackGatewaySigningKeyOverdue",
    "PlaybackGatewayDevKeyInUse",
    "PlaybackGatewayMuxApiErrors",
    "PlaybackGatewayRedisDown",
    "PlaybackGatewayDenySpike",
    "PlaybackGatewayPolicyReloadRejected",
}

# Series the dashboard must chart, one or more panels each.
DASHBOARD_SERIES = {
    "playback_gateway_requests_total",
    "playback_gateway_request_duration_seconds_bucket",
    "playback_gateway_tokens_minted_total",
    "playback_gateway_policy_decisions_total",
    "playback_gateway_token_cache_requests_total",
    "playback_gateway_redis_errors_total",
    "playback_gateway_jwks_fetches_total",
    "playback_gateway_mux_api_requests_total",
    "playback_gateway_key_operations_total",
    "playback_gateway_active_key_created_timestamp_seconds",
    "playback_gateway_policy_reloads_total",
    "playback_gateway_shadow_policy_disagreements_total",
    "playback_gateway_rate_limited_total",
}

RUNBOOK_URL = re.compile(r"^docs/(?P<file>deployment|key-lifecycle)\.md#(?P<anchor>[a-z0-9-]+)$")
LABEL_REFERENCE = re.compile(r"\$labels\.([a-zA-Z_][a-zA-Z0-9_]*)")
LABEL_VALUES_QUERY = re.compile(r"^label_values\((?P<selector>.+),\s*(?P<label>[a-zA-Z_]+)\)$")


def all_rules(alert_rules: dict[str, Any]) -> list[dict[str, Any]]:
    return [entry for group in alert_rules["groups"] for entry in group["rules"]]


def alerts(alert_rules: dict[str, Any]) -> list[dict[str, Any]]:
    return [entry for entry in all_rules(alert_rules) if "alert" in entry]


def recorded_series(
    alert_rules: dict[str, Any], gateway_series: dict[str, frozenset[str]],
) -> dict[str, frozenset[str]]:
    """Recording rules of the file, each with the labels its `by` clauses keep."""
    recorded: dict[str, frozenset[str]] = {}
    for entry in all_rules(alert_rules):
        if "record" in entry:
            report = check_expression(entry["expr"], gateway_series, recorded)
            recorded[entry["record"]] = frozenset(report.aggregation_labels)
    return recorded


def markdown_anchors(text: str) -> set[str]:
    """Anchors that GitHub-style renderers give each heading: lower case, punctuation dropped."""
    anchors = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*$", text, flags=re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


def dashboard_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [panel for panel in dashboard["panels"] if panel["type"] != "row"]


class TestAlertRules:
    def test_required_alerts_present(self, alert_rules: dict[str, Any]) -> None:
        names = [entry["alert"] for entry in alerts(alert_rules)]

        assert REQUIRED_ALERTS - set(names) == set()
        assert len(names) == len(set(names))

    def test_groups_are_named(self, alert_rules: dict[str, Any]) -> None:
        names = [group["name"] for group in alert_rules["groups"]]

        assert names == ["playback-gateway.keys", "playback-gateway.dependencies", "playback-gateway.policy"]

    def test_expressions_use_gateway_series(
        self, alert_rules: dict[str, Any], gateway_series: dict[str, frozenset[str]],
    ) -> None:
        recorded = recorded_series(alert_rules, gateway_series)
        problems = {}

        for entry in all_rules(alert_rules):
            report = check_expression(entry["expr"], gateway_series, recorded)
            if report.problems:
                problems[entry.get("alert") or entry["record"]] = report.problems

        assert problems == {}

    def test_alert_fields(self, alert_rules: dict[str, Any]) -> None:
        for entry in alerts(alert_rules):
            name = entry["alert"]
            assert promql_parser.parse_duration(entry["for"]).total_seconds() > 0, name
            assert entry["labels"]["severity"] in SEVERITIES, name
            assert set(entry["annotations"]) == {"summary", "description", "runbook_url"}, name
            assert entry["annotations"]["summary"].strip(), name
            assert entry["annotations"]["description"].strip(), name

    def test_runbook_urls_point_to_docs(self, alert_rules: dict[str, Any]) -> None:
        deployment_anchors = markdown_anchors((REPO_ROOT / "docs" / "deployment.md").read_text())

        for entry in alerts(alert_rules):
            match = RUNBOOK_URL.match(entry["annotations"]["runbook_url"])
            assert match, entry["annotations"]["runbook_url"]
            if match["file"] == "deployment":
                assert match["anchor"] in deployment_anchors, entry["annotations"]["runbook_url"]

    def test_annotations_use_kept_labels(
        self, alert_rules: dict[str, Any], gateway_series: dict[str, frozenset[str]],
    ) -> None:
        recorded = recorded_series(alert_rules, gateway_series)

        for entry in alerts(alert_rules):
            report = check_expression(entry["expr"], gateway_series, recorded)
            kept = set(report.aggregation_labels)
            for name in report.metric_names & set(recorded):
                kept |= recorded[name]
            text = " ".join(entry["annotations"].values())
            assert set(LABEL_REFERENCE.findall(text)) <= kept, entry["alert"]

    def test_key_age_threshold_is_recorded(self, alert_rules: dict[str, Any]) -> None:
        rules = {entry.get("record"): entry for entry in all_rules(alert_rules)}
        overdue = next(entry for entry in alerts(alert_rules) if entry["alert"] == "PlaybackGatewaySigningKeyOverdue")

        assert rules["playback_gateway:key_rotation_period_seconds"]["expr"] == "vector(7776000)"
        assert "scalar(playback_gateway:key_rotation_period_seconds)" in overdue["expr"]
        assert "playback_gateway_active_key_created_timestamp_seconds" in overdue["expr"]

    @pytest.mark.parametrize(
        ("expression", "problem"),
        [
            ("rate(playback_gateway_requests_total[5m]", "does not parse: unclosed left parenthesis"),
            ("rate(playback_gateway_requests[5m])", "unknown series 'playback_gateway_requests'"),
            (
                'playback_gateway_tokens_minted_total{aud="v"}',
                "series 'playback_gateway_tokens_minted_total' has no label 'aud'",
            ),
            (
                "sum by (audiance) (playback_gateway_tokens_minted_total)",
                "`by (audiance)` names a label no selected series has",
            ),
        ],
        ids=["unbalanced", "counter-without-total", "wrong-label", "wrong-by-label"],
    )
    def test_checker_catches_mistakes(
        self, expression: str, problem: str, gateway_series: dict[str, frozenset[str]],
    ) -> None:
        assert check_expression(expression, gateway_series, {}).problems == [problem]


class TestDashboard:
    def test_dashboard_identity(self, dashboard: dict[str, Any]) -> None:
        assert dashboard["uid"] == "playback-gateway"
        assert dashboard["title"] == "Playback token gateway"
        assert isinstance(dashboard["schemaVersion"], int)

    def test_variables(self, dashboard: dict[str, Any], gateway_series: dict[str, frozenset[str]]) -> None:
        variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}

        assert list(variables) == ["datasource", "namespace", "job"]
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        for name in ("namespace", "job"):
            match = LABEL_VALUES_QUERY.match(variables[name]["query"]["query"])
            assert match, name
            assert match["label"] == name
            assert check_expression(match["selector"], gateway_series, {}).problems == []

    def test_panel_layout(self, dashboard: dict[str, Any]) -> None:
        ids = [panel["id"] for panel in dashboard["panels"]]
        cells: set[tuple[int, int]] = set()

        assert len(ids) == len(set(ids))
        for panel in dashboard["panels"]:
            position = panel["gridPos"]
            assert position["x"] + position["w"] <= 24, panel["title"]
            for row in range(position["y"], position["y"] + position["h"]):
                for column in range(position["x"], position["x"] + position["w"]):
                    assert (row, column) not in cells, f"{panel['title']} overlaps another panel"
                    cells.add((row, column))

    def test_panels_query_prometheus(self, dashboard: dict[str, Any]) -> None:
        for panel in dashboard_panels(dashboard):
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert panel["targets"], panel["title"]
            ref_ids = [target["refId"] for target in panel["targets"]]
            assert len(ref_ids) == len(set(ref_ids)), panel["title"]
            assert panel["description"].strip(), panel["title"]

    def test_targets_use_gateway_series(
        self, dashboard: dict[str, Any], gateway_series: dict[str, frozenset[str]],
    ) -> None:
        problems = {}

        for panel in dashboard_panels(dashboard):
            for target in panel["targets"]:
                expression = substitute_grafana_variables(target["expr"])
                report = check_expression(expression, gateway_series, {})
                if report.problems:
                    problems[f"{panel['title']} {target['refId']}"] = report.problems

        assert problems == {}

    def test_targets_filter_by_variables(self, dashboard: dict[str, Any]) -> None:
        for panel in dashboard_panels(dashboard):
            for target in panel["targets"]:
                selectors = re.findall(r"playback_gateway_[a-z_]+\{([^}]*)\}", target["expr"])
                assert selectors, panel["title"]
                for matchers in selectors:
                    assert 'namespace=~"$namespace"' in matchers, panel["title"]
                    assert 'job=~"$job"' in matchers, panel["title"]

    def test_covers_gateway_signals(
        self, dashboard: dict[str, Any], gateway_series: dict[str, frozenset[str]],
    ) -> None:
        used: set[str] = set()

        for panel in dashboard_panels(dashboard):
            for target in panel["targets"]:
                used |= check_expression(substitute_grafana_variables(target["expr"]), gateway_series, {}).metric_names

        assert DASHBOARD_SERIES - used == set()

    def test_key_age_panel(self, dashboard: dict[str, Any]) -> None:
        panel = next(panel for panel in dashboard_panels(dashboard) if panel["title"] == "Active key age")

        assert panel["fieldConfig"]["defaults"]["unit"] == "s"
        assert panel["targets"][0]["expr"].startswith(
            "time() - max by (namespace, job) (playback_gateway_active_key_created_timestamp_seconds{"
        )

    def test_latency_percentiles(self, dashboard: dict[str, Any]) -> None:
        panel = next(panel for panel in dashboard_panels(dashboard) if panel["title"] == "Latency percentiles")

        quantiles = [re.match(r"histogram_quantile\(([0-9.]+),", target["expr"])[1] for target in panel["targets"]]

        assert quantiles == ["0.5", "0.95", "0.99"]
        assert [target["legendFormat"] for target in panel["targets"]] == ["p50", "p95", "p99"]
