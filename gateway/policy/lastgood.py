"""A copy of the last valid version of watched files, shared by gunicorn workers via the data directory.

A worker that rejects a broken file keeps the version it runs, and that may be older than the
version another worker loaded just before the file broke. The copy lets such a worker move to
the last valid version instead, so all workers converge. The policy store keeps one copy per
policy role (`live`, `shadow`) and the clients registry one for the clients file.

Layout of one copy's folder: `.lock` for flock, `current/meta.json` with the version, the source
path and the original file names, and `current/0000`, `0001`, ... with each file's bytes in load
order. Writers take the lock exclusively and readers shared, so
a reader never sees a half-replaced copy.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from gateway.observability.logging import log_event

logger = logging.getLogger(__name__)

# Writers hold the lock for a few file writes, so a longer wait means a stuck process.
LOCK_TIMEOUT_SECONDS = 2.0
_LOCK_POLL_SECONDS = 0.01
_META_FILE = "meta.json"


class LastGoodError(OSError):
    """The shared copy could not be locked, read or written."""


@dataclass(frozen=True)
class LastGoodFiles:
    """The shared copy: its version, the path it came from and its files' bytes in order."""

    version: str
    path: str
    sources: tuple[tuple[str, bytes], ...]


# The policy store's name for the shared copy, kept for its callers.
LastGoodPolicy = LastGoodFiles


class LastGoodCopy:
    """The shared copy under `directory`. `kind` names the files in log events and errors."""

    def __init__(self, directory: Path, kind: str = "policy") -> None:
        self.directory = directory
        self.kind = kind

    def read_version(self, path: Path) -> str | None:
        """Return the version of the copy made from `path`, or None when there is no such copy."""
        with self._locked(fcntl.LOCK_SH):
            meta = self._read_meta()
        if meta is None or meta.get("path") != str(path):
            return None
        version = meta.get("version")
        return version if isinstance(version, str) else None

    def read(self, path: Path) -> LastGoodFiles | None:
        """Return the copy made from `path`, or None when there is none. Raises LastGoodError."""
        with self._locked(fcntl.LOCK_SH):
            meta = self._read_meta()
            if meta is None or meta.get("path") != str(path):
                return None
            names = meta.get("files")
            version = meta.get("version")
            if not isinstance(names, list) or not isinstance(version, str):
                raise LastGoodError(f"{self._current / _META_FILE} is invalid; delete {self._current} to start over")
            try:
                sources = tuple(
                    (str(name), (self._current / f"{index:04d}").read_bytes()) for index, name in enumerate(names)
                )
            except OSError as error:
                raise LastGoodError(f"failed to read the {self.kind} copy in {self._current}: {error}") from None
        return LastGoodFiles(version=version, path=str(path), sources=sources)

    def write_if_current(self, copy: LastGoodFiles, is_current: Callable[[], bool]) -> bool:
        """Replace the copy with `copy` if `is_current()` is still true under the lock.

        `is_current` checks that the source files still contain what `copy` was loaded from. Without
        that check, a worker that loaded a version just before a newer one was written could
        replace the newer copy with its older one. Returns whether the copy was written.
        Raises LastGoodError.
        """
        with self._locked(fcntl.LOCK_EX):
            if not is_current():
                return False
            meta = self._read_meta()
            if meta is not None and meta.get("version") == copy.version and meta.get("path") == copy.path:
                return False
            self._replace(copy)
        log_event(logger, f"{self.kind}.last_good_written", directory=str(self.directory), version=copy.version)
        return True

    @property
    def _current(self) -> Path:
        return self.directory / "current"

    def _read_meta(self) -> dict[str, object] | None:
        try:
            meta = json.loads((self._current / _META_FILE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            raise LastGoodError(f"failed to read {self._current / _META_FILE}: {error}") from None
        return meta if isinstance(meta, dict) else None

    def _replace(self, copy: LastGoodFiles) -> None:
        # Leftovers of a writer that died mid-way are safe to remove: every writer holds the lock.
        for leftover in self.directory.glob(".staging-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        staging = self.directory / f".staging-{os.getpid()}"
        retired = self.directory / f".staging-{os.getpid()}-retired"
        try:
            staging.mkdir()
            for index, (_, data) in enumerate(copy.sources):
                (staging / f"{index:04d}").write_bytes(data)
            meta = {"version": copy.version, "path": copy.path, "files": [name for name, _ in copy.sources]}
            (staging / _META_FILE).write_text(json.dumps(meta), encoding="utf-8")

            if self._current.exists():
                self._current.rename(retired)
            staging.rename(self._current)
        except OSError as error:
            raise LastGoodError(f"failed to write the {self.kind} copy in {self.directory}: {error}") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            shutil.rmtree(retired, ignore_errors=True)

    @contextmanager
    def _locked(self, operation: int) -> Iterator[None]:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as error:
            raise LastGoodError(f"failed to open the lock file in {self.directory}: {error}") from None
        try:
            _acquire(descriptor, operation, self.directory)
            yield
        finally:
            os.close(descriptor)


def _acquire(descriptor: int, operation: int, directory: Path) -> None:
    deadline = time.monotonic() + LOCK_TIMEOUT_SECONDS
    while True:
        try:
            fcntl.flock(descriptor, operation | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise LastGoodError(
                    f"timed out after {LOCK_TIMEOUT_SECONDS} s waiting for the lock in {directory}"
                ) from None
            time.sleep(_LOCK_POLL_SECONDS)
