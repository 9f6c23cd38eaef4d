"""The System API client against the simulator: operations, retries, errors and faults."""

from __future__ import annotations

import pytest

from gateway.keys.errors import MuxApiError, MuxResponseError, MuxUnavailableError
from gateway.keys.material import generate_rsa_key
from gateway.keys.simulator import Simulator
from gateway.keys.system_api import SystemApiClient
from tests.keys.conftest import fast_client


def recording_client(simulator: Simulator, delays: list[float], **options: float) -> SystemApiClient:
    return SystemApiClient(
        simulator.url, simulator.token_id, simulator.token_secret,
        connect_timeout=1.0, read_timeout=options.get("read_timeout", 1.0),
        max_attempts=int(options.get("max_attempts", 3)), backoff_base=0.01, backoff_max=0.02,
        sleep=delays.append,
    )


def test_create_returns_parsed_key(simulator: Simulator) -> None:
    client = fast_client(simulator)

    created = client.create_signing_key()

    assert simulator.key_ids() == [created.kid]
    assert created.attempts == 1
    assert created.key.source == "mux"
    assert created.key.bits == 2048
    held = simulator.get_key(created.kid)
    assert held is not None
    assert created.created_at == held.created_at
    assert created.key.public_pem().decode() == held.public_pem()


def test_create_repr_hides_key(simulator: Simulator) -> None:
    client = fast_client(simulator)

    created = client.create_signing_key()

    assert repr(created) == f"CreatedKey(kid={created.kid!r}, created_at={created.created_at}, attempts=1)"
    assert simulator.token_secret not in repr(client)


def test_list_reads_every_page(simulator: Simulator) -> None:
    shared_key = generate_rsa_key()
    expected = [simulator.add_key(shared_key)[0].kid for _ in range(230)]
    client = fast_client(simulator)

    listed = client.list_signing_keys()

    assert sorted(key.kid for key in listed) == sorted(expected)
    list_calls = [path for method, path, status in simulator.requests if method == "GET" and status == 200]
    assert len(list_calls) == 3


def test_list_of_empty_environment(simulator: Simulator) -> None:
    assert fast_client(simulator).list_signing_keys() == []


def test_get_and_delete(simulator: Simulator) -> None:
    key, _ = simulator.add_key()
    client = fast_client(simulator)

    remote = client.get_signing_key(key.kid)
    assert remote is not None
    assert (remote.kid, remote.created_at) == (key.kid, key.created_at)

    assert client.delete_signing_key(key.kid) is True
    assert client.delete_signing_key(key.kid) is False
    assert client.get_signing_key(key.kid) is None
    assert simulator.key_ids() == []


def test_wrong_secret_is_not_retried(simulator: Simulator) -> None:
    client = SystemApiClient(simulator.url, simulator.token_id, "wrong-secret", max_attempts=3)

    with pytest.raises(MuxApiError) as raised:
        client.list_signing_keys()

    assert raised.value.status == 401
    assert raised.value.error_type == "unauthorized"
    assert raised.value.messages == ("Unauthorized request: check the access token id and secret",)
    assert str(raised.value) == (
        "System API list (GET /system/v1/signing-keys) returned 401 unauthorized: Unauthorized "
        "request: check the access token id and secret. Check MUX_TOKEN_ID and MUX_TOKEN_SECRET."
    )
    assert "wrong-secret" not in str(raised.value)
    assert simulator.count_requests("GET") == 1


def test_other_4xx_is_not_retried(simulator: Simulator) -> None:
    simulator.inject("error", "delete", status=400)
    key, _ = simulator.add_key()
    client = fast_client(simulator)

    with pytest.raises(MuxApiError) as raised:
        client.delete_signing_key(key.kid)

    assert raised.value.status == 400
    assert raised.value.http_status == 502
    assert simulator.count_requests("DELETE") == 1
    assert simulator.key_ids() == [key.kid]


def test_5xx_is_retried_with_backoff(simulator: Simulator) -> None:
    simulator.inject("error", "create", count=2, status=503)
    delays: list[float] = []
    client = recording_client(simulator, delays)

    created = client.create_signing_key()

    assert created.attempts == 3
    assert simulator.key_ids() == [created.kid]
    assert simulator.count_requests("POST", 503) == 2
    assert len(delays) == 2
    assert all(0 <= delay <= 0.02 for delay in delays)


def test_5xx_through_every_attempt(simulator: Simulator) -> None:
    simulator.inject("error", "list", count=3, status=502)
    delays: list[float] = []
    client = recording_client(simulator, delays)

    with pytest.raises(MuxUnavailableError) as raised:
        client.list_signing_keys()

    assert raised.value.status == 502
    assert raised.value.http_status == 503
    assert str(raised.value) == (
        "System API list (GET /system/v1/signing-keys) returned 502 injected_fault: Injected error fault"
    )
    assert simulator.count_requests("GET", 502) == 3


def test_429_honours_retry_after(simulator: Simulator) -> None:
    simulator.inject("rate_limit", "list", count=2, retry_after=2)
    delays: list[float] = []
    client = recording_client(simulator, delays)

    assert client.list_signing_keys() == []
    assert delays == [2.0, 2.0]


def test_429_with_long_retry_after_stops(simulator: Simulator) -> None:
    simulator.inject("rate_limit", "create", retry_after=120)
    delays: list[float] = []
    client = recording_client(simulator, delays)

    with pytest.raises(MuxUnavailableError) as raised:
        client.create_signing_key()

    assert raised.value.status == 429
    assert raised.value.retry_after == 120
    assert delays == []
    assert simulator.key_ids() == []


def test_latency_past_timeout_is_retried(simulator: Simulator) -> None:
    simulator.inject("latency", "get", seconds=0.6)
    key, _ = simulator.add_key()
    delays: list[float] = []
    client = recording_client(simulator, delays, read_timeout=0.3)

    remote = client.get_signing_key(key.kid)

    assert remote is not None
    assert remote.kid == key.kid
    assert len(delays) == 1


def test_latency_on_every_attempt(simulator: Simulator) -> None:
    simulator.inject("latency", "list", count=2, seconds=0.6)
    client = recording_client(simulator, [], read_timeout=0.3, max_attempts=2)

    with pytest.raises(MuxUnavailableError) as raised:
        client.list_signing_keys()

    assert str(raised.value) == (
        "System API list (GET /system/v1/signing-keys) timed out after 0.3 s on each of 2 attempts"
    )


def test_malformed_body_is_not_retried(simulator: Simulator) -> None:
    simulator.inject("malformed", "create")
    client = fast_client(simulator)

    with pytest.raises(MuxResponseError) as raised:
        client.create_signing_key()

    assert str(raised.value) == "System API create returned 201 with a body that is not JSON"
    assert simulator.count_requests("POST") == 1
    # The key was made before the body broke: the keyring's create marker covers that case.
    assert len(simulator.key_ids()) == 1


def test_lost_create_response_retries(simulator: Simulator) -> None:
    simulator.inject("lost_response", "create")
    client = fast_client(simulator)

    created = client.create_signing_key()

    assert created.attempts == 2
    assert len(simulator.key_ids()) == 2
    assert created.kid in simulator.key_ids()


def test_unreachable_server(simulator: Simulator) -> None:
    url = simulator.url
    simulator.stop()
    client = SystemApiClient(url, "id", "secret", max_attempts=2, backoff_base=0.01, backoff_max=0.01)

    with pytest.raises(MuxUnavailableError) as raised:
        client.list_signing_keys()

    assert str(raised.value) == (
        f"System API list (GET /system/v1/signing-keys) failed: ConnectionError connecting to {url}, "
        "on each of 2 attempts"
    )


def test_invalid_key_id_rejected(simulator: Simulator) -> None:
    client = fast_client(simulator)

    with pytest.raises(ValueError, match=r"^invalid signing key id \(4 characters\)"):
        client.delete_signing_key("../x")
    assert simulator.requests == []


def test_missing_credentials_rejected() -> None:
    with pytest.raises(ValueError, match=r"^the System API client needs MUX_TOKEN_ID and MUX_TOKEN_SECRET$"):
        SystemApiClient("http://127.0.0.1:1", "", "secret")
