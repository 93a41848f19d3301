"""One way to get a Redis client: the server at a URL, the primary that Sentinel names, or the embedded one
under the data directory.

A Sentinel URL is `redis+sentinel://[user:password@]host:port[,host:port...]/service[/db]`: the sentinels'
addresses, the name they monitor the primary under, and the database. The client asks the sentinels for
the current primary on every new connection, so after a fail-over it follows the promoted replica once its
retries reconnect. Replication is asynchronous: what the old primary acknowledged and had not yet sent to
the replica is lost with it (docs/scaling.md says how much, measured).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry
from redis.sentinel import Sentinel

from streams.embedded import EmbeddedRedis, EmbeddedRedisError
from streams.replies import as_text

# Ride out a Redis restart or failover of a few seconds before reporting the server as gone.
_RETRY = Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=6)
_RETRY_ON = [redis.ConnectionError, redis.TimeoutError]
SENTINEL_SCHEME = "redis+sentinel"
CLUSTER_SCHEME = "redis+cluster"


class RedisUnavailableError(RuntimeError):
    """No Redis server answered."""


def redacted(url: str) -> str:
    """`url` with any password replaced by `***`, for logs, errors and reports."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = f"{parts.username}:" if parts.username else ":"
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}***@{host}"))


def embedded_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "redis"


def connect(redis_url: str, data_dir: Path) -> redis.Redis:
    """A checked client for `redis_url`, or for the embedded server under `data_dir` when it is empty."""
    scheme = urlsplit(redis_url).scheme
    if scheme == SENTINEL_SCHEME:
        client = _sentinel_primary(redis_url)
        where = f"the primary Sentinel names at {redacted(redis_url)}"
    elif scheme == CLUSTER_SCHEME:
        client = _cluster(redis_url)
        where = f"the Redis Cluster at {redacted(redis_url)}"
    elif redis_url:
        client = redis.Redis.from_url(redis_url, **_CLIENT_OPTIONS)
        where = redacted(redis_url)
    else:
        server = _embedded(data_dir)
        _checked(server, server.start)
        client = server.client(retry=_RETRY, retry_on_error=_RETRY_ON, health_check_interval=30)
        where = f"embedded Redis at {server.socket_path}"
    try:
        client.ping()
    except redis.RedisError as err:
        raise RedisUnavailableError(f"cannot reach {where}: {err}") from err
    return client


_CLIENT_OPTIONS: dict = {
    "retry": _RETRY,
    "retry_on_error": _RETRY_ON,
    "socket_connect_timeout": 5,
    "health_check_interval": 30,
}


def parse_sentinel_url(url: str) -> tuple[list[tuple[str, int]], str, int]:
    """The sentinels' addresses, the monitored service's name and the database of a Sentinel URL;
    ValueError saying what is wrong otherwise."""
    parts = urlsplit(url)
    hosts = parts.netloc.rpartition("@")[2]
    path = [segment for segment in parts.path.split("/") if segment]
    form = f"{SENTINEL_SCHEME}://host:port[,host:port...]/service[/db]"
    if not hosts or not 1 <= len(path) <= 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError(f"{redacted(url)} is not a Sentinel URL of the form {form}")
    sentinels = [_address(url, address, form) for address in hosts.split(",")]
    return sentinels, path[0], int(path[1]) if len(path) == 2 else 0


def parse_cluster_url(url: str) -> list[tuple[str, int]]:
    """The addresses of a Cluster URL's startup nodes; ValueError saying what is wrong otherwise."""
    parts = urlsplit(url)
    form = f"{CLUSTER_SCHEME}://host:port[,host:port...]"
    hosts = parts.netloc.rpartition("@")[2]
    if not hosts or parts.path.strip("/"):
        raise ValueError(
            f"{redacted(url)} is not a Cluster URL of the form {form} (a cluster has one database)"
        )
    return [_address(url, address, form) for address in hosts.split(",")]


def _address(url: str, address: str, form: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"{redacted(url)}: {address!r} is not host:port ({form})")
    return host.strip("[]"), int(port)


def _cluster(url: str) -> redis.Redis:
    parts = urlsplit(url)
    nodes = [ClusterNode(host, port) for host, port in parse_cluster_url(url)]
    # A model's keys share one hash tag (streams.keys): its scripts and transactions run on one slot.
    return RedisCluster(
        startup_nodes=nodes,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        retry=_RETRY,
        socket_connect_timeout=5,
    )


def _sentinel_primary(url: str) -> redis.Redis:
    sentinels, service, db = parse_sentinel_url(url)
    parts = urlsplit(url)
    auth = {
        "username": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password else None,
    }
    # The sentinels are asked without the primary's password (Sentinel has its own, rarely set).
    sentinel = Sentinel(sentinels, socket_timeout=5, socket_connect_timeout=5)
    return sentinel.master_for(service, db=db, **auth, **_CLIENT_OPTIONS)


@contextlib.contextmanager
def embedded_server(redis_url: str, data_dir: Path) -> Iterator[EmbeddedRedis | None]:
    """The embedded Redis for the life of a command: started (or adopted from a dead owner) on the way in,
    stopped on the way out if this process owns it. None when `redis_url` names a server."""
    if redis_url:
        yield None
        return
    server = _embedded(data_dir)
    _checked(server, server.acquire)
    try:
        yield server
    finally:
        server.release()


def _embedded(data_dir: Path) -> EmbeddedRedis:
    try:
        return EmbeddedRedis(embedded_dir(data_dir))
    except EmbeddedRedisError as err:
        raise RedisUnavailableError(f"embedded Redis under {embedded_dir(data_dir)}: {err}") from err


def _checked(server: EmbeddedRedis, start: Callable[[], bool]) -> None:
    try:
        start()
    except (EmbeddedRedisError, OSError) as err:
        raise RedisUnavailableError(f"embedded Redis under {server.directory}: {err}") from err


def release_embedded(data_dir: Path, heir_of: int) -> None:
    """Stop the embedded server under `data_dir` if it belonged to `heir_of`, a process known to be gone."""
    EmbeddedRedis(embedded_dir(data_dir)).release(heir_of=heir_of)


def stop_embedded(data_dir: Path) -> None:
    EmbeddedRedis(embedded_dir(data_dir)).stop()


def server_version(client: redis.Redis) -> str:
    return str(client.info("server")["redis_version"])


def durability_warnings(client: redis.Redis) -> list[str]:
    """What in the server's configuration can drop accepted feedback, each with the setting that fixes it."""
    config: dict[str, str] = {}
    try:
        # One name per call: Redis before 7 reads a single pattern.
        for name in ("maxmemory-policy", "appendonly", "save"):
            config |= {as_text(key): as_text(value) for key, value in client.config_get(name).items()}
    except redis.ResponseError:
        return [
            "CONFIG GET is not allowed on this server: check yourself that maxmemory-policy is noeviction "
            "and that it persists (appendonly yes)"
        ]
    warnings = []
    policy = config.get("maxmemory-policy", "noeviction")
    if policy != "noeviction":
        warnings.append(
            f"maxmemory-policy is {policy}: when memory runs out Redis may evict accepted feedback or the "
            "model's pointers; set maxmemory-policy noeviction"
        )
    if config.get("appendonly") != "yes" and not config.get("save"):
        warnings.append(
            'no persistence (appendonly no, save ""): a Redis restart loses every accepted entry not yet '
            "in a snapshot; set appendonly yes"
        )
    return warnings
