"""Prometheus metrics. Label values are always bounded: no playback, viewer or key ids.

Under gunicorn, PROMETHEUS_MULTIPROC_DIR is set by the gunicorn config before this module is
imported, so each worker writes its samples to files and one scrape adds them all up.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

# prometheus-client opens its files in this directory at import time and fails if it is missing
# (an emptyDir /tmp in Kubernetes starts empty), so make sure it exists first.
if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]).mkdir(parents=True, exist_ok=True)

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as _multiprocess

PREFIX = "playback_gateway"

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_SIGNING_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1)

REQUESTS = Counter(
    f"{PREFIX}_requests", "HTTP requests by route template, method and status",
    ["route", "method", "status"],
)
REQUEST_SECONDS = Histogram(
    f"{PREFIX}_request_duration_seconds", "HTTP request latency by route template",
    ["route"], buckets=_LATENCY_BUCKETS,
)
TOKENS_MINTED = Counter(
    f"{PREFIX}_tokens_minted", "Tokens signed (cache misses) by audience", ["audience"],
)
TOKENS_ISSUED = Counter(
    f"{PREFIX}_tokens_issued", "Tokens returned to callers, cached or fresh, by audience",
    ["audience"],
)
SIGNING_SECONDS = Histogram(
    f"{PREFIX}_signing_duration_seconds", "Time to sign one token", buckets=_SIGNING_BUCKETS,
)
POLICY_DECISIONS = Counter(
    f"{PREFIX}_policy_decisions", "Policy decisions by effect and deciding rule",
    ["effect", "rule"],
)
POLICY_EVALUATION_ERRORS = Counter(
    f"{PREFIX}_policy_evaluation_errors", "Rule conditions that failed to evaluate", ["rule"],
)
POLICY_RELOADS = Counter(
    f"{PREFIX}_policy_reloads", "Policy reload attempts by result (loaded, rejected)",
    ["result"],
)
POLICY_VERSION = Gauge(
    f"{PREFIX}_policy_version_info", "1 for the policy version this worker enforces",
    ["version"], multiprocess_mode="liveall",
)
SHADOW_DISAGREEMENTS = Counter(
    f"{PREFIX}_shadow_policy_disagreements", "Requests where the shadow policy decided otherwise",
    ["live_effect", "shadow_effect"],
)
CACHE_REQUESTS = Counter(
    f"{PREFIX}_token_cache_requests", "Token cache lookups by result (hit, miss, error)",
    ["result"],
)
REDIS_ERRORS = Counter(
    f"{PREFIX}_redis_errors", "Redis operations that failed, by component", ["component"],
)
JWKS_FETCHES = Counter(
    f"{PREFIX}_jwks_fetches", "Viewer JWKS fetches by result (ok, error, throttled)", ["result"],
)
VIEWER_AUTH_FAILURES = Counter(
    f"{PREFIX}_viewer_auth_failures", "Viewer JWTs rejected, by reason", ["reason"],
)
RATE_LIMITED = Counter(
    f"{PREFIX}_rate_limited", "Requests rejected by a rate limit, by limit kind", ["kind"],
)
RATE_LIMIT_ERRORS = Counter(
    f"{PREFIX}_rate_limit_fail_open", "Requests let through because Redis could not be asked",
)
COUNTRY_HEADER_INVALID = Counter(
    f"{PREFIX}_invalid_country_headers", "Country headers that were not one ISO 3166-1 alpha-2 code",
)
MUX_API_REQUESTS = Counter(
    f"{PREFIX}_mux_api_requests", "System API calls by operation and HTTP status",
    ["operation", "status"],
)
KEY_OPERATIONS = Counter(
    f"{PREFIX}_key_operations", "Key lifecycle operations by operation and result",
    ["operation", "result"],
)
KEYRING_REGRESSIONS = Counter(
    f"{PREFIX}_keyring_regressions",
    "Times a process found the stored keyring older or emptier than the one it had loaded, by "
    "outcome (detected: kept its snapshot; restored: wrote its snapshot back)",
    ["outcome"],
)
ACTIVE_KEY_CREATED = Gauge(
    f"{PREFIX}_active_key_created_timestamp_seconds",
    "Creation time of the active signing key (Unix seconds)", multiprocess_mode="max",
)
SIGNING_KEY_USABLE = Gauge(
    f"{PREFIX}_signing_key_usable", "1 when a usable signing key is loaded, else 0",
    multiprocess_mode="livemin",
)
DEV_KEY_IN_USE = Gauge(
    f"{PREFIX}_dev_key_in_use", "1 when signing with the embedded dev key that Mux rejects",
    multiprocess_mode="livemax",
)


def labelled(metric: Any, *values: str) -> Any:
    """Return the child of `metric` for `values`, memoized: `labels()` costs microseconds per call."""
    key = (id(metric), values)
    child = _children.get(key)
    if child is None:
        child = _children.setdefault(key, metric.labels(*values))
    return child


_children: dict[tuple[int, tuple[str, ...]], Any] = {}


def exposition() -> tuple[bytes, str]:
    """Return the exposition text for /metrics, summed over all workers under gunicorn."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        _multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST

    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
