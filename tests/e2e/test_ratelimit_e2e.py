"""Rate limits shared by two gateway processes through one Redis: hit, recover, fail open."""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from gateway.keys.material import SigningKey
from tests.e2e.conftest import FREE_ID, gateway_env
from tests.support.gateway_logs import log_events, wait_for_workers
from tests.support.gateway_process import GatewayProcess
from tests.support.problems import assert_problem
from tests.support.redis_server import RedisServer
from tests.support.service_clients import new_client, write_clients_file
from tests.support.viewers import ViewerIssuer

pytestmark = pytest.mark.e2e

LIMITS = "ip=5/second,viewer=3/minute,client=6/minute"
# One trusted proxy: the client address is the last X-Forwarded-For entry. Every request of
# this module sends its own address there, so tests do not share the ip allowance by accident.
TRUSTED_PROXIES = "1"
BODY = {"playback_id": FREE_ID, "audiences": ["video"]}

CLIENTS = {
    "limited": new_client("limited-bff", "tokens:mint"),
    "assert-single": new_client("assert-single-bff", "tokens:mint", "viewer:assert"),
    "assert-batch": new_client("assert-batch-bff", "tokens:mint", "viewer:assert"),
    "assert-retries": new_client("assert-retries-bff", "tokens:mint", "viewer:assert"),
}

_addresses = (f"198.51.{third}.{fourth}" for third, fourth in itertools.product(range(100, 120), range(1, 255)))


def fresh_ip() -> str:
    """Return a documentation-range address that no other request of this module used."""
    return next(_addresses)


@pytest.fixture(scope="module")
def gateways(
    tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer, mux_key: SigningKey, issuer: ViewerIssuer
) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    """Two replicas with the same limits and clients, sharing the session's Redis."""
    redis_server.start()
    redis_server.flush()
    workdir: Path = tmp_path_factory.mktemp("ratelimit")
    clients_file = workdir / "clients.yaml"
    write_clients_file(clients_file, CLIENTS.values())
    env = {
        **gateway_env(mux_key, issuer, redis_server.url),
        "GATEWAY_RATE_LIMITS": LIMITS,
        "GATEWAY_TRUSTED_PROXIES": TRUSTED_PROXIES,
        "GATEWAY_CLIENTS_FILE": str(clients_file),
    }
    replicas = (GatewayProcess(env, workdir / "a"), GatewayProcess(env, workdir / "b"))
    for replica in replicas:
        replica.workdir.mkdir()
        replica.start(wait_ready=False)
    try:
        for replica in replicas:
            replica.wait_until_serving()
            wait_for_workers(replica)
        yield replicas
    finally:
        for replica in replicas:
            replica.stop()


def post(gateway: GatewayProcess, body: Any = None, *, ip: str | None = None, token: str | None = None,
         client: str | None = None, forwarded_for: str | None = None, path: str = "/v1/tokens") -> requests.Response:
    headers = {"X-Forwarded-For": forwarded_for or ip or fresh_ip()}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if client is not None:
        headers["X-Api-Key"] = CLIENTS[client].key
    return requests.post(f"{gateway.url}{path}", json=body or BODY, headers=headers, timeout=10)


def batch(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"items": items}


def assert_limited(response: requests.Response, kind: str) -> int:
    """Assert a 429 for the `kind` limit with a Retry-After that matches the detail; return it."""
    retry_after = int(response.headers.get("Retry-After", "0"))
    assert_problem(response, 429, "rate-limited",
                   f"Too many requests for this {kind}: retry after {retry_after} seconds.", limit=kind)
    assert response.headers["Retry-After"] == str(retry_after)
    return retry_after


def test_viewer_limit_shared_by_replicas(
    gateways: tuple[GatewayProcess, GatewayProcess], issuer: ViewerIssuer
) -> None:
    first, second = gateways
    token = issuer.token("viewer-shared")

    statuses = [post(gateway, token=token).status_code for gateway in (first, second, first)]
    limited = post(second, token=token)

    assert statuses == [200, 200, 200]
    retry_after = assert_limited(limited, "viewer")
    # 3 per minute refill one request every 20 seconds.
    assert 1 <= retry_after <= 20
    # A rejected request does not use the allowance of another viewer.
    assert post(first, token=issuer.token("viewer-other")).status_code == 200


def send_until_limited(forwarded_for: list[str], gateways: tuple[GatewayProcess, GatewayProcess]
                       ) -> tuple[list[int], requests.Response | None]:
    """Post once per X-Forwarded-For value, alternating replicas, until one returns 429.

    Returns every status and the 429 response (None when none came). With a limit of 5 per
    second, 30 requests sent back to back reach the limit unless the identities differ.
    """
    statuses: list[int] = []
    for gateway, header in zip(itertools.cycle(gateways), forwarded_for, strict=False):
        response = post(gateway, forwarded_for=header)
        statuses.append(response.status_code)
        if response.status_code == 429:
            return statuses, response
    return statuses, None


def test_ip_limit_hits_and_recovers(gateways: tuple[GatewayProcess, GatewayProcess]) -> None:
    first, second = gateways
    address = fresh_ip()

    statuses, limited = send_until_limited([address] * 30, gateways)

    # A burst of 5 always passes. Later requests pass only as the allowance refills.
    assert statuses[:5] == [200] * 5
    assert limited is not None
    retry_after = assert_limited(limited, "ip")
    assert retry_after == 1
    assert post(first, ip=fresh_ip()).status_code == 200

    time.sleep(retry_after)
    assert post(second, ip=address).status_code == 200


def test_spoofed_forwarded_entry_is_ignored(gateways: tuple[GatewayProcess, GatewayProcess]) -> None:
    address = fresh_ip()
    # Each request claims another client address left of the trusted proxy's entry.
    headers = [f"203.0.113.{n}, {address}" for n in range(1, 31)]

    statuses, limited = send_until_limited(headers, gateways)

    assert statuses[:5] == [200] * 5
    assert limited is not None
    assert_limited(limited, "ip")


def test_ipv6_limited_per_64(gateways: tuple[GatewayProcess, GatewayProcess]) -> None:
    # Every request comes from another address of one /64 network.
    statuses, limited = send_until_limited([f"2001:db8:77:1::{n:x}" for n in range(1, 31)], gateways)
    other_network = post(gateways[0], ip="2001:db8:77:2::1")

    assert statuses[:5] == [200] * 5
    assert limited is not None
    assert_limited(limited, "ip")
    assert other_network.status_code == 200


def test_client_limit_across_replicas(gateways: tuple[GatewayProcess, GatewayProcess]) -> None:
    statuses = [post(gateways[n % 2], client="limited").status_code for n in range(6)]
    limited = post(gateways[0], client="limited")

    assert statuses == [200] * 6
    retry_after = assert_limited(limited, "client")
    assert 1 <= retry_after <= 10


def test_batch_items_count(gateways: tuple[GatewayProcess, GatewayProcess], issuer: ViewerIssuer) -> None:
    first, second = gateways
    token = issuer.token("viewer-batch")

    pair = post(first, batch([BODY, BODY]), token=token, path="/v1/tokens/batch")
    second_pair = post(second, batch([BODY, BODY]), token=token, path="/v1/tokens/batch")
    single = post(second, token=token)
    another = post(first, token=token)

    assert pair.status_code == 200
    assert len(pair.json()["items"]) == 2
    # Two items fit no longer, but the third request of the allowance still does.
    assert_limited(second_pair, "viewer")
    assert single.status_code == 200
    assert_limited(another, "viewer")


def test_oversized_batch_charged_full_allowance(
    gateways: tuple[GatewayProcess, GatewayProcess], issuer: ViewerIssuer
) -> None:
    first, second = gateways
    token = issuer.token("viewer-big-batch")

    # Five items against a limit of 3: charged 3, so the batch passes once and empties the allowance.
    big = post(first, batch([BODY] * 5), token=token, path="/v1/tokens/batch")
    after = post(second, token=token)

    assert big.status_code == 200
    assert [item["rule"] for item in big.json()["items"]] == ["free-signed-in"] * 5
    assert_limited(after, "viewer")


def test_asserted_viewer_is_limited(gateways: tuple[GatewayProcess, GatewayProcess]) -> None:
    first, second = gateways
    body = {**BODY, "viewer": {"id": "asserted-viewer-1"}}

    statuses = [post(gateways[n % 2], body, client="assert-single").status_code for n in range(3)]
    limited = post(second, body, client="assert-single")
    other_viewer = post(first, {**BODY, "viewer": {"id": "asserted-viewer-2"}}, client="assert-single")

    assert statuses == [200, 200, 200]
    # The client has used 4 of its 6, so the viewer limit is what rejects.
    assert_limited(limited, "viewer")
    assert other_viewer.status_code == 200


def test_viewer_retries_spare_client_allowance(gateways: tuple[GatewayProcess, GatewayProcess]) -> None:
    first, second = gateways
    noisy = {**BODY, "viewer": {"id": "noisy-viewer"}}

    allowed = [post(gateways[n % 2], noisy, client="assert-retries").status_code for n in range(3)]
    retries = [post(gateways[n % 2], noisy, client="assert-retries") for n in range(6)]
    others = [post(second, {**BODY, "viewer": {"id": f"quiet-viewer-{n}"}}, client="assert-retries").status_code
              for n in range(3)]

    assert allowed == [200, 200, 200]
    for response in retries:
        assert_limited(response, "viewer")
    # Six rejected retries would have used up the client's 6 per minute had they been charged.
    assert others == [200, 200, 200]
    assert_limited(post(first, {**BODY, "viewer": {"id": "quiet-viewer-9"}}, client="assert-retries"), "client")


def test_batch_charges_each_asserted_viewer(gateways: tuple[GatewayProcess, GatewayProcess]) -> None:
    first, second = gateways

    def item(viewer_id: str) -> dict[str, Any]:
        return {**BODY, "viewer": {"id": viewer_id}}

    mixed = post(first, batch([item("feed-p"), item("feed-p"), item("feed-q")]), client="assert-batch",
                 path="/v1/tokens/batch")
    too_many_for_p = post(second, batch([item("feed-p"), item("feed-p")]), client="assert-batch",
                          path="/v1/tokens/batch")
    q_again = post(first, batch([item("feed-q")]), client="assert-batch", path="/v1/tokens/batch")

    assert mixed.status_code == 200
    assert [entry["rule"] for entry in mixed.json()["items"]] == ["free-signed-in"] * 3
    assert_limited(too_many_for_p, "viewer")
    assert q_again.status_code == 200


def metric_value(gateway: GatewayProcess, name: str) -> float:
    text = requests.get(f"{gateway.url}/metrics", timeout=10).text
    match = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_fail_open_with_redis_stopped(
    gateways: tuple[GatewayProcess, GatewayProcess], redis_server: RedisServer, issuer: ViewerIssuer
) -> None:
    first, _ = gateways
    token = issuer.token("viewer-fail-open")
    before = [post(first, token=token).status_code for _ in range(4)]
    fail_open_before = metric_value(first, "playback_gateway_rate_limit_fail_open_total")

    redis_server.stop()
    try:
        during = [post(first, token=token).status_code for _ in range(6)]
        fail_open_after = metric_value(first, "playback_gateway_rate_limit_fail_open_total")
    finally:
        redis_server.start()

    assert before == [200, 200, 200, 429]
    assert during == [200] * 6
    # Each request was let through by two limits, ip and viewer.
    assert fail_open_after - fail_open_before == 12
    failures = log_events(first, "ratelimit.redis_failed")
    assert failures
    assert failures[0]["level"] == "warning"
    assert failures[0]["detail"] == "Redis is unavailable: rate limits are not enforced until it recovers"

    # Limiting resumes once Redis responds (a worker waits a second after a failure before asking
    # again). The restarted Redis is empty, so the viewer has a fresh allowance of 3.
    resumed: list[int] = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and 429 not in resumed:
        resumed.append(post(first, token=token).status_code)
        time.sleep(0.05)
    assert resumed[-1] == 429
    assert set(resumed) == {200, 429}
    assert log_events(first, "ratelimit.redis_recovered")
