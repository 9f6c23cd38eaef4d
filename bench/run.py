"""Measure the gateway against a bare RS256 signing endpoint with wrk, in one run.

Both servers run under gunicorn with the same workers and threads on this machine. The script
prints a Markdown table of requests per second, latency and worker memory, with each gateway
figure as a ratio to the bare endpoint, and writes the raw figures to bench/results/.

Usage: python bench/run.py [--duration SECONDS] [--connections N] [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
sys.path.insert(0, str(ROOT))

from gateway.keys.material import generate_rsa_key, pkcs1_pem  # noqa: E402
from tests.support.redis_server import RedisServer, free_port  # noqa: E402


@dataclass
class Result:
    name: str
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    worker_rss_mib: float
    cpu_us_per_request: float


def _wait_healthy(url: str, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            requests.get(url, timeout=0.5)
            return
        except requests.RequestException:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not respond within {timeout} s")


def _children(pid: int) -> list[Path]:
    """Return the /proc folders of a gunicorn master's workers."""
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        if re.search(rf"^PPid:\s+{pid}$", text, re.MULTILINE):
            found.append(status.parent)
    return found


def _cpu_seconds(pid: int) -> float:
    """Return the user plus system CPU time of a master and its workers, in seconds.

    CPU time per request does not depend on what else the machine runs, unlike requests per
    second, so it is the steadier figure on a shared or noisy machine.
    """
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for folder in [Path(f"/proc/{pid}"), *_children(pid)]:
        try:
            fields = (folder / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / ticks


def _children_rss_mib(pid: int) -> float:
    """Sum the resident memory of a gunicorn master's workers, from /proc."""
    total_kib = 0
    for folder in _children(pid):
        match = re.search(r"^VmRSS:\s+(\d+) kB", (folder / "status").read_text(), re.MULTILINE)
        total_kib += int(match.group(1)) if match else 0
    return round(total_kib / 1024, 1)


def _wrk(url: str, script: Path, duration: int, connections: int) -> tuple[float, float, float, int, int]:
    output = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(script), url],
        check=True, capture_output=True, text=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    non_2xx_match = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    non_2xx = int(non_2xx_match.group(1)) if non_2xx_match else 0
    total = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    return rps, _percentile(output, "50%"), _percentile(output, "99%"), non_2xx, total


def _percentile(output: str, label: str) -> float:
    match = re.search(rf"^\s+{re.escape(label)}\s+([\d.]+)(us|ms|s)$", output, re.MULTILINE)
    if match is None:
        return float("nan")
    value, unit = float(match.group(1)), match.group(2)
    if unit == "us":
        value /= 1000
    elif unit == "s":
        value *= 1000
    return round(value, 3)


class Server:
    """A gunicorn process started for one measurement."""

    def __init__(self, command: list[str], env: dict[str, str], health_path: str) -> None:
        self.port = free_port()
        self.command = [part.replace("{port}", str(self.port)) for part in command]
        self.env = env
        self.health_path = health_path
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Server:
        self.process = subprocess.Popen(self.command, env=self.env, cwd=ROOT,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_healthy(f"http://127.0.0.1:{self.port}{self.health_path}", self.process)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections")
    parser.add_argument("--rounds", type=int, default=2, help="measurements per case; the best is kept")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()

    if shutil.which("wrk") is None:
        print("wrk is missing: install it with apt-get install wrk", file=sys.stderr)
        return 1

    work = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    key_file = work / "key.pem"
    key_file.write_bytes(pkcs1_pem(generate_rsa_key()))
    redis = RedisServer(work)
    redis.start()

    base_env = {key: value for key, value in os.environ.items() if not key.startswith(("GATEWAY_", "MUX_"))}
    gunicorn = str(Path(sys.executable).with_name("gunicorn"))
    bare_command = [gunicorn, "--bind", "127.0.0.1:{port}", "--workers", str(args.workers), "--threads",
                    str(args.threads), "--worker-class", "gthread", "--no-control-socket", "bench.bare_app:app"]
    gateway_command = [sys.executable, "-m", "gateway.cli", "serve", "--bind", "127.0.0.1:{port}",
                       "--workers", str(args.workers), "--threads", str(args.threads)]
    gateway_env = {
        **base_env,
        "MUX_SIGNING_KEY": "benchKey",
        "MUX_PRIVATE_KEY": key_file.read_text(),
        "GATEWAY_POLICY_PATH": str(BENCH / "policy.yaml"),
        "GATEWAY_DATA_DIR": str(work / "data"),
        "PROMETHEUS_MULTIPROC_DIR": str(work / "metrics"),
        "GATEWAY_LOG_LEVEL": "WARNING",
    }

    cases = [
        ("bare RS256 endpoint", bare_command, {**base_env, "BENCH_KEY_FILE": str(key_file)}, "/sign", "random_id.lua"),
        ("gateway miss, in-process cache", gateway_command, gateway_env, "/v1/tokens", "random_id.lua"),
        ("gateway miss, in-process cache, no access log", gateway_command,
         {**gateway_env, "GATEWAY_ACCESS_LOG": "off"}, "/v1/tokens", "random_id.lua"),
        ("gateway hit, in-process cache", gateway_command, gateway_env, "/v1/tokens", "same_id.lua"),
        ("gateway miss, Redis cache", gateway_command, {**gateway_env, "GATEWAY_REDIS_URL": redis.url},
         "/v1/tokens", "random_id.lua"),
        ("gateway hit, Redis cache", gateway_command, {**gateway_env, "GATEWAY_REDIS_URL": redis.url},
         "/v1/tokens", "same_id.lua"),
    ]

    results: list[Result] = []
    try:
        for name, command, env, path, script in cases:
            best: Result | None = None
            for _ in range(args.rounds):
                with Server(command, env, "/healthz" if path != "/sign" else "/") as server:
                    url = f"http://127.0.0.1:{server.port}{path}"
                    _wrk(url, BENCH / script, 2, args.connections)  # warm-up: first requests, cache fill
                    assert server.process is not None
                    cpu_before = _cpu_seconds(server.process.pid)
                    rps, p50, p99, non_2xx, total = _wrk(url, BENCH / script, args.duration, args.connections)
                    cpu_us = round((_cpu_seconds(server.process.pid) - cpu_before) / total * 1e6, 1)
                    rss = _children_rss_mib(server.process.pid)
                candidate = Result(name, round(rps, 1), p50, p99, non_2xx, rss, cpu_us)
                if best is None or candidate.requests_per_second > best.requests_per_second:
                    best = candidate
            assert best is not None
            results.append(best)
            print(f"measured {name}: {best.requests_per_second} req/s", file=sys.stderr)
    finally:
        redis.stop()
        shutil.rmtree(work, ignore_errors=True)

    _report(results, args)
    return 0


def _report(results: list[Result], args: argparse.Namespace) -> None:
    baseline = results[0].requests_per_second
    print(f"\nwrk -t2 -c{args.connections} -d{args.duration}s, gunicorn {args.workers} workers x "
          f"{args.threads} threads, best of {args.rounds}, {os.cpu_count()} CPUs\n")
    base_cpu = results[0].cpu_us_per_request
    print("| case | req/s | ratio to bare | server CPU µs/req | CPU ratio (bare / case) | p50 ms | p99 ms "
          "| non-2xx | worker RSS MiB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for result in results:
        ratio = result.requests_per_second / baseline if baseline else float("nan")
        cpu_ratio = base_cpu / result.cpu_us_per_request if result.cpu_us_per_request else float("nan")
        print(f"| {result.name} | {result.requests_per_second:.0f} | {ratio:.2f} | {result.cpu_us_per_request} | "
              f"{cpu_ratio:.2f} | {result.p50_ms} | {result.p99_ms} | {result.non_2xx} | {result.worker_rss_mib} |")

    out_dir = BENCH / "results"
    out_dir.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    (out_dir / f"wrk-{stamp}.json").write_text(json.dumps([asdict(r) for r in results], indent=2))


if __name__ == "__main__":
    raise SystemExit(main())
