"""Fixtures for the deployment assets: chart rendering, the rule file, the dashboard, the metrics."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from tests.ops.promql_checks import REPO_ROOT, scrape_gateway_series

CHART_DIR = REPO_ROOT / "helm" / "playback-gateway"
RELEASE = "playback-gateway"
NAMESPACE = "media"

SECRET_NAME = "gateway-credentials"
CLIENTS_SECRET_NAME = "gateway-clients"
RUNBOOK_BASE_URL = "https://git.example.com/media/playback-gateway/blob/main/"

# Every optional feature of the chart switched on.
FULL_VALUES: dict[str, Any] = {
    "secrets": {"existingSecret": SECRET_NAME},
    "clients": {"existingSecret": CLIENTS_SECRET_NAME},
    "config": {
        "GATEWAY_RATE_LIMITS": "viewer=120/minute,ip=600/minute",
        "GATEWAY_TRUSTED_PROXIES": 1,
        "GATEWAY_VIEWER_JWKS_URL": "https://auth.example.com/.well-known/jwks.json",
    },
    "shadowPolicies": {
        "enabled": True,
        "files": {"shadow.yaml": "version: 1\nrules: []\n"},
    },
    "autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 12},
    "keyJobs": {"rotate": {"enabled": True}, "timeZone": "Etc/UTC"},
    "monitoring": {
        "keyRotationPeriodDays": 30,
        "runbookBaseUrl": RUNBOOK_BASE_URL,
        "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        "grafanaDashboard": {"enabled": True},
    },
    "imagePullSecrets": ["registry-credentials"],
    "extraEnv": [{"name": "TZ", "value": "UTC"}],
    "image": {"digest": "sha256:" + "ab" * 32},
}


def render_chart(values: dict[str, Any] | None) -> dict[str, str]:
    """Render the chart offline and return rendered text by template path."""
    with helm.Chart.load(CHART_DIR) as chart:
        return chart.render(values=values, name=RELEASE, namespace=NAMESPACE, is_install=True)


def objects_of(rendered: dict[str, str]) -> list[dict[str, Any]]:
    """Parse every rendered manifest (NOTES.txt is text, not a manifest)."""
    objects: list[dict[str, Any]] = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        objects.extend(document for document in yaml.safe_load_all(text) if document)
    return objects


def only(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    """Return the single object of `kind` (and `name`), failing the test when there is not one."""
    matches = [
        item for item in objects
        if item["kind"] == kind and (name is None or item["metadata"]["name"] == name)
    ]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge `override` into a copy of `base`, the way Helm coalesces values."""
    result = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merged(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


@pytest.fixture(scope="session")
def default_rendered() -> dict[str, str]:
    return render_chart(None)


@pytest.fixture(scope="session")
def full_rendered() -> dict[str, str]:
    return render_chart(FULL_VALUES)


@pytest.fixture(scope="session")
def default_objects(default_rendered: dict[str, str]) -> list[dict[str, Any]]:
    return objects_of(default_rendered)


@pytest.fixture(scope="session")
def full_objects(full_rendered: dict[str, str]) -> list[dict[str, Any]]:
    return objects_of(full_rendered)


@pytest.fixture(scope="session")
def alert_rules() -> dict[str, Any]:
    rules: dict[str, Any] = yaml.safe_load((CHART_DIR / "files" / "alerts.yaml").read_text())
    return rules


@pytest.fixture(scope="session")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((CHART_DIR / "files" / "grafana-dashboard.json").read_text())
    return loaded


@pytest.fixture(scope="session")
def gateway_series(tmp_path_factory: pytest.TempPathFactory) -> dict[str, frozenset[str]]:
    """Series names and label names from a real multiprocess scrape of the gateway's metrics."""
    directory: Path = tmp_path_factory.mktemp("prometheus-multiproc")
    return scrape_gateway_series(directory)
