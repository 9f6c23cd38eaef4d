"""PromQL checks for the chart's alert rules and dashboard, against the gateway's real metrics.

The series the gateway exposes are taken from a real scrape: a child interpreter imports
gateway.observability.metrics in Prometheus multiprocess mode (as under gunicorn), records one
sample on every metric object, and prints what its /metrics exposition contains. So `_total`,
`_bucket`, `_sum`, `_count` and the multiprocess `pid` label appear exactly as Prometheus scrapes them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import promql_parser

REPO_ROOT = Path(__file__).resolve().parents[2]

# Labels that Prometheus or the Prometheus operator attach to every scraped series.
TARGET_LABELS = frozenset({"job", "instance", "namespace", "pod", "service", "container", "endpoint"})

# Grafana variables that stand where PromQL syntax expects a duration.
GRAFANA_DURATION_VARIABLES = ("$__rate_interval", "$__interval", "$__range")

_EXPOSITION_SCRIPT = """
import json, os, sys
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from gateway.observability import metrics

for metric in vars(metrics).values():
    if not isinstance(metric, MetricWrapperBase):
        continue
    labelnames = metric._labelnames
    child = metric.labels(*["sample"] * len(labelnames)) if labelnames else metric
    if isinstance(metric, Counter):
        child.inc()
    elif isinstance(metric, Gauge):
        child.set(1)
    elif isinstance(metric, Histogram):
        child.observe(0.01)
    else:
        sys.exit(f"unsupported metric type {type(metric).__name__} for {metric._name}")

text, _ = metrics.exposition()
series = {}
for family in text_string_to_metric_families(text.decode()):
    for sample in family.samples:
        series.setdefault(sample.name, set()).update(sample.labels)
print(json.dumps({name: sorted(labels) for name, labels in series.items()}))
"""


def scrape_gateway_series(multiprocess_dir: Path) -> dict[str, frozenset[str]]:
    """Return every series name the gateway exposes, with its label names."""
    environment = {"PROMETHEUS_MULTIPROC_DIR": str(multiprocess_dir), "PYTHONPATH": str(REPO_ROOT)}
    completed = subprocess.run(
        [sys.executable, "-c", _EXPOSITION_SCRIPT],
        cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=60, check=False,
    )
    if completed.returncode != 0:
        raise AssertionError(f"exposition of gateway metrics failed:\n{completed.stderr}")
    return {name: frozenset(labels) for name, labels in json.loads(completed.stdout).items()}


@dataclass
class ExpressionReport:
    """What one PromQL expression refers to, and every problem found in it."""

    metric_names: set[str] = field(default_factory=set)
    aggregation_labels: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)


def check_expression(
    expression: str,
    exposed: dict[str, frozenset[str]],
    recorded: dict[str, frozenset[str]],
) -> ExpressionReport:
    """Parse `expression` and check its series names and label names.

    `exposed` maps the gateway's series to their labels; `recorded` maps recording-rule names to
    the labels they keep. A selector must name one of them, its matchers and any `by` clause may
    only use labels those series carry (plus the scrape target labels).
    """
    report = ExpressionReport()
    try:
        tree = promql_parser.parse(expression)
    except ValueError as error:
        report.problems.append(f"does not parse: {error}")
        return report

    known = {**exposed, **recorded}
    selectors: list[promql_parser.VectorSelector] = []
    aggregations: list[promql_parser.AggregateExpr] = []

    def collect(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            selectors.append(node)
        elif isinstance(node, promql_parser.AggregateExpr):
            aggregations.append(node)

    promql_parser.walk(tree, collect)

    available_labels: set[str] = set(TARGET_LABELS)
    for selector in selectors:
        name = selector.name
        if name is None:
            report.problems.append(f"selector {selector} has no metric name")
            continue
        report.metric_names.add(name)
        if name not in known:
            report.problems.append(f"unknown series {name!r}")
            continue
        available_labels |= known[name]
        for matcher in selector.matchers.matchers:
            if matcher.name not in known[name] | TARGET_LABELS:
                report.problems.append(f"series {name!r} has no label {matcher.name!r}")

    for aggregation in aggregations:
        modifier = aggregation.modifier
        if modifier is None or modifier.type != promql_parser.AggModifierType.By:
            continue
        report.aggregation_labels.update(modifier.labels)
        for label in modifier.labels:
            if label not in available_labels:
                report.problems.append(f"`by ({label})` names a label no selected series has")
    return report


def substitute_grafana_variables(expression: str) -> str:
    """Replace Grafana's interval variables with a duration so the query parses as PromQL.

    Other variables such as $namespace only appear inside quoted matcher values, where PromQL
    takes them as plain strings.
    """
    for variable in GRAFANA_DURATION_VARIABLES:
        expression = expression.replace(variable, "5m")
    return expression
