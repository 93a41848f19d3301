"""The embedded Redis belongs to the command that started it: `doctor`, `serve` and `learn` leave no
`redis-server` running behind them, whether they end normally, by SIGTERM or, for `serve`, by SIGKILL."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

import psutil

from bench.service import eventually, service_env, serving
from streams.connection import connect
from streams.heartbeats import alive
from streams.keys import StreamKeys


def servers_in(data_dir: Path) -> list[psutil.Process]:
    """The redis-server processes working in `data_dir` (the embedded server runs in its directory)."""
    found = []
    for process in psutil.process_iter(["name"]):
        if process.info["name"] != "redis-server":
            continue
        with contextlib.suppress(psutil.Error):
            if Path(process.cwd()).is_relative_to(data_dir.resolve()):
                found.append(process)
    return found


def the_server(data_dir: Path) -> psutil.Process:
    eventually(lambda: len(servers_in(data_dir)) == 1, 60, "one embedded redis-server")
    [server] = servers_in(data_dir)
    return server


def learner_children(serve: subprocess.Popen) -> list[psutil.Process]:
    """The children of `serve` other than its Redis; one that exits while being read is gone, not an error."""
    children = []
    for child in psutil.Process(serve.pid).children():
        with contextlib.suppress(psutil.NoSuchProcess):
            if child.name() != "redis-server":
                children.append(child)
    return children


def test_doctor_stops_the_server_it_started(tmp_path: Path) -> None:
    result = subprocess.run(
        ["retentive", "doctor", "--data-dir", str(tmp_path)],
        env=service_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "embedded, files in" in result.stdout
    assert (tmp_path / "redis" / "appendonly.aof").exists(), "doctor did start an embedded server"
    assert servers_in(tmp_path) == []


def test_doctor_leaves_a_server_it_did_not_start(tmp_path: Path) -> None:
    client = connect("", tmp_path)
    try:
        server = the_server(tmp_path)
        result = subprocess.run(
            ["retentive", "doctor"], env=service_env(tmp_path), capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stderr
        assert server.is_running() and client.ping()
    finally:
        client.shutdown(nosave=False)


def test_serve_stops_its_server_after_its_learner(tmp_path: Path, tiny_model_dir: Path) -> None:
    with serving(tmp_path, model=tiny_model_dir) as (_, process):
        server = the_server(tmp_path)
        eventually(lambda: len(learner_children(process)) == 1, 60, "the learner child")
        [child] = learner_children(process)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=90) == 0
        assert not child.is_running()
        server.wait(timeout=30)


def test_serve_ended_by_ctrl_c_stops_its_server(tmp_path: Path, tiny_model_dir: Path) -> None:
    with serving(tmp_path, model=tiny_model_dir) as (_, process):
        server = the_server(tmp_path)
        process.send_signal(signal.SIGINT)
        process.wait(timeout=90)
        server.wait(timeout=30)


def test_a_restarted_learner_child_reuses_the_running_server(tmp_path: Path, tiny_model_dir: Path) -> None:
    with serving(tmp_path, model=tiny_model_dir) as (_, process):
        server = the_server(tmp_path)
        eventually(lambda: len(learner_children(process)) == 1, 60, "the learner child")
        [first] = learner_children(process)
        first.kill()
        eventually(
            lambda: [c.pid for c in learner_children(process)] not in ([], [first.pid]), 60, "a new child"
        )
        assert servers_in(tmp_path) == [server]


def test_a_killed_serve_has_its_server_stopped_by_the_learner(tmp_path: Path, tiny_model_dir: Path) -> None:
    with serving(tmp_path, model=tiny_model_dir) as (_, process):
        server = the_server(tmp_path)
        eventually(lambda: len(learner_children(process)) == 1, 60, "the learner child")
        [child] = learner_children(process)
        process.kill()
        process.wait(timeout=30)
        child.wait(timeout=60)
        server.wait(timeout=30)


def test_learn_stops_the_server_it_started(tmp_path: Path, tiny_model_dir: Path) -> None:
    env = service_env(tmp_path, model=tiny_model_dir)
    process = subprocess.Popen(["retentive", "learn"], env=env, stderr=subprocess.DEVNULL)
    try:
        server = the_server(tmp_path)
        client = connect("", tmp_path)
        eventually(lambda: alive(client, StreamKeys().learners) != {}, 120, "the learner's first heartbeat")
        client.close()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=90) == 0
        server.wait(timeout=30)
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
