"""Redis as teams run it past one machine, from real `redis-server` processes on loopback: a primary with
its replica and three sentinels watching them, or a cluster of three primaries."""

from __future__ import annotations

import contextlib
import random
import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from bench.service import eventually, free_port

SERVICE = "retentive-primary"
needs_redis_binaries = pytest.mark.skipif(
    not (shutil.which("redis-server") and shutil.which("redis-cli")),
    reason="needs redis-server and redis-cli on the PATH to start real Sentinel and Cluster processes",
)


@dataclass
class SentinelGroup:
    primary: subprocess.Popen
    primary_port: int
    replica_port: int
    sentinel_ports: list[int]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def sentinel(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=2, decode_responses=True)

    def named_primary(self) -> int | None:
        """The port of the primary the first sentinel names now."""
        with contextlib.suppress(redis.RedisError):
            address = self.sentinel(self.sentinel_ports[0]).sentinel_get_master_addr_by_name(SERVICE)
            return int(address[1]) if address else None
        return None

    def ready(self) -> bool:
        """The replica is in sync and every sentinel knows it and the two other sentinels."""
        try:
            link = redis.Redis(port=self.replica_port).info("replication")["master_link_status"]
            if link != "up":
                return False
            for port in self.sentinel_ports:
                client = self.sentinel(port)
                if not client.sentinel_slaves(SERVICE) or len(client.sentinel_sentinels(SERVICE)) < 2:
                    return False
        except redis.RedisError:
            return False
        return True


def _server(directory: Path, port: int, *args: str) -> subprocess.Popen:
    directory.mkdir(parents=True)
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory)]
    command += ["--save", "", "--appendonly", "no", *args]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)


def _sentinel(directory: Path, port: int, primary_port: int) -> subprocess.Popen:
    directory.mkdir(parents=True)
    config = directory / "sentinel.conf"  # sentinels rewrite their own file as they learn
    config.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {directory}\n"
        f"sentinel monitor {SERVICE} 127.0.0.1 {primary_port} 2\n"
        f"sentinel down-after-milliseconds {SERVICE} 1000\n"
        f"sentinel failover-timeout {SERVICE} 10000\n"
    )
    return subprocess.Popen(
        ["redis-server", str(config), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )


@contextlib.contextmanager
def sentinel_group(directory: Path) -> Iterator[SentinelGroup]:
    """Start the group, wait until it could fail over, and stop every process at the end."""
    primary_port, replica_port = free_port(), free_port()
    processes = [_server(directory / "primary", primary_port)]
    processes.append(
        _server(directory / "replica", replica_port, "--replicaof", "127.0.0.1", str(primary_port))
    )
    sentinel_ports = [free_port() for _ in range(3)]
    for index, port in enumerate(sentinel_ports):
        processes.append(_sentinel(directory / f"sentinel-{index}", port, primary_port))
    group = SentinelGroup(processes[0], primary_port, replica_port, sentinel_ports)
    try:
        eventually(group.ready, 60, "the replica in sync and the sentinels aware of each other")
        yield group
    finally:
        _stop(processes)


@dataclass
class Cluster:
    ports: list[int]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def ok(self) -> bool:
        try:
            return all(
                redis.Redis(port=port, decode_responses=True).cluster("INFO")["cluster_state"] == "ok"
                for port in self.ports
            )
        except redis.RedisError:
            return False


@contextlib.contextmanager
def redis_cluster(directory: Path, primaries: int = 3) -> Iterator[Cluster]:
    """A cluster of `primaries` nodes, no replicas, made by `redis-cli --cluster create`; stopped after."""
    ports = [_cluster_port() for _ in range(primaries)]
    processes = [
        _server(
            directory / str(port), port, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"
        )
        for port in ports
    ]
    cluster = Cluster(ports)
    try:
        eventually(lambda: all(_answers(port) for port in ports), 30, "the cluster's nodes up")
        subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{port}" for port in ports), "--cluster-yes"],
            check=True,
            capture_output=True,
        )
        eventually(cluster.ok, 60, "every node to see the cluster whole")
        yield cluster
    finally:
        _stop(processes)


def _stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        process.kill()
        process.wait(timeout=10)


def _cluster_port() -> int:
    """A free port whose cluster bus port (10,000 above it) is free too: ephemeral ports are too high."""
    while True:
        port = random.randrange(20_000, 30_000)
        with contextlib.ExitStack() as bound:
            try:
                for candidate in (port, port + 10_000):
                    sock = bound.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return port


def _answers(port: int) -> bool:
    with contextlib.suppress(redis.RedisError):
        return bool(redis.Redis(port=port, socket_timeout=1).ping())
    return False
