"""Headless Chromium that loads one page, runs its scripts and returns the resulting DOM."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
# Virtual time runs the page's timers at once but waits for pending network requests.
VIRTUAL_TIME_BUDGET_MS = 5000


def chromium_path() -> str | None:
    """Return Debian's chromium binary, or None when it is not installed."""
    return CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")


def dump_dom(binary: str, url: str, profile_dir: Path, timeout: float = 20.0) -> str:
    """Load `url` in a fresh profile and return the serialized DOM after its scripts ran.

    Every host name resolves to nothing except 127.0.0.1, and background services (updates,
    sync, safe browsing lists) are off, so the browser reaches only the servers of the test.
    """
    command = [
        binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-proxy-server", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        f"--user-data-dir={profile_dir}", f"--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}",
        "--dump-dom", url,
    ]
    completed = subprocess.run(command, capture_output=True, timeout=timeout, check=False)
    if completed.returncode != 0:
        stderr = completed.stderr.decode(errors="replace")[-2000:]
        raise RuntimeError(f"chromium exited with {completed.returncode}:\n{stderr}")
    return completed.stdout.decode("utf-8", errors="replace")
