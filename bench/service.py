"""Real `retentive` processes on a free port: their environment, one service or a learner with API replicas,
and waiting until they are ready."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from learner.encoder import tiny_bert
from streams.connection import connect, stop_embedded

# A learner that trains, snapshots and publishes within about a second, for tests that wait on it.
QUICK_LEARNER: dict[str, object] = {
    "batch_size": 8,
    "batch_wait_s": 0.2,
    "snapshot_every": 4,
    "snapshot_every_s": 1,
    "publish_every_s": 0.5,
    "lr": 1e-3,
    "lease_ttl_ms": 2000,
}


def eventually(check: Callable[[], bool], timeout: float, what: str, every: float = 0.1) -> None:
    """Return once `check()` is true; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def metric_sample(exposition: str, name: str, **labels: str) -> float:
    """One sample's value from a `/metrics` page."""
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    raise AssertionError(f"no sample {name}{labels or ''} on the metrics page")


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


def save_tiny_model(directory: Path) -> str:
    """The tiny test model saved as a model directory that `RETENTIVE_MODEL` can name."""
    tokenizer, encoder = tiny_bert(seed=0)
    tokenizer.save_pretrained(directory)
    encoder.save_pretrained(directory)
    return str(directory)


def serve_log(data_dir: Path) -> Path:
    """Where `serving` writes the output of the service (API and learner child) started on `data_dir`."""
    return data_dir / "logs" / "serve.log"


@contextlib.contextmanager
def serving(
    data_dir: Path, *args: str, environ: dict[str, str] | None = None, **settings: object
) -> Iterator[tuple[str, subprocess.Popen]]:
    """`retentive serve ARGS` on a free port until the block ends: its base URL and its process; `environ`
    adds variables that are not settings (such as `LD_PRELOAD`).

    Its output goes to `serve_log(data_dir)`: a pipe nobody reads would fill up with the access log and
    stall the server."""
    port = free_port()
    log_path = serve_log(data_dir)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            ["retentive", "serve", *args],
            env=service_env(data_dir, port=port, **settings) | (environ or {}),
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


@contextlib.contextmanager
def learner_and_replicas(data_dir: Path, replicas: int, **settings: object) -> Iterator[list[str]]:
    """One `retentive learn` and `replicas` x `retentive serve --no-learner`, all with `settings` and sharing
    `data_dir` (and its embedded Redis unless `redis_url` is given), until the block ends: the replicas' base
    URLs. Each process logs to `data_dir/logs/`. Once they stop, the keys under `key_prefix` are deleted."""
    env = service_env(data_dir, **settings)
    logs = data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)

    def start(name: str, command: list[str], **extra: str) -> subprocess.Popen:
        with (logs / f"{name}.log").open("wb") as log:
            return subprocess.Popen(command, env={**env, **extra}, stdout=log, stderr=subprocess.STDOUT)

    processes = [start("learner", ["retentive", "learn"])]
    bases = []
    try:
        for index in range(replicas):
            port = free_port()
            processes.append(
                start(f"replica-{index}", ["retentive", "serve", "--no-learner"], RETENTIVE_PORT=str(port))
            )
            bases.append(f"http://127.0.0.1:{port}")
            try:
                wait_ready(bases[-1], processes[-1])
            except AssertionError as err:
                raise AssertionError(
                    f"{err}: {(logs / f'replica-{index}.log').read_text()[-2000:]}"
                ) from None
        yield bases
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=60)
        if "key_prefix" in settings:
            client = connect(str(settings.get("redis_url", "")), data_dir)
            for key in client.scan_iter(match=f"{settings['key_prefix']}*"):
                client.delete(key)
            client.close()
        stop_embedded(data_dir)
