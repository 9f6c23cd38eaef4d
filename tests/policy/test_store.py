"""PolicyStore: hot reload of changed files, rejected changes, metrics, audit events and shadow."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from gateway.auth.principal import Viewer
from gateway.observability.logging import hash_identifier
from gateway.policy.lastgood import LastGoodCopy, LastGoodPolicy
from gateway.policy.loader import load_policy
from gateway.policy.problems import PolicyLoadError
from gateway.policy.store import PolicyStore
from tests.policy.helpers import FREE_ID, decision_input

ALLOW_VIDEO = f"""
version: 1
catalog:
  - playback_ids: [{FREE_ID}]
    attributes: {{tier: free}}
rules:
  - name: free-video
    effect: allow
    when: 'content.tier == "free"'
    audiences: [video, thumbnail]
"""

ALLOW_VIDEO_LONGER = ALLOW_VIDEO + "    ttl: 2h\n"

DENY_ALL = """
version: 1
rules:
  - name: closed
    effect: deny
    message: maintenance
"""

BROKEN = """
version: 1
rules:
  - name: free-video
    effect: permit
"""


class FakeClock:
    """A monotonic clock that moves only when a test calls `advance`.

    Stores built with it run without the reload thread, so only the test decides when files are
    checked.
    """

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def rewrite(path: Path, text: str) -> None:
    """Replace a file's text and move its mtime forward, so the change shows even on coarse clocks."""
    before = path.stat().st_mtime_ns
    path.write_text(text.lstrip("\n"), encoding="utf-8")
    os.utime(path, ns=(before + 1_000_000_000, before + 1_000_000_000))


def reloads(result: str) -> float:
    return REGISTRY.get_sample_value("playback_gateway_policy_reloads_total", {"result": result}) or 0.0


def version_gauge(version: str) -> float | None:
    return REGISTRY.get_sample_value("playback_gateway_policy_version_info", {"version": version})


def disagreements(live: str, shadow: str) -> float:
    labels = {"live_effect": live, "shadow_effect": shadow}
    return REGISTRY.get_sample_value("playback_gateway_shadow_policy_disagreements_total", labels) or 0.0


def audit_records(caplog: pytest.LogCaptureFixture, path: Path) -> list[logging.LogRecord]:
    """Return the reload audit records of the store at `path`.

    Stores built by earlier tests in this process may still run reload threads, so records are
    filtered by path rather than taken whole.
    """
    return [
        record for record in caplog.records
        if getattr(record, "event", None) == "audit.policy.reload" and getattr(record, "path", None) == str(path)
    ]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_initial_load_sets_version_gauge(write_policy: Callable[..., Path], clock: FakeClock) -> None:
    store = PolicyStore(write_policy(ALLOW_VIDEO), clock=clock, reload_in_background=False)

    assert store.policy.rules[0].name == "free-video"
    assert store.shadow is None
    assert version_gauge(store.policy.version) == 1.0


def test_invalid_initial_policy_raises(write_policy: Callable[..., Path], clock: FakeClock) -> None:
    path = write_policy(BROKEN)

    with pytest.raises(PolicyLoadError) as raised:
        PolicyStore(path, clock=clock, reload_in_background=False)

    assert str(raised.value) == f"{path}:4: free-video: invalid effect 'permit': use allow or deny"


def test_valid_change_is_picked_up(
    write_policy: Callable[..., Path], clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_policy(ALLOW_VIDEO)
    store = PolicyStore(path, clock=clock, reload_in_background=False)
    old_version = store.policy.version
    loaded_before = reloads("loaded")
    rewrite(path, ALLOW_VIDEO_LONGER)

    with caplog.at_level(logging.INFO, logger="gateway.audit"):
        before_interval = store.maybe_reload()
        clock.advance(1.0)
        after_interval = store.maybe_reload()

    assert before_interval is False
    assert after_interval is True
    assert store.policy.rules[0].ttl == 7200
    assert store.policy.version != old_version
    assert reloads("loaded") == loaded_before + 1
    assert version_gauge(store.policy.version) == 1.0
    assert version_gauge(old_version) == 0.0

    [record] = audit_records(caplog, path)
    assert record.result == "loaded"
    assert record.actor is None
    assert record.policy == "live"
    assert record.version == store.policy.version
    assert record.previous_version == old_version


def test_invalid_change_keeps_previous_policy(
    write_policy: Callable[..., Path], clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_policy(ALLOW_VIDEO)
    store = PolicyStore(path, clock=clock, reload_in_background=False)
    previous = store.policy
    rejected_before = reloads("rejected")
    rewrite(path, BROKEN)

    with caplog.at_level(logging.INFO, logger="gateway.audit"):
        clock.advance(1.0)
        first = store.maybe_reload()
        clock.advance(1.0)
        second = store.maybe_reload()

    assert first is False
    assert second is False
    assert store.policy is previous
    assert store.evaluate(decision_input(FREE_ID)).rule == "free-video"
    assert reloads("rejected") == rejected_before + 1
    assert version_gauge(previous.version) == 1.0

    [record] = audit_records(caplog, path)
    assert record.result == "rejected"
    assert record.version == previous.version
    assert record.problems == [f"{path}:4: free-video: invalid effect 'permit': use allow or deny"]
    assert record.problem_count == 1


def test_fixed_file_after_rejection_loads(write_policy: Callable[..., Path], clock: FakeClock) -> None:
    path = write_policy(ALLOW_VIDEO)
    store = PolicyStore(path, clock=clock, reload_in_background=False)
    rewrite(path, BROKEN)
    clock.advance(1.0)
    store.maybe_reload()
    rewrite(path, DENY_ALL)
    clock.advance(1.0)

    reloaded = store.maybe_reload()

    assert reloaded is True
    assert store.policy.rules[0].name == "closed"
    assert store.evaluate(decision_input(FREE_ID)).message == "maintenance"


def test_unchanged_signature_skips_reading(write_policy: Callable[..., Path], clock: FakeClock) -> None:
    path = write_policy(ALLOW_VIDEO)
    store = PolicyStore(path, clock=clock, reload_in_background=False)
    stat = path.stat()
    # Same size and mtime: the watcher cannot tell, but reload_now reads the file anyway.
    path.write_text(ALLOW_VIDEO.lstrip("\n").replace("free-video", "free-vide0"), encoding="utf-8")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    clock.advance(5.0)

    assert store.maybe_reload() is False
    assert store.policy.rules[0].name == "free-video"
    assert store.reload_now() is True
    assert store.policy.rules[0].name == "free-vide0"
    assert store.reload_now() is False


def test_folder_gains_a_file(write_policy: Callable[..., Path], clock: FakeClock) -> None:
    first = write_policy(ALLOW_VIDEO, "policies/10-base.yaml")
    store = PolicyStore(first.parent, clock=clock, reload_in_background=False)
    write_policy(DENY_ALL, "policies/20-closed.yaml")
    clock.advance(1.0)

    reloaded = store.maybe_reload()

    assert reloaded is True
    assert [rule.name for rule in store.policy.rules] == ["free-video", "closed"]
    assert store.evaluate(decision_input(FREE_ID)).rule == "closed"


def test_removed_policy_is_rejected(write_policy: Callable[..., Path], clock: FakeClock) -> None:
    path = write_policy(ALLOW_VIDEO)
    store = PolicyStore(path, clock=clock, reload_in_background=False)
    previous = store.policy
    rejected_before = reloads("rejected")
    path.unlink()
    clock.advance(1.0)

    reloaded = store.maybe_reload()

    assert reloaded is False
    assert store.policy is previous
    assert reloads("rejected") == rejected_before + 1


def test_concurrent_reads_during_reloads(write_policy: Callable[..., Path], clock: FakeClock) -> None:
    path = write_policy(ALLOW_VIDEO)
    store = PolicyStore(path, clock=clock, reload_in_background=False)
    versions = {store.policy.version}
    seen: list[str] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def read() -> None:
        try:
            while True:
                decision = store.evaluate(decision_input(FREE_ID))
                seen.append(decision.policy_version)
                store.maybe_reload()
                if stop.is_set():
                    break
        except BaseException as error:  # noqa: BLE001 - surfaced by the assert below
            errors.append(error)

    readers = [threading.Thread(target=read) for _ in range(4)]
    for reader in readers:
        reader.start()
    for text in (ALLOW_VIDEO_LONGER, DENY_ALL, ALLOW_VIDEO):
        rewrite(path, text)
        store.reload_now()
        versions.add(store.policy.version)
    stop.set()
    for reader in readers:
        reader.join()

    assert errors == []
    assert seen
    assert set(seen) <= versions
    assert store.policy.version == load_policy(path).version


def test_shadow_disagreement_is_counted_not_returned(
    write_policy: Callable[..., Path], clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    live = write_policy(ALLOW_VIDEO, "live.yaml")
    shadow = write_policy(DENY_ALL, "shadow.yaml")
    store = PolicyStore(live, shadow, clock=clock, reload_in_background=False)
    before = disagreements("allow", "deny")
    viewer = Viewer(id="viewer-42", authenticated=True)

    with caplog.at_level(logging.INFO, logger="gateway.policy.store"):
        decision = store.evaluate(decision_input(FREE_ID, viewer=viewer))

    assert store.shadow is not None
    assert decision == store.policy.evaluate(decision_input(FREE_ID, viewer=viewer))
    assert decision.effect == "allow"
    assert disagreements("allow", "deny") == before + 1

    [record] = [r for r in caplog.records if getattr(r, "event", None) == "policy.shadow_disagreement"]
    assert record.playback_id == FREE_ID
    assert record.viewer == hash_identifier("viewer-42")
    assert record.live_effect == "allow"
    assert record.live_rule == "free-video"
    assert record.live_version == store.policy.version
    assert record.live_grant == {"audiences": ["video", "thumbnail"], "ttl": 3600,
                                 "claims": {"video": {}, "thumbnail": {}}}
    assert record.shadow_effect == "deny"
    assert record.shadow_rule == "closed"
    assert record.shadow_version == store.shadow.version
    assert record.shadow_grant is None


def test_shadow_agreement_is_not_counted(write_policy: Callable[..., Path], clock: FakeClock) -> None:
    live = write_policy(ALLOW_VIDEO, "live.yaml")
    shadow = write_policy(ALLOW_VIDEO + "# same rules, other bytes\n", "shadow.yaml")
    store = PolicyStore(live, shadow, clock=clock, reload_in_background=False)
    before = disagreements("allow", "allow")

    decision = store.evaluate(decision_input(FREE_ID))

    assert decision.rule == "free-video"
    assert disagreements("allow", "allow") == before


def test_shadow_grant_difference_is_counted(write_policy: Callable[..., Path], clock: FakeClock) -> None:
    live = write_policy(ALLOW_VIDEO, "live.yaml")
    shadow = write_policy(ALLOW_VIDEO_LONGER, "shadow.yaml")
    store = PolicyStore(live, shadow, clock=clock, reload_in_background=False)
    before = disagreements("allow", "allow")

    decision = store.evaluate(decision_input(FREE_ID))

    assert decision.grant is not None
    assert decision.grant.ttl == 3600
    assert disagreements("allow", "allow") == before + 1


def test_failing_shadow_never_raises(
    write_policy: Callable[..., Path], clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    live = write_policy(ALLOW_VIDEO, "live.yaml")
    shadow = write_policy(ALLOW_VIDEO, "shadow.yaml")
    store = PolicyStore(live, shadow, clock=clock, reload_in_background=False)
    # A catalog value that CEL cannot convert makes every evaluation of this policy raise. The
    # loader never produces one, so the shadow is swapped for a hand-built policy.
    assert store._shadow is not None
    store._shadow.policy = replace(store._shadow.policy, catalog={FREE_ID: {"tier": {"a", "set"}}})

    with caplog.at_level(logging.INFO, logger="gateway.policy.store"):
        decision = store.evaluate(decision_input(FREE_ID))

    assert decision.effect == "allow"
    assert decision.rule == "free-video"
    [record] = [r for r in caplog.records if getattr(r, "event", None) == "policy.shadow_failed"]
    assert record.error_type == "ValueError"


def test_shadow_reloads_beside_live(write_policy: Callable[..., Path], clock: FakeClock) -> None:
    live = write_policy(ALLOW_VIDEO, "live.yaml")
    shadow = write_policy(ALLOW_VIDEO, "shadow.yaml")
    store = PolicyStore(live, shadow, clock=clock, reload_in_background=False)
    live_version = store.policy.version
    rewrite(shadow, DENY_ALL)
    clock.advance(1.0)

    reloaded = store.maybe_reload()

    assert reloaded is True
    assert store.policy.version == live_version
    assert store.shadow is not None
    assert store.shadow.rules[0].name == "closed"
    assert version_gauge(live_version) == 1.0


ALLOW_VIDEO_480 = ALLOW_VIDEO + "    claims:\n      max_resolution: 480p\n"
ALLOW_VIDEO_9000 = ALLOW_VIDEO + "    claims:\n      max_resolution: 9000p\n"


def wait_for_version(store: PolicyStore, version: str) -> str:
    """Poll the store's version for up to 10 s without calling it as a request would; return it."""
    deadline = time.monotonic() + 10.0
    while store.policy.version != version and time.monotonic() < deadline:
        time.sleep(0.02)
    return store.policy.version


def test_idle_store_reloads_in_background(write_policy: Callable[..., Path]) -> None:
    path = write_policy(ALLOW_VIDEO)
    store = PolicyStore(path, check_interval=0.05)
    # The first request of a process starts its reload thread. No request follows.
    store.maybe_reload()

    rewrite(path, ALLOW_VIDEO_LONGER)
    expected = load_policy(path).version

    assert wait_for_version(store, expected) == expected


def test_rejecting_worker_moves_to_last_good_copy(
    write_policy: Callable[..., Path], clock: FakeClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_policy(ALLOW_VIDEO)
    shared = tmp_path / "last-good"
    first = PolicyStore(path, clock=clock, last_good_dir=shared, reload_in_background=False)
    second = PolicyStore(path, clock=clock, last_good_dir=shared, reload_in_background=False)
    original = first.policy.version

    rewrite(path, ALLOW_VIDEO_480)
    clock.advance(1.0)
    assert first.maybe_reload() is True
    newer = first.policy.version
    rewrite(path, ALLOW_VIDEO_9000)
    clock.advance(1.0)
    # Whether the first store's reload was captured depends on the log level earlier tests set.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="gateway.audit"):
        moved = second.maybe_reload()

    assert second.policy.version != original
    assert moved is True
    assert second.policy.version == newer
    assert second.policy.files == (str(path),)
    assert second.policy.rules[0].claims == {"max_resolution": "480p"}
    assert [(record.result, getattr(record, "source", None)) for record in audit_records(caplog, path)] == [
        ("rejected", None), ("loaded", "last-good copy")
    ]


def test_rejecting_worker_keeps_checking_last_good_copy(
    write_policy: Callable[..., Path], clock: FakeClock, tmp_path: Path
) -> None:
    path = write_policy(ALLOW_VIDEO)
    shared = tmp_path / "last-good"
    store = PolicyStore(path, clock=clock, last_good_dir=shared, reload_in_background=False)
    original = store.policy.version
    rewrite(path, ALLOW_VIDEO_9000)
    clock.advance(1.0)
    assert store.maybe_reload() is False
    assert store.policy.version == original

    # Another worker loaded a newer valid version just before the file broke, and shares it late.
    newer = load_policy(write_policy(ALLOW_VIDEO_480, name="newer/policy.yaml"))
    copy = LastGoodPolicy(version=newer.version, path=str(path), sources=((str(path), newer.sources[0][1]),))
    assert LastGoodCopy(shared / "live").write_if_current(copy, lambda: True) is True
    clock.advance(1.0)

    assert store.maybe_reload() is True
    assert store.policy.version == newer.version


def test_last_good_copy_skips_stale_writer(tmp_path: Path) -> None:
    copy_dir = LastGoodCopy(tmp_path / "live")
    newer = LastGoodPolicy(version="bbbbbbbbbbbb", path="/etc/policy.yaml", sources=(("/etc/policy.yaml", b"new"),))
    older = LastGoodPolicy(version="aaaaaaaaaaaa", path="/etc/policy.yaml", sources=(("/etc/policy.yaml", b"old"),))

    assert copy_dir.write_if_current(newer, lambda: True) is True
    # The older version's files were replaced after it was loaded: it must not win.
    assert copy_dir.write_if_current(older, lambda: False) is False

    assert copy_dir.read(Path("/etc/policy.yaml")) == newer
    assert copy_dir.read(Path("/etc/other.yaml")) is None
    assert copy_dir.read_version(Path("/etc/policy.yaml")) == "bbbbbbbbbbbb"


def test_last_good_copy_of_other_path_ignored(
    write_policy: Callable[..., Path], clock: FakeClock, tmp_path: Path
) -> None:
    path = write_policy(ALLOW_VIDEO)
    shared = tmp_path / "last-good"
    other = LastGoodPolicy(version="cccccccccccc", path=str(tmp_path / "other.yaml"), sources=(("x", b"y"),))
    LastGoodCopy(shared / "live").write_if_current(other, lambda: True)
    store = PolicyStore(path, clock=clock, last_good_dir=shared, reload_in_background=False)
    original = store.policy.version
    rewrite(path, ALLOW_VIDEO_9000)
    clock.advance(1.0)

    assert store.maybe_reload() is False
    assert store.policy.version == original
    assert LastGoodCopy(shared / "live").read_version(path) == original
