"""Every gunicorn worker converges on the last valid clients file, so a removed API key stops working."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from gateway.keys.material import SigningKey
from tests.e2e.conftest import COUNTRY_HEADER, FREE_ID, gateway_env
from tests.support.gateway_ops import events, parse_json_lines, wait_for_workers, wait_until, worker_pids
from tests.support.gateway_process import GatewayProcess
from tests.support.problems import assert_problem
from tests.support.redis_server import RedisServer
from tests.support.service_clients import ServiceClient, new_client, write_clients_file
from tests.support.viewers import ViewerIssuer

pytestmark = pytest.mark.e2e

WORKERS = 2
# Each worker checks the file every second: 10 s leaves room for a loaded two-core machine.
CONVERGENCE_TIMEOUT = 10.0
# Each request opens a new connection, so these requests usually reach every worker.
SPREAD_REQUESTS = 30
BROKEN_FILE = "clients: [broken\n"
UNKNOWN_KEY_DETAIL = "The API key is not known: check the X-Api-Key header."


@dataclass
class ClientsSetup:
    gateway: GatewayProcess
    clients_file: Path
    kept: ServiceClient
    removed: ServiceClient


@pytest.fixture
def setup(
    tmp_path: Path, redis_server: RedisServer, mux_key: SigningKey, issuer: ViewerIssuer
) -> Iterator[ClientsSetup]:
    redis_server.start()
    clients_file = tmp_path / "clients.yaml"
    kept = new_client("c1", "tokens:mint")
    removed = new_client("c2", "tokens:mint")
    write_clients_file(clients_file, [kept, removed])

    env = {**gateway_env(mux_key, issuer, redis_server.url), "GATEWAY_CLIENTS_FILE": str(clients_file)}
    gateway = GatewayProcess(env, tmp_path, workers=WORKERS)
    gateway.start()
    try:
        wait_for_workers(gateway, WORKERS)
        yield ClientsSetup(gateway, clients_file, kept, removed)
    finally:
        gateway.stop()


def mint(gateway: GatewayProcess, client: ServiceClient) -> requests.Response:
    return requests.post(
        f"{gateway.url}/v1/tokens",
        json={"playback_id": FREE_ID, "audiences": ["video"]},
        headers={**client.headers, COUNTRY_HEADER: "US"},
        timeout=10,
    )


def clients_reloads(gateway: GatewayProcess, pid: int) -> list[tuple[str, str | None]]:
    entries = events(parse_json_lines(gateway.log_path), "audit.clients.reload", pid=pid)
    return [(entry["result"], entry.get("source")) for entry in entries]


def reloads_after_request(setup: ClientsSetup, pid: int) -> list[tuple[str, str | None]]:
    # A request makes the worker that takes it check the file, in case its reload thread has not
    # started: a worker starts the thread on its first request.
    assert mint(setup.gateway, setup.kept).status_code == 200
    return clients_reloads(setup.gateway, pid)


def assert_key_removed_everywhere(setup: ClientsSetup) -> None:
    for _ in range(SPREAD_REQUESTS):
        assert_problem(mint(setup.gateway, setup.removed), 401, "invalid-api-key", UNKNOWN_KEY_DETAIL)
    statuses = {mint(setup.gateway, setup.kept).status_code for _ in range(SPREAD_REQUESTS)}
    assert statuses == {200}


def test_worker_seeing_only_broken_file_drops_key(setup: ClientsSetup) -> None:
    gateway = setup.gateway
    first, second = worker_pids(gateway)

    # The second worker sleeps through the edit that removes c2, so the only change it ever reads
    # is the broken edit that follows.
    os.kill(second, signal.SIGSTOP)
    try:
        write_clients_file(setup.clients_file, [setup.kept])
        wait_until(lambda: reloads_after_request(setup, first) == [("loaded", "file")], CONVERGENCE_TIMEOUT,
                   "the running worker loading the edit")
        setup.clients_file.write_text(BROKEN_FILE, encoding="utf-8")
        wait_until(lambda: len(reloads_after_request(setup, first)) == 2, CONVERGENCE_TIMEOUT,
                   "the running worker rejecting the broken edit")
    finally:
        os.kill(second, signal.SIGCONT)

    wait_until(lambda: len(reloads_after_request(setup, second)) == 2, CONVERGENCE_TIMEOUT,
               "the second worker moving to the last valid file")

    assert clients_reloads(gateway, first) == [("loaded", "file"), ("rejected", None)]
    assert clients_reloads(gateway, second) == [("rejected", None), ("loaded", "last-good copy")]
    assert_key_removed_everywhere(setup)


def test_replacement_worker_drops_key(setup: ClientsSetup) -> None:
    gateway = setup.gateway
    victim, survivor = worker_pids(gateway)
    write_clients_file(setup.clients_file, [setup.kept])
    wait_until(lambda: ("loaded", "file") in reloads_after_request(setup, victim), CONVERGENCE_TIMEOUT,
               "a worker loading the edit")
    setup.clients_file.write_text(BROKEN_FILE, encoding="utf-8")
    wait_until(lambda: ("rejected", None) in reloads_after_request(setup, victim), CONVERGENCE_TIMEOUT,
               "the worker rejecting the broken edit")

    # The replacement is forked from the master, whose clients still include c2.
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: len(worker_pids(gateway)) == WORKERS and victim not in worker_pids(gateway),
               CONVERGENCE_TIMEOUT * 3, "a replacement worker")
    replacement = next(pid for pid in wait_for_workers(gateway, WORKERS) if pid != survivor)
    wait_until(lambda: len(reloads_after_request(setup, replacement)) == 2, CONVERGENCE_TIMEOUT,
               "the replacement worker moving to the last valid file")

    assert clients_reloads(gateway, replacement) == [("rejected", None), ("loaded", "last-good copy")]
    assert_key_removed_everywhere(setup)
