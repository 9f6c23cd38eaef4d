"""A per-process background thread that calls an owner's `maybe_reload()` at a fixed interval."""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Protocol

from gateway.observability.logging import log_event

logger = logging.getLogger(__name__)


class Reloadable(Protocol):
    def maybe_reload(self) -> bool: ...


class ReloadThread:
    """A daemon thread, one per process, that calls `owner.maybe_reload()` every `interval` seconds.

    gunicorn forks its workers from the master, and a thread does not survive a fork, so the thread
    starts on first use in each process. It holds the owner weakly and ends once the owner is
    garbage-collected.
    """

    def __init__(
        self, owner: Reloadable, *, name: str, interval: float, failure_event: str, enabled: bool = True
    ) -> None:
        self._owner_ref = weakref.ref(owner)
        self._name = name
        self._interval = interval
        self._failure_event = failure_event
        self._enabled = enabled
        self._created_pid = os.getpid()
        self._started_pid: int | None = None
        self._start_lock = threading.Lock()

    @property
    def in_forked_process(self) -> bool:
        """Whether this process is a fork of the one that created the owner."""
        return os.getpid() != self._created_pid

    def ensure_started(self, on_new_process: Callable[[], None]) -> None:
        """Start the thread in this process unless it runs already.

        Before a start in a forked process, `on_new_process` runs: a thread of the parent may have
        held one of the owner's locks at the moment of the fork, and nothing in this process would
        ever release it, so the owner replaces its locks there.
        """
        pid = os.getpid()
        if not self._enabled or self._started_pid == pid:
            return
        with self._start_lock:
            if self._started_pid == pid:
                return
            if pid != self._created_pid or self._started_pid is not None:
                on_new_process()
            threading.Thread(target=self._run, name=self._name, daemon=True).start()
            self._started_pid = pid

    def _run(self) -> None:
        while True:
            time.sleep(self._interval)
            owner = self._owner_ref()
            if owner is None:
                return
            try:
                owner.maybe_reload()
            except Exception as error:  # noqa: BLE001 - the thread must keep running for later changes
                log_event(logger, self._failure_event, logging.ERROR, error_type=type(error).__name__,
                          error=str(error)[:300])
            del owner
