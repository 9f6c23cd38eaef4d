"""/metrics under a multi-worker gunicorn equals the true totals of all workers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import requests

from gateway.keys.material import SigningKey
from tests.e2e.conftest import FREE_ID, gateway_env
from tests.support.gateway_process import GatewayProcess
from tests.support.redis_server import RedisServer
from tests.support.viewers import ViewerIssuer

pytestmark = pytest.mark.e2e


def sample(metrics: str, name: str, labels: str) -> float:
    match = re.search(rf"^{re.escape(name)}\{{{re.escape(labels)}\}} ([0-9.e+]+)$", metrics, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_metrics_sum_all_workers(
    tmp_path: Path, redis_server: RedisServer, mux_key: SigningKey, issuer: ViewerIssuer
) -> None:
    redis_server.start()
    redis_server.flush()
    gateway = GatewayProcess(gateway_env(mux_key, issuer, redis_server.url), tmp_path, workers=3)
    gateway.start()
    try:
        total = 60
        for number in range(total):
            # A new connection per request spreads the requests over the workers.
            body = {"playback_id": FREE_ID, "audiences": ["video", "thumbnail"], "ttl": 600 + number}
            assert requests.post(f"{gateway.url}/v1/tokens", json=body, timeout=10).status_code == 200
        denied = requests.post(f"{gateway.url}/v1/tokens", json={"playback_id": "unknown1"}, timeout=10)
        metrics = requests.get(f"{gateway.url}/metrics", timeout=10).text
        counter_files = list(Path(gateway.env["PROMETHEUS_MULTIPROC_DIR"]).glob("counter_*.db"))
    finally:
        gateway.stop()

    assert denied.status_code == 403
    assert len(counter_files) >= 2
    assert sample(metrics, "playback_gateway_requests_total",
                  'method="POST",route="/v1/tokens",status="200"') == total
    assert sample(metrics, "playback_gateway_tokens_minted_total", 'audience="video"') == total
    assert sample(metrics, "playback_gateway_tokens_minted_total", 'audience="thumbnail"') == total
    assert sample(metrics, "playback_gateway_policy_decisions_total", 'effect="allow",rule="free-anonymous"') == total
    assert sample(metrics, "playback_gateway_policy_decisions_total", 'effect="deny",rule="none"') == 1
    assert sample(metrics, "playback_gateway_token_cache_requests_total", 'result="miss"') == 2 * total
    assert "playback_gateway_signing_duration_seconds_bucket" in metrics
    assert "playback_gateway_request_duration_seconds_bucket" in metrics
