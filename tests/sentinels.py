"""A Redis primary, its replica and three sentinels watching them: real `redis-server` processes on loopback,
for tests that fail the primary over."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import redis

from bench.service import eventually, free_port

SERVICE = "retentive-primary"


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
        for process in processes:
            process.kill()
            process.wait(timeout=10)
