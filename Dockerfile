# syntax=docker/dockerfile:1
# Image of the playback token gateway: gunicorn serving the Flask app as a non-root user.
# Build: docker build -t playback-gateway:0.1.0 .   (BuildKit is needed for RUN --mount)

# Stage 1: build wheels for the gateway and every dependency, so the final stage needs no
# compiler and no network access to the project's source tree.
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN pip wheel --wheel-dir /wheels .

# Stage 2: a virtual environment installed from those wheels only.
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    GATEWAY_POLICY_PATH=/app/policies \
    GATEWAY_DATA_DIR=/var/lib/playback-gateway \
    PROMETHEUS_MULTIPROC_DIR=/tmp/prometheus

# --no-index keeps the install to the wheels built above.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --no-index --find-links=/wheels /wheels/playback_gateway-*.whl

# A fixed numeric UID lets Kubernetes check runAsNonRoot without a runAsUser.
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin gateway \
    && mkdir -p /var/lib/playback-gateway /tmp/prometheus \
    && chown gateway:gateway /var/lib/playback-gateway /tmp/prometheus \
    && chmod 0700 /var/lib/playback-gateway

WORKDIR /app
COPY policies/ /app/policies/

USER 10001:10001
EXPOSE 8080

# The slim image has no curl, so the probe uses Python; urlopen raises on any non-2xx status.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=3)"]

ENTRYPOINT ["playback-gateway"]
CMD ["serve", "--bind", "0.0.0.0:8080"]
