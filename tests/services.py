"""Real `retentive` processes for end-to-end tests: their environment, a free port, waiting until ready, and a
first snapshot for an API replica to serve."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from app.settings import Settings
from learner.encoder import load_encoder
from learner.online import Example, LearnerConfig, OnlineLearner
from learner.snapshots import SnapshotStore
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


def wait_ready(base: str, process: subprocess.Popen, log: Path | None = None) -> None:
    """Wait for `/readyz`; if the process exits first, fail with its output (its pipe, or the `log` file)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = log.read_text() if log else process.stdout.read().decode()
            raise AssertionError(f"serve exited: {output}")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise AssertionError("serve did not become ready in 120 s")


def serve_log(data_dir: Path) -> Path:
    """Where `serving` writes the output of the service (API and learner child) started on `data_dir`."""
    return data_dir / "serve.log"


@contextlib.contextmanager
def serving(data_dir: Path, *args: str, **settings: object) -> Iterator[tuple[str, subprocess.Popen]]:
    """`retentive serve ARGS` on a free port until the block ends: its base URL and its process.

    Its output goes to `serve_log(data_dir)`, a file rather than a pipe, so a long run never blocks on a
    full pipe nobody reads.
    """
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log = serve_log(data_dir)
    with log.open("ab") as output:
        process = subprocess.Popen(
            ["retentive", "serve", *args],
            env=service_env(data_dir, port=port, **settings),
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, process, log)
        yield base, process
    finally:
        process.terminate()
        process.wait(timeout=90)
        stop_embedded(data_dir)


def write_snapshot(settings: Settings) -> str:
    """A snapshot that knows two labels, as a learner would have left it, so predictions answer 200."""
    tokenizer, encoder = load_encoder(settings.model)
    learner = OnlineLearner(tokenizer, encoder, LearnerConfig(probe_fraction=0.0))
    learner.learn([Example("the match ended in a draw", "sport"), Example("rates rose again", "business")])
    return learner.save(SnapshotStore(settings.snapshot_dir)).id
