"""Redis clients from GATEWAY_REDIS_URL: plain, TLS, Sentinel or Cluster, with short timeouts.

Redis accelerates the gateway but must never stall it, so every call times out quickly. Callers
decide per use what a failure means: the token cache and rate limiter let requests through, while
key rotation does not run without its lock.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry
from redis.sentinel import Sentinel

# Long enough for a round trip across a zone, short enough that a dead Redis costs little.
SOCKET_TIMEOUT_SECONDS = 0.25
CONNECT_TIMEOUT_SECONDS = 0.25

# Errors that mean "Redis is unavailable right now", as opposed to a bug in the caller.
REDIS_ERRORS: tuple[type[Exception], ...] = (redis.RedisError, OSError)


def connect(url: str, *, socket_timeout: float = SOCKET_TIMEOUT_SECONDS) -> Any:
    """Return a Redis client for `url` (redis://, rediss://, unix://, redis+sentinel://, redis+cluster://).

    Sentinel URLs look like `redis+sentinel://[:password@]host1:26379,host2:26379/service/db`.
    Connection is lazy: a Redis that is down now is only noticed by the first command.
    """
    options: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": CONNECT_TIMEOUT_SECONDS,
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": 15,
    }
    scheme = urlparse(url).scheme

    if scheme == "redis+cluster":
        cluster_url = "redis" + url[len("redis+cluster") :]
        return RedisCluster.from_url(
            cluster_url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
        )
    if scheme == "redis+sentinel":
        return _sentinel_master(url, options)
    return redis.Redis.from_url(url, **options)


def _sentinel_master(url: str, options: dict[str, Any]) -> Any:
    parsed = urlparse(url)
    hosts_part = parsed.netloc.rsplit("@", 1)[-1]
    hosts = []
    for item in hosts_part.split(","):
        host, _, port = item.partition(":")
        hosts.append((host, int(port or 26379)))

    path = [part for part in parsed.path.split("/") if part]
    if not path:
        raise ValueError("a redis+sentinel:// URL needs the master's service name as its path")
    service, db = path[0], int(path[1]) if len(path) > 1 else 0
    password = unquote(parsed.password) if parsed.password else None

    query = parse_qs(parsed.query)
    sentinel_kwargs = {"password": query["sentinel_password"][0]} if "sentinel_password" in query else {}
    sentinel = Sentinel(hosts, sentinel_kwargs=sentinel_kwargs, **options)
    return sentinel.master_for(service, db=db, password=password, **options)
