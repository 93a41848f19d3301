"""`retentive serve` as a real uvicorn process on the embedded Redis, and the learner child it runs."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from bench.service import eventually, serving


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    with serving(tmp_path) as (base, _):
        yield base


def test_serve_starts_with_embedded_redis_and_reports_ready(served: str, tmp_path: Path) -> None:
    assert httpx.get(f"{served}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{served}/readyz").json()
    assert ready["status"] == "ready"
    assert (tmp_path / "redis" / "appendonly.aof").exists()


def learner_child(serve: subprocess.Popen) -> psutil.Process:
    eventually(lambda: len(psutil.Process(serve.pid).children()) == 1, 60, "the learner child to start")
    [child] = psutil.Process(serve.pid).children()
    return child


def test_stopping_serve_stops_its_learner_child(tmp_path: Path, tiny_model_dir: Path) -> None:
    with serving(tmp_path, model=tiny_model_dir) as (_, process):
        child = learner_child(process)
        process.terminate()
        assert process.wait(timeout=60) == 0
        child.wait(timeout=5)


def test_a_killed_serve_leaves_no_learner_behind(tmp_path: Path, tiny_model_dir: Path) -> None:
    with serving(tmp_path, model=tiny_model_dir) as (_, process):
        child = learner_child(process)
        process.kill()
        child.wait(timeout=30)
