"""Every simulator fault at each System API step of rotate, retire and revoke, on the Redis keyring.

Each case injects one fault kind once, or on every attempt, then checks what must hold even after
a failure (the active key is one Mux has), runs the repairs an operator would run (reconcile
--fix, retire), and checks that Mux and the keyring then agree and no create marker is left.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pytest

from gateway.keys.errors import KeyManagementError
from gateway.keys.material import SigningKey
from tests.keys.conftest import MAX_TOKEN_TTL, Rig

RigFactory = Callable[..., Rig]
FAULTS = ["error", "rate_limit", "latency", "malformed", "lost_response"]
ATTEMPTS = 3
# Each case: the operation, the System API operation that gets the fault, and its setup.
SCENARIOS = [
    ("rotate", "create"),
    ("rotate-after-retry", "list"),
    ("retire", "delete"),
    ("revoke-retiring", "delete"),
    ("revoke-only-key", "create"),
    ("revoke-only-key", "delete"),
]


def run_scenario(rig: Rig, scenario: str, env_kid: str) -> None:
    manager = rig.manager
    if scenario in ("rotate", "rotate-after-retry"):
        manager.rotate("ops")
    elif scenario == "retire":
        manager.retire("ops")
    elif scenario == "revoke-retiring":
        manager.revoke(env_kid, "ops")
    else:
        active = rig.store.read().active()
        assert active is not None
        manager.revoke(active.kid, "ops")


def prepare(rig: Rig, scenario: str, env_kid: str) -> None:
    if scenario in ("retire", "revoke-retiring"):
        rig.manager.rotate("ops")
    if scenario == "retire":
        rig.clock.advance(MAX_TOKEN_TTL + 300)
    if scenario == "revoke-only-key":
        rig.manager.rotate("ops")
        rig.manager.revoke(env_kid, "ops")
    if scenario == "rotate-after-retry":
        # A lost create response makes the client retry, so the listing step runs.
        rig.simulator.inject("lost_response", "create")


def held_at_mux(rig: Rig) -> set[str]:
    return set(rig.simulator.key_ids())


def keyring_usable_keys(rig: Rig, env_kid: str) -> set[str]:
    state = rig.store.read()
    if not state.keys:
        return {env_kid}
    return {record.kid for record in state.keys if record.state != "revoked"}


@pytest.mark.parametrize("store", ["redis"], indirect=True)
@pytest.mark.parametrize("count", [1, ATTEMPTS], ids=["once", "every-attempt"])
@pytest.mark.parametrize("kind", FAULTS)
@pytest.mark.parametrize(("scenario", "operation"), SCENARIOS, ids=[f"{s}-{o}" for s, o in SCENARIOS])
def test_fault_leaves_repairable_state(
    make_rig: RigFactory,
    mux_env_key: tuple[SigningKey, str],
    scenario: str,
    operation: str,
    kind: str,
    count: int,
) -> None:
    env_kid = mux_env_key[0].kid
    rig = make_rig(env_key=mux_env_key[0], read_timeout=0.3, max_attempts=ATTEMPTS)
    prepare(rig, scenario, env_kid)
    rig.simulator.inject(kind, operation, count=count, seconds=0.6)

    # Whether the operation fails depends on the fault; the state checks below apply either way.
    with contextlib.suppress(KeyManagementError):
        run_scenario(rig, scenario, env_kid)

    # Even right after a failure, every replica signs with a key that Mux has.
    rig.provider.refresh()
    assert rig.provider.active().kid in held_at_mux(rig)
    active = rig.store.read().active()
    assert active is None or active.kid in held_at_mux(rig)

    rig.simulator.clear_faults()
    rig.clock.advance(rig.manager.client.max_call_seconds + 60)
    rig.manager.reconcile(True, "ops")
    if scenario == "retire":
        rig.manager.retire("ops")

    assert held_at_mux(rig) == keyring_usable_keys(rig, env_kid)
    assert rig.store.read().intents == ()
    assert [record.kid for record in rig.store.read().keys if record.state == "revoked"] == []
