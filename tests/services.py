"""Real `retentive` processes for end-to-end tests: their environment, a free port, waiting until ready."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from streams.connection import stop_embedded


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
            output = process.stdout.read().decode() if process.stdout else "see its log"
            raise AssertionError(f"serve exited: {output}")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise AssertionError("serve did not become ready in 120 s")


@contextlib.contextmanager
def serving(data_dir: Path, *args: str, **settings: object) -> Iterator[tuple[str, subprocess.Popen]]:
    """`retentive serve ARGS` on a free port until the block ends: its base URL and its process.

    Its output goes to `data_dir/logs/serve.log`: a pipe nobody reads would fill up with the access log and
    stall the server."""
    port = free_port()
    log_path = data_dir / "logs" / "serve.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            ["retentive", "serve", *args],
            env=service_env(data_dir, port=port, **settings),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_ready(base, process)
        except AssertionError as err:
            raise AssertionError(f"{err}: {log_path.read_text()[-2000:]}") from None
        yield base, process
    finally:
        process.terminate()
        process.wait(timeout=90)
        stop_embedded(data_dir)
