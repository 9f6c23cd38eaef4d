"""The policy in force for this process: hot reload from disk and an optional shadow policy."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gateway.observability.logging import audit, hash_identifier, log_event
from gateway.observability.metrics import POLICY_RELOADS, POLICY_VERSION, SHADOW_DISAGREEMENTS
from gateway.policy.engine import Policy
from gateway.policy.lastgood import LastGoodCopy, LastGoodError, LastGoodPolicy
from gateway.policy.loader import FileSignature, file_signature, load_policy, load_policy_sources
from gateway.policy.model import Decision, DecisionInput
from gateway.policy.problems import PolicyLoadError
from gateway.reloading import ReloadThread

logger = logging.getLogger(__name__)

# How often request threads and each process's reload thread look at the files' mtimes. Each
# look costs a few stat() calls.
DEFAULT_CHECK_INTERVAL_SECONDS = 1.0

# A rejected reload lists its problems in the audit event; more than this is cut short.
_MAX_AUDITED_PROBLEMS = 20


@dataclass
class _WatchedPolicy:
    """One policy path, the policy loaded from it and the file signature last looked at."""

    role: str
    path: Path
    policy: Policy
    signature: FileSignature
    last_good: LastGoodCopy | None = None
    # Whether the files at `signature` were rejected, so the shared copy is worth looking at.
    rejected: bool = False
    # The last shared-copy failure logged, so a failure repeated every check is logged once.
    last_good_error: str | None = None


class PolicyStore:
    """Hold the live policy (and optionally a shadow policy) and reload them when files change.

    Readers use `.policy`, `.shadow` or `.evaluate()` without locking: a reload swaps in a fully
    built Policy, and Policy objects never change after loading. Initial load errors raise
    PolicyLoadError, so a process with an invalid policy does not start.

    Requests check the files at most once per `check_interval`. A daemon thread checks them at
    the same interval as well, so a process without requests also picks up changes. The thread
    starts in the process that serves: on the first request, or on the first read of `.policy`
    in a process forked after construction (a gunicorn worker), never in the process that built
    the store. With `last_good_dir`, every valid version loaded is copied there, and a process
    that rejects a change moves to that copy, so all workers converge on the last valid version.
    """

    def __init__(
        self,
        path: Path,
        shadow_path: Path | None = None,
        *,
        check_interval: float = DEFAULT_CHECK_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        last_good_dir: Path | None = None,
        reload_in_background: bool = True,
    ) -> None:
        self._check_interval = check_interval
        self._clock = clock
        self._reload_lock = threading.Lock()
        self._next_check = clock() + check_interval
        self._reload_thread = ReloadThread(
            self, name="policy-reload", interval=check_interval,
            failure_event="policy.reload_failed", enabled=reload_in_background,
        )

        self._live = _load_watched("live", path, last_good_dir)
        self._shadow = _load_watched("shadow", shadow_path, last_good_dir) if shadow_path is not None else None
        POLICY_VERSION.labels(version=self._live.policy.version).set(1)
        log_event(
            logger,
            "policy.loaded",
            path=str(path),
            version=self._live.policy.version,
            rules=len(self._live.policy.rules),
            shadow_version=self._shadow.policy.version if self._shadow else None,
        )

    @property
    def policy(self) -> Policy:
        """The policy that decides requests."""
        if self._reload_thread.in_forked_process:
            self._ensure_watcher()
        return self._live.policy

    @property
    def shadow(self) -> Policy | None:
        """The policy evaluated beside the live one for comparison only, or None."""
        return self._shadow.policy if self._shadow else None

    def maybe_reload(self) -> bool:
        """Reload changed policy files, looking at most once per check interval.

        Cheap enough to call on every request: between checks it reads the clock only, and while
        one thread reloads, the others keep deciding with the current policy instead of waiting.
        Returns whether a new live or shadow policy was put in force.
        """
        self._ensure_watcher()
        if self._clock() < self._next_check:
            return False
        if not self._reload_lock.acquire(blocking=False):
            return False
        try:
            self._next_check = self._clock() + self._check_interval
            return self._reload_changed(force=False)
        finally:
            self._reload_lock.release()

    def reload_now(self) -> bool:
        """Read the policy files now, changed or not. Returns whether a new policy was put in force.

        An invalid policy is rejected as in `maybe_reload`: the current one stays in force.
        """
        with self._reload_lock:
            self._next_check = self._clock() + self._check_interval
            return self._reload_changed(force=True)

    def evaluate(self, request: DecisionInput) -> Decision:
        """Decide with the live policy and compare with the shadow policy when there is one.

        The shadow policy never changes the result, and nothing it does raises from here.
        """
        self._ensure_watcher()
        decision = self._live.policy.evaluate(request)
        shadow = self._shadow
        if shadow is not None:
            self._compare_with_shadow(shadow.policy, request, decision)
        return decision

    def _reload_changed(self, *, force: bool) -> bool:
        changed = self._reload_one(self._live, force=force)
        if self._shadow is not None:
            changed = self._reload_one(self._shadow, force=force) or changed
        return changed

    def _reload_one(self, watched: _WatchedPolicy, *, force: bool) -> bool:
        signature = file_signature(watched.path)
        if signature == watched.signature and not force:
            return watched.rejected and _adopt_last_good(watched)

        # Remember the signature before loading, so a rejected change is reported once and not
        # reloaded every interval. A later edit changes the signature and is tried again.
        watched.signature = signature
        previous = watched.policy
        try:
            policy = load_policy(watched.path)
        except PolicyLoadError as error:
            watched.rejected = True
            _record_rejected(watched, error)
            return _adopt_last_good(watched)

        watched.rejected = False
        _share_last_good(watched, policy, signature)
        if policy.version == previous.version:
            return False
        watched.policy = policy
        _record_loaded(watched, previous, source="file")
        return True

    def _ensure_watcher(self) -> None:
        self._reload_thread.ensure_started(on_new_process=self._replace_lock)

    def _replace_lock(self) -> None:
        self._reload_lock = threading.Lock()

    def _compare_with_shadow(self, shadow: Policy, request: DecisionInput, live: Decision) -> None:
        try:
            shadow_decision = shadow.evaluate(request, record_errors=False)
            if _same_outcome(live, shadow_decision):
                return
            SHADOW_DISAGREEMENTS.labels(live_effect=live.effect, shadow_effect=shadow_decision.effect).inc()
            log_event(
                logger,
                "policy.shadow_disagreement",
                playback_id=request.playback_id,
                viewer=hash_identifier(request.viewer.id),
                live_effect=live.effect,
                live_rule=live.rule,
                live_version=live.policy_version,
                live_grant=_describe_grant(live),
                shadow_effect=shadow_decision.effect,
                shadow_rule=shadow_decision.rule,
                shadow_version=shadow_decision.policy_version,
                shadow_grant=_describe_grant(shadow_decision),
            )
        except Exception as error:  # noqa: BLE001 - the shadow policy must never affect a response
            log_event(
                logger,
                "policy.shadow_failed",
                logging.ERROR,
                error_type=type(error).__name__,
                error=str(error)[:300],
                shadow_version=shadow.version,
            )


def _load_watched(role: str, path: Path, last_good_dir: Path | None) -> _WatchedPolicy:
    signature = file_signature(path)
    last_good = LastGoodCopy(last_good_dir / role) if last_good_dir is not None else None
    watched = _WatchedPolicy(role=role, path=path, policy=load_policy(path), signature=signature, last_good=last_good)
    _share_last_good(watched, watched.policy, signature)
    return watched


def _share_last_good(watched: _WatchedPolicy, policy: Policy, signature: FileSignature) -> None:
    """Copy a valid policy to the shared folder, if its files still contain what was loaded."""
    if watched.last_good is None:
        return
    copy = LastGoodPolicy(version=policy.version, path=str(watched.path), sources=policy.sources)
    try:
        watched.last_good.write_if_current(copy, lambda: file_signature(watched.path) == signature)
    except LastGoodError as error:
        log_event(logger, "policy.last_good_failed", logging.ERROR, policy=watched.role, error=str(error))


def _adopt_last_good(watched: _WatchedPolicy) -> bool:
    """Put the shared copy in force when it contains another version. Returns whether it did."""
    if watched.last_good is None:
        return False
    try:
        if watched.last_good.read_version(watched.path) in (None, watched.policy.version):
            return False
        copy = watched.last_good.read(watched.path)
        if copy is None:
            return False
        policy = load_policy_sources(watched.path, list(copy.sources))
    except (LastGoodError, PolicyLoadError) as error:
        message = str(error)[:300]
        if message != watched.last_good_error:
            log_event(logger, "policy.last_good_failed", logging.ERROR, policy=watched.role, error=message)
        watched.last_good_error = message
        return False

    if policy.version != copy.version:
        message = f"the copy's files give version {policy.version}, not {copy.version}: the copy is damaged"
        if message != watched.last_good_error:
            log_event(logger, "policy.last_good_failed", logging.ERROR, policy=watched.role, error=message)
        watched.last_good_error = message
        return False
    if policy.version == watched.policy.version:
        return False
    previous = watched.policy
    watched.policy = policy
    _record_loaded(watched, previous, source="last-good copy")
    return True


def _record_loaded(watched: _WatchedPolicy, previous: Policy, *, source: str) -> None:
    POLICY_RELOADS.labels(result="loaded").inc()
    if watched.role == "live":
        POLICY_VERSION.labels(version=watched.policy.version).set(1)
        POLICY_VERSION.labels(version=previous.version).set(0)
    audit(
        "policy.reload",
        actor=None,
        result="loaded",
        policy=watched.role,
        path=str(watched.path),
        version=watched.policy.version,
        previous_version=previous.version,
        rules=len(watched.policy.rules),
        source=source,
    )


def _record_rejected(watched: _WatchedPolicy, error: PolicyLoadError) -> None:
    POLICY_RELOADS.labels(result="rejected").inc()
    problems = [str(problem) for problem in error.problems]
    audit(
        "policy.reload",
        actor=None,
        result="rejected",
        policy=watched.role,
        path=str(watched.path),
        version=watched.policy.version,
        problems=problems[:_MAX_AUDITED_PROBLEMS],
        problem_count=len(problems),
    )


def _same_outcome(live: Decision, shadow: Decision) -> bool:
    return live.effect == shadow.effect and live.rule == shadow.rule and live.grant == shadow.grant


def _describe_grant(decision: Decision) -> dict[str, object] | None:
    grant = decision.grant
    if grant is None:
        return None
    return {"audiences": list(grant.audiences), "ttl": grant.ttl, "claims": grant.claims}
