"""Real `retentive` processes on a free port: their environment, starting them, waiting until ready."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

from streams.connection import stop_embedded


def eventually(check: Callable[[], bool], timeout: float, what: str, every: float = 0.1) -> None:
    """Return once `check()` is true; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def service_env(data_dir: Path, **settings: object) -> dict[str, str]:
    """This process's environment with no Redis URL (so the embedded Redis under `data_dir` is used unless
    `redis_url` is given), offline, and each setting as `RETENTIVE_<NAME>`."""
    unset = ("REDIS_URL", "RETENTIVE_REDIS_URL")
    env = {name: value for name, value in os.environ.items() if name not in unset}
    env |= {"HF_HUB_OFFLINE": "1", "RETENTIVE_DATA_DIR": str(data_dir)}
    env |= {f"RETENTIVE_{name.upper()}": str(value) for name, value in settings.items()}
    return env


def wait_ready(base: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"serve exited: {process.stdout.read().decode()}")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise AssertionError("serve did not become ready in 120 s")


@contextlib.contextmanager
def serving(data_dir: Path, *args: str, **settings: object) -> Iterator[tuple[str, subprocess.Popen]]:
    """`retentive serve ARGS` on a free port until the block ends: its base URL and its process."""
    port = free_port()
    process = subprocess.Popen(
        ["retentive", "serve", *args],
        env=service_env(data_dir, port=port, **settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, process)
        yield base, process
    finally:
        process.terminate()
        process.wait(timeout=90)
        stop_embedded(data_dir)
