"""Service clients: parsing the clients file, API key checks and reloading on change."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path

import pytest

from gateway.auth.clients import (
    ClientRegistry,
    ClientsFileError,
    hash_api_key,
    new_api_key,
    parse_clients,
)
from gateway.auth.principal import Client
from gateway.policy.lastgood import LastGoodCopy, LastGoodFiles

BFF_KEY = "pgw_mobile-bff-test-key"
SECURITY_KEY = "pgw_security-test-key"


def clients_yaml(*entries: tuple[str, str, list[str]]) -> str:
    lines = ["clients:"]
    for client_id, key, scopes in entries:
        lines += [
            f"  - id: {client_id}",
            f"    key_sha256: {hash_api_key(key)}",
            f"    scopes: [{', '.join(scopes)}]",
        ]
    return "\n".join(lines) + "\n"


def write_clients(path: Path, text: str) -> None:
    previous = path.stat().st_mtime if path.exists() else 0.0
    path.write_text(text, encoding="utf-8")
    # Move the mtime forward, so a rewrite within one filesystem timestamp step is still a change.
    stamp = max(time.time(), previous + 1)
    os.utime(path, (stamp, stamp))


def test_new_api_key_matches_its_hash() -> None:
    key, digest = new_api_key()

    assert key.startswith("pgw_")
    assert len(key) == 4 + 43
    assert digest == hash_api_key(key)
    assert len(digest) == 64
    assert new_api_key()[0] != key


def test_parse_clients_builds_clients() -> None:
    text = clients_yaml(
        ("mobile-bff", BFF_KEY, ["tokens:mint", "viewer:assert"]),
        ("security-team", SECURITY_KEY, ["keys:read", "keys:rotate", "keys:revoke"]),
    )

    clients = parse_clients(text)

    assert clients == (
        Client(id="mobile-bff", scopes=frozenset({"tokens:mint", "viewer:assert"}),
               key_sha256=hash_api_key(BFF_KEY)),
        Client(id="security-team", scopes=frozenset({"keys:read", "keys:rotate", "keys:revoke"}),
               key_sha256=hash_api_key(SECURITY_KEY)),
    )


def test_client_repr_hides_key_hash() -> None:
    client = parse_clients(clients_yaml(("mobile-bff", BFF_KEY, ["tokens:mint"])))[0]

    assert hash_api_key(BFF_KEY) not in repr(client)


def test_empty_file_has_no_clients() -> None:
    assert parse_clients("") == ()
    assert parse_clients("clients: []\n") == ()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("clients: [", "clients.yaml: invalid YAML (ParserError)"),
        ("- a\n", "clients.yaml: expected a mapping with the single key 'clients'"),
        ("clients: []\nextra: 1\n", "clients.yaml: expected a mapping with the single key 'clients'"),
        ("clients: {id: x}\n", "clients.yaml: 'clients' must be a list"),
        ("clients: [5]\n", "clients.yaml: clients[0]: expected a mapping with id, key_sha256 and scopes"),
        (
            "clients:\n  - {id: a, key_sha256: " + "a" * 64 + ", scopes: [tokens:mint], role: admin}\n",
            "clients.yaml: clients[0]: unknown keys ['role']; allowed: id, key_sha256, scopes",
        ),
        (
            "clients:\n  - {id: '-bad', key_sha256: " + "a" * 64 + ", scopes: [tokens:mint]}\n",
            "clients.yaml: clients[0]: id must be 1-64 letters, digits, '.', '_' or '-', starting "
            "with a letter or digit",
        ),
        (
            "clients:\n  - {id: a, key_sha256: abc, scopes: [tokens:mint]}\n",
            "clients.yaml: clients[0] (a): key_sha256 must be 64 hex characters; create one with "
            "`playback-gateway clients new-key`",
        ),
        (
            "clients:\n  - {id: a, key_sha256: " + "a" * 64 + ", scopes: []}\n",
            "clients.yaml: clients[0] (a): scopes must be a non-empty list of strings",
        ),
        (
            "clients:\n  - {id: a, key_sha256: " + "a" * 64 + ", scopes: [tokens:burn]}\n",
            "clients.yaml: clients[0] (a): unknown scopes ['tokens:burn']; allowed: ['keys:read', "
            "'keys:revoke', 'keys:rotate', 'tokens:mint', 'viewer:assert']",
        ),
        (
            "clients:\n  - {id: a, key_sha256: " + "a" * 64 + ", scopes: [tokens:mint]}\n"
            "  - {id: a, key_sha256: " + "b" * 64 + ", scopes: [tokens:mint]}\n",
            "clients.yaml: client id 'a' appears twice",
        ),
        (
            "clients:\n  - {id: a, key_sha256: " + "a" * 64 + ", scopes: [tokens:mint]}\n"
            "  - {id: b, key_sha256: " + "A" * 64 + ", scopes: [tokens:mint]}\n",
            "clients.yaml: client 'b' reuses another client's key",
        ),
    ],
)
def test_invalid_clients_files_are_rejected(text: str, message: str) -> None:
    with pytest.raises(ClientsFileError) as caught:
        parse_clients(text, source="clients.yaml")

    assert str(caught.value) == message


def test_registry_authenticates_by_key(tmp_path: Path) -> None:
    path = tmp_path / "clients.yaml"
    write_clients(path, clients_yaml(
        ("mobile-bff", BFF_KEY, ["tokens:mint", "viewer:assert"]),
        ("security-team", SECURITY_KEY, ["keys:read"]),
    ))
    registry = ClientRegistry(path)

    bff = registry.authenticate(BFF_KEY)
    security = registry.authenticate(SECURITY_KEY)

    assert bff is not None
    assert bff.id == "mobile-bff"
    assert security is not None
    assert security.id == "security-team"
    assert registry.authenticate("pgw_unknown") is None
    assert registry.authenticate(BFF_KEY + " ") is None


def test_registry_without_file_has_no_clients() -> None:
    registry = ClientRegistry(None)

    assert registry.clients == ()
    assert registry.authenticate(BFF_KEY) is None
    assert registry.maybe_reload() is False


def test_unreadable_file_fails_start_up(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"

    with pytest.raises(ClientsFileError) as caught:
        ClientRegistry(missing)

    assert str(caught.value) == f"GATEWAY_CLIENTS_FILE {missing} cannot be read: No such file or directory"


def test_registry_reloads_changed_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "clients.yaml"
    write_clients(path, clients_yaml(("mobile-bff", BFF_KEY, ["tokens:mint"])))
    # Without the reload thread, the audit event is logged inside the request below.
    registry = ClientRegistry(path, reload_in_background=False)
    assert registry.authenticate(SECURITY_KEY) is None

    write_clients(path, clients_yaml(
        ("mobile-bff", BFF_KEY, ["tokens:mint"]),
        ("security-team", SECURITY_KEY, ["keys:read"]),
    ))
    # The registry checks the file at most once a second.
    time.sleep(1.1)
    with caplog.at_level(logging.INFO, logger="gateway.audit"):
        added = registry.authenticate(SECURITY_KEY)

    assert added is not None
    assert added.id == "security-team"
    audits = [record for record in caplog.records if getattr(record, "event", "") == "audit.clients.reload"]
    assert [record.result for record in audits] == ["loaded"]
    assert audits[0].clients == 2


def test_invalid_change_keeps_previous_clients(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "clients.yaml"
    write_clients(path, clients_yaml(("mobile-bff", BFF_KEY, ["tokens:mint"])))
    registry = ClientRegistry(path, reload_in_background=False)

    write_clients(path, "clients: [\n")
    time.sleep(1.1)
    with caplog.at_level(logging.INFO, logger="gateway.audit"):
        kept = registry.authenticate(BFF_KEY)

    assert kept is not None
    assert kept.id == "mobile-bff"
    audits = [record for record in caplog.records if getattr(record, "event", "") == "audit.clients.reload"]
    assert [record.result for record in audits] == ["rejected"]
    assert audits[0].reason == f"{path}: invalid YAML (ParserError)"


def test_idle_registry_reloads_in_background(tmp_path: Path) -> None:
    path = tmp_path / "clients.yaml"
    write_clients(path, clients_yaml(("mobile-bff", BFF_KEY, ["tokens:mint"])))
    registry = ClientRegistry(path)
    # The first request of a process starts its reload thread. No request follows.
    assert registry.authenticate(BFF_KEY) is not None

    write_clients(path, clients_yaml(("security-team", SECURITY_KEY, ["keys:read"])))
    deadline = time.monotonic() + 10.0
    while [client.id for client in registry.clients] != ["security-team"] and time.monotonic() < deadline:
        time.sleep(0.05)

    assert [client.id for client in registry.clients] == ["security-team"]


def test_rejecting_worker_moves_to_last_good(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "clients.yaml"
    shared = tmp_path / "clients-last-good"
    write_clients(path, clients_yaml(
        ("mobile-bff", BFF_KEY, ["tokens:mint"]),
        ("security-team", SECURITY_KEY, ["keys:read"]),
    ))
    # Two registries on one data directory stand for two gunicorn workers.
    first = ClientRegistry(path, last_good_dir=shared, reload_in_background=False)
    second = ClientRegistry(path, last_good_dir=shared, reload_in_background=False)

    # The first worker checks between the edit that removes security-team and a broken edit,
    # the second only after the broken edit.
    write_clients(path, clients_yaml(("mobile-bff", BFF_KEY, ["tokens:mint"])))
    time.sleep(1.1)
    assert first.authenticate(SECURITY_KEY) is None
    write_clients(path, "clients: [broken\n")
    time.sleep(1.1)
    # Whether earlier reloads were captured depends on the log level earlier tests set.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="gateway.audit"):
        removed = second.authenticate(SECURITY_KEY)
    audits = [(record.result, getattr(record, "source", None))
              for record in caplog.records if getattr(record, "event", "") == "audit.clients.reload"]

    assert removed is None
    assert [client.id for client in second.clients] == ["mobile-bff"]
    assert first.authenticate(SECURITY_KEY) is None
    assert [client.id for client in first.clients] == ["mobile-bff"]
    assert audits == [("rejected", None), ("loaded", "last-good copy")]


def test_stale_fork_moves_to_last_good(tmp_path: Path) -> None:
    path = tmp_path / "clients.yaml"
    shared = tmp_path / "clients-last-good"
    write_clients(path, clients_yaml(
        ("mobile-bff", BFF_KEY, ["tokens:mint"]),
        ("security-team", SECURITY_KEY, ["keys:read"]),
    ))
    # The registry built at start-up, as a gunicorn master builds it before forking workers.
    at_start_up = ClientRegistry(path, last_good_dir=shared, reload_in_background=False)
    write_clients(path, clients_yaml(("mobile-bff", BFF_KEY, ["tokens:mint"])))
    running = ClientRegistry(path, last_good_dir=shared, reload_in_background=False)
    write_clients(path, "clients: [broken\n")
    time.sleep(1.1)

    assert at_start_up.authenticate(SECURITY_KEY) is None
    assert [client.id for client in at_start_up.clients] == ["mobile-bff"]
    assert [client.id for client in running.clients] == ["mobile-bff"]


def test_rejected_file_keeps_clients_without_copy(tmp_path: Path) -> None:
    path = tmp_path / "clients.yaml"
    shared = tmp_path / "clients-last-good"
    write_clients(path, clients_yaml(("mobile-bff", BFF_KEY, ["tokens:mint"])))
    registry = ClientRegistry(path, last_good_dir=shared, reload_in_background=False)

    write_clients(path, "clients: [broken\n")
    time.sleep(1.1)
    assert registry.maybe_reload() is False

    assert [client.id for client in registry.clients] == ["mobile-bff"]
    assert LastGoodCopy(shared, kind="clients").read_version(path) == hashlib.sha256(
        clients_yaml(("mobile-bff", BFF_KEY, ["tokens:mint"])).encode()
    ).hexdigest()


def test_damaged_copy_is_not_adopted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "clients.yaml"
    shared = tmp_path / "clients-last-good"
    write_clients(path, clients_yaml(("mobile-bff", BFF_KEY, ["tokens:mint"])))
    registry = ClientRegistry(path, last_good_dir=shared, reload_in_background=False)
    damaged = LastGoodFiles(version="0" * 64, path=str(path), sources=((str(path), b"clients: []\n"),))
    assert LastGoodCopy(shared, kind="clients").write_if_current(damaged, lambda: True) is True

    write_clients(path, "clients: [broken\n")
    time.sleep(1.1)
    with caplog.at_level(logging.INFO):
        assert registry.maybe_reload() is False

    assert [client.id for client in registry.clients] == ["mobile-bff"]
    failures = [record.error for record in caplog.records if getattr(record, "event", "") == "clients.last_good_failed"]
    assert failures == [f"the clients copy in {shared} does not match its digest"]
