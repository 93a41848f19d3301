"""`retentive serve` as a real uvicorn process on the default model and the embedded Redis."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from streams.connection import stop_embedded


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "RETENTIVE_DATA_DIR": str(tmp_path),
        "RETENTIVE_PORT": str(port),
    }
    env.pop("REDIS_URL", None)
    env.pop("RETENTIVE_REDIS_URL", None)
    process = subprocess.Popen(
        ["retentive", "serve"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, process)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)
        stop_embedded(tmp_path)


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


def test_serve_starts_with_embedded_redis_and_reports_ready(served: str, tmp_path: Path) -> None:
    assert httpx.get(f"{served}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{served}/readyz").json()
    assert ready["status"] == "ready"
    assert (tmp_path / "redis" / "appendonly.aof").exists()
