"""gunicorn settings for `playback-gateway serve`.

Signing is CPU bound (about a quarter of a millisecond per RS256 signature), so the gateway runs
one sync-threaded worker per core: threads overlap Redis and network waits, processes use the
cores. gevent would block its event loop on every signature.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from gunicorn.glogging import Logger

from gateway.observability.logging import JsonFormatter, hash_identifier

bind = os.environ.get("GATEWAY_BIND", "127.0.0.1:8080")
workers = int(os.environ.get("GATEWAY_WORKERS", str(os.cpu_count() or 2)))
threads = int(os.environ.get("GATEWAY_THREADS", "4"))
worker_class = "gthread"
# A worker silent this long is restarted. Requests are milliseconds, so this only catches hangs.
timeout = 30
# Time for in-flight requests to finish after SIGTERM, inside Kubernetes' default 30 s grace period.
graceful_timeout = 20
keepalive = 5
max_requests = 0
limit_request_line = 4094
limit_request_fields = 100
limit_request_field_size = 8190
# The access log costs a formatted JSON line per request. Set GATEWAY_ACCESS_LOG=off where the
# ingress or load balancer already logs every request.
accesslog = None if os.environ.get("GATEWAY_ACCESS_LOG", "on").lower() in {"off", "false", "0"} else "-"
errorlog = "-"
# Several gunicorn processes of one user would otherwise share one control socket path.
control_socket_disable = True
wsgi_app = "gateway.wsgi:app"
# Build the app once in the master and fork it: a worker that replaces a crashed one starts from
# the validated state instead of re-reading policy or clients files that may be broken by now.
preload_app = True


class _AccessFormatter(logging.Formatter):
    """Render the access event dict prepared by JsonLogger.access: one json.dumps, no record walk."""

    def format(self, record: logging.LogRecord) -> str:
        entry = record.msg if isinstance(record.msg, dict) else {"event": "http.access"}
        return json.dumps(entry, separators=(",", ":"))


class JsonLogger(Logger):
    """gunicorn's error and access logs as JSON lines in the gateway's own format."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for handler in self.error_log.handlers:
            handler.setFormatter(JsonFormatter())
        for handler in self.access_log.handlers:
            handler.setFormatter(_AccessFormatter())

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> None:
        if not self.access_log_enabled:
            return
        request_id = None
        for name, value in getattr(resp, "headers", ()):
            if name.lower() == "x-request-id":
                request_id = value
                break
        status = str(resp.status).split(None, 1)[0]
        now = time.time()
        entry = {
            # The same fields and timestamp format as JsonFormatter's lines.
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z",
            "level": "info",
            "logger": "gunicorn.access",
            "event": "http.access",
            "pid": os.getpid(),
            "request_id": request_id,
            "method": environ.get("REQUEST_METHOD"),
            # The path only: query strings could carry tokens.
            "path": environ.get("PATH_INFO"),
            "status": int(status) if status.isdigit() else status,
            "duration_ms": round(request_time.total_seconds() * 1000, 3),
            "bytes": getattr(resp, "sent", None),
            "client": hash_identifier(environ.get("REMOTE_ADDR")),
            "user_agent": (environ.get("HTTP_USER_AGENT") or "")[:200],
        }
        self.access_log.info(entry)


logger_class = JsonLogger


def prepare_metrics_dir() -> str:
    """Point prometheus-client at an empty multiprocess directory; call before it is imported.

    Files left by an earlier run would add stale samples to the totals, so the directory is
    emptied. Without PROMETHEUS_MULTIPROC_DIR, a temporary directory is made and removed at exit.
    """
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        directory = tempfile.mkdtemp(prefix="playback-gateway-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
        # gunicorn skips on_exit when it fails to bind, so the temporary directory is also removed
        # at interpreter exit, by the process that made it only (workers inherit the handler).
        atexit.register(_remove_directory_of, os.getpid(), directory)
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink()
    return directory


def _remove_directory_of(owner_pid: int, directory: str) -> None:
    if os.getpid() == owner_pid:
        shutil.rmtree(directory, ignore_errors=True)


def on_starting(server: Any) -> None:
    """Empty the metrics directory once more: start-up checks in the master wrote samples there."""
    directory = prepare_metrics_dir()
    server.log.info("metrics directory ready", extra={"event": "gunicorn.metrics_dir", "path": directory})


_GUNICORN_ERROR_DETAILS = {
    400: "The HTTP request is malformed.",
    414: f"The request line is longer than {limit_request_line} bytes.",
    431: (f"The request headers are too large: send at most {limit_request_fields} headers of at most "
          f"{limit_request_field_size} bytes each."),
}


def write_problem_error(sock: Any, status: int, reason: str, message: str) -> None:
    """Write an error that gunicorn detects itself (bad request line, huge headers) as problem+json.

    gunicorn writes these before the app runs, as an HTML page.
    """
    from gunicorn.util import write_nonblock

    detail = _GUNICORN_ERROR_DETAILS.get(status, "The HTTP request could not be processed.")
    body = json.dumps({
        "type": f"https://playback-gateway.dev/problems/http-{status}",
        "title": reason,
        "status": status,
        "detail": detail,
    }).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/problem+json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode("latin-1")
    write_nonblock(sock, head + body)


def pre_fork(server: Any, worker: Any) -> None:
    """Stop background threads the master started while building the app, before any fork.

    The master serves nothing, and a thread holding a lock at the moment of a fork would leave
    that lock held forever in the worker. Each worker starts its own threads on first use.
    """
    app = getattr(server.app, "callable", None)
    gateway = getattr(app, "extensions", {}).get("gateway") if app is not None else None
    stop_watcher = getattr(getattr(gateway, "keys", None), "close", None)
    if stop_watcher is not None:
        stop_watcher()


def post_worker_init(worker: Any) -> None:
    """Publish this worker's gauges: a forked process starts with none of the master's samples."""
    import gunicorn.util

    from gateway.app import publish_state_metrics
    from gateway.observability.logging import log_event

    # NOTE: gunicorn offers no hook for the errors it writes itself, so its writer is replaced.
    # This relies on gunicorn.util.write_error(sock, status_int, reason, mesg), as in gunicorn 27.
    gunicorn.util.write_error = write_problem_error
    gateway = worker.wsgi.extensions["gateway"]
    publish_state_metrics(gateway)
    # An idle worker also follows edits of the clients file, not only one that gets requests.
    gateway.clients.start_reload_thread()
    log_event(logging.getLogger("gateway"), "worker.started")


def child_exit(server: Any, worker: Any) -> None:
    """Drop a dead worker's live gauges so they stop counting in the totals."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server: Any) -> None:
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
    if Path(directory).name.startswith("playback-gateway-metrics-"):
        shutil.rmtree(directory, ignore_errors=True)
