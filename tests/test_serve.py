"""`retentive serve` as a real uvicorn process on the embedded Redis, and the learner child it runs."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest
import redis

from app.settings import Settings
from bench.service import QUICK_LEARNER, eventually, free_port, serve_log, serving
from learner.snapshots import SnapshotStore
from streams.connection import connect
from streams.notify import publish_version
from tests.services import write_snapshot


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    with serving(tmp_path) as (base, _):
        yield base


def test_serve_starts_with_embedded_redis_and_reports_ready(served: str, tmp_path: Path) -> None:
    assert httpx.get(f"{served}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{served}/readyz").json()
    assert ready["status"] == "ready"
    assert (tmp_path / "redis" / "appendonly.aof").exists()


def test_the_server_closes_an_idle_connection_after_keep_alive_s(tmp_path: Path) -> None:
    with serving(tmp_path, keep_alive_s=1) as (base, _):
        port = int(base.rsplit(":", 1)[1])
        # Past the socket's 60 s timeout (the default holds a connection 75 s) the read raises instead.
        with socket.create_connection(("127.0.0.1", port), timeout=60) as conn:
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            received = _read_until_closed(conn)
    assert received.startswith(b"HTTP/1.1 200 "), received
    assert received.endswith(b'{"status":"ok"}'), received


def _read_until_closed(conn: socket.socket) -> bytes:
    received = b""
    while chunk := conn.recv(65536):
        received += chunk
    return received


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


@pytest.fixture
def password_redis(tmp_path: Path) -> Iterator[tuple[subprocess.Popen, str]]:
    """A Redis server of the test's own that needs a password, and its URL with the password in it."""
    if shutil.which("redis-server") is None:
        pytest.skip("no redis-server on this machine")
    port = free_port()
    server = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--requirepass",
            "hunter2",
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://:hunter2@127.0.0.1:{port}/0"

    def answers() -> bool:
        try:
            return redis.Redis.from_url(url).ping()
        except redis.RedisError:
            return False

    eventually(answers, 30, "the password-protected Redis to start")
    try:
        yield server, url
    finally:
        server.kill()
        server.wait(timeout=30)


def test_secrets_stay_out_of_the_learner_the_logs_and_the_readiness_answer(
    tmp_path: Path, tiny_model_dir: Path, password_redis: tuple[subprocess.Popen, str]
) -> None:
    server, url = password_redis
    with serving(tmp_path, model=tiny_model_dir, redis_url=url, api_keys="secret-admin-key:admin") as (
        base,
        serve,
    ):
        child = learner_child(serve)
        assert "RETENTIVE_API_KEYS" not in child.environ() and "RETENTIVE_REDIS_URL" in child.environ()
        server.kill()
        server.wait(timeout=30)
        answer = httpx.get(f"{base}/readyz", timeout=60)
        assert answer.status_code == 503 and answer.json()["error"]["message"] == "redis unavailable"
    log = serve_log(tmp_path).read_text()
    assert "hunter2" not in log and "secret-admin-key" not in log


def test_doctor_never_prints_the_redis_password(
    tmp_path: Path, password_redis: tuple[subprocess.Popen, str]
) -> None:
    _, url = password_redis
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RETENTIVE_REDIS_URL": url}
    result = subprocess.run(
        ["retentive", "doctor", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert ":***@127.0.0.1" in result.stdout and "hunter2" not in result.stdout + result.stderr
    wrong = url.replace("hunter2", "wrong-password")
    refused = subprocess.run(
        ["retentive", "doctor", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        env={**env, "RETENTIVE_REDIS_URL": wrong},
        timeout=120,
    )
    assert refused.returncode == 2 and "RETENTIVE_REDIS_URL" in refused.stderr
    assert "wrong-password" not in refused.stderr and ":***@" in refused.stderr


def test_without_keys_only_loopback_names_are_answered_and_changes_come_as_json(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    with serving(tmp_path, "--no-learner", model=tiny_model_dir) as (base, _):
        rebound = httpx.get(f"{base}/v1/learner", headers={"Host": "attacker.example"})
        assert rebound.status_code == 403 and "not attacker.example" in rebound.json()["error"]["message"]
        for host in ("localhost", f"127.0.0.1:{base.rsplit(':', 1)[1]}", "[::1]:8000"):
            assert httpx.get(f"{base}/v1/learner", headers={"Host": host}).status_code == 200, host

        # What a cross-site HTML form can send: no JSON content type. It changes nothing.
        form = httpx.post(f"{base}/v1/learner/pause", content="x=1", headers={"Content-Type": "text/plain"})
        assert form.status_code == 415 and "application/json" in form.json()["error"]["message"]
        assert httpx.get(f"{base}/v1/learner").json()["paused_reason"] is None
        paused = httpx.post(f"{base}/v1/learner/pause", json={})
        assert paused.status_code == 200 and paused.json()["paused_reason"] == "paused by an operator"
        assert httpx.post(f"{base}/v1/learner/resume", json={}).json()["paused_reason"] is None


def test_a_predict_queue_past_its_bound_answers_503_with_retry_after(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    write_snapshot(Settings(model=str(tiny_model_dir), data_dir=tmp_path))
    with serving(
        tmp_path, "--no-learner", model=tiny_model_dir, predict_max_queue=64, predict_max_batch=64
    ) as (
        base,
        _,
    ):
        texts = [f"the match ended in a draw {i}" for i in range(64)]
        start = threading.Barrier(16)

        def ask(_: int) -> httpx.Response:
            start.wait()
            return httpx.post(f"{base}/v1/predict", json={"inputs": texts}, timeout=60)

        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(ask, range(16)))
    statuses = sorted({answer.status_code for answer in answers})
    refused = [answer for answer in answers if answer.status_code == 503]
    assert statuses == [200, 503], statuses
    assert all(a.headers["retry-after"] == "1" and a.json()["error"]["code"] == "busy" for a in refused)
    assert "RETENTIVE_PREDICT_MAX_QUEUE" in refused[0].json()["error"]["message"]
    assert all(len(a.json()["predictions"]) == 64 for a in answers if a.status_code == 200)


def test_a_version_that_fails_to_load_keeps_the_last_good_one_serving_and_readyz_says_stale(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    settings = Settings(model=str(tiny_model_dir), data_dir=tmp_path)
    store, keys = SnapshotStore(settings.snapshot_dir), settings.stream_keys()
    good = store.load(write_snapshot(settings))
    lag = {"replica_max_lag_versions": 0, "replica_max_lag_s": 1}
    with serving(tmp_path, "--no-learner", model=tiny_model_dir, **lag) as (base, _):
        client = connect("", tmp_path)

        def served() -> int | None:
            return httpx.get(f"{base}/v1/model").json()["model_version"]

        eventually(lambda: served() == good.manifest.version, 60, "the first version")
        # Checksums hold, but the state names no labels: loading it raises, as a schema change would.
        broken = store.save(good.tensors, {k: v for k, v in good.state.items() if k != "labels"})
        publish_version(client, keys, broken.version, broken.id)
        eventually(lambda: httpx.get(f"{base}/readyz").status_code == 503, 60, "readyz to report the lag")
        stale = httpx.get(f"{base}/readyz").json()["error"]
        assert stale["code"] == "stale" and "1 versions behind" in stale["message"]
        assert served() == good.manifest.version
        metrics = httpx.get(f"{base}/metrics").text
        assert (
            "retentive_model_refresh_failures" in metrics and "retentive_model_versions_behind 1.0" in metrics
        )

        fixed = store.save(good.tensors, good.state)
        publish_version(client, keys, fixed.version, fixed.id)
        eventually(lambda: served() == fixed.version, 60, "the follower to load the next good version")
        assert httpx.get(f"{base}/readyz").status_code == 200
        client.close()


def test_a_key_past_its_feedback_rate_is_refused_with_429_and_nothing_written(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    busy, calm = {"Authorization": "Bearer busy-key"}, {"Authorization": "Bearer calm-key"}
    with serving(
        tmp_path,
        "--no-learner",
        model=tiny_model_dir,
        api_keys="busy-key:feedback,predict;calm-key:feedback",
        feedback_rate_limit=3,
    ) as (base, _):

        def post(headers: dict[str, str], text: str) -> httpx.Response:
            example = {"text": text, "label": "news"}
            return httpx.post(f"{base}/v1/feedback", json={"examples": [example]}, headers=headers)

        def accepted() -> int:
            return httpx.get(f"{base}/v1/model", headers=busy).json()["counters"].get("accepted", 0)

        assert [post(busy, f"text {i}").status_code for i in range(3)] == [202, 202, 202]
        refused = post(busy, "one too many")
        assert refused.status_code == 429, refused.text
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        assert "RETENTIVE_FEEDBACK_RATE_LIMIT" in refused.json()["error"]["message"]
        assert accepted() == 3
        assert post(calm, "another key has its own budget").status_code == 202
        assert accepted() == 4


def test_an_operator_removes_a_junk_label_and_the_served_model_drops_it(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    texts = {
        "sports": "the striker scored a late goal in the match",
        "finance": "shares fell as the bank cut its forecast",
        "spam": "buy cheap pills now click this link",
    }
    examples = [{"text": f"{text} {i}", "label": label} for i in range(8) for label, text in texts.items()]
    with serving(tmp_path, model=tiny_model_dir, **QUICK_LEARNER) as (base, _):

        def served_labels() -> set[str]:
            return set(httpx.get(f"{base}/v1/model").json()["labels"])

        assert httpx.post(f"{base}/v1/feedback", json={"examples": examples}).status_code == 202
        eventually(lambda: served_labels() == set(texts), 120, "all three labels served")
        refused = httpx.post(f"{base}/v1/labels/remove", json={"labels": []})
        assert refused.status_code == 422 and "labels" in refused.json()["error"]["message"]

        accepted = httpx.post(f"{base}/v1/labels/remove", json={"labels": ["spam"]})
        assert accepted.status_code == 202 and accepted.json()["removing"] == ["spam"]
        eventually(lambda: served_labels() == {"sports", "finance"}, 120, "the model served without spam")
        answers = httpx.post(f"{base}/v1/predict", json={"inputs": [texts["spam"]], "top_k": 2}).json()
        assert {scored["label"] for scored in answers["predictions"][0]["top"]} == {"sports", "finance"}


@pytest.mark.parametrize(("max_batch_size", "steps"), [(32, 2), (0, 8)])
def test_a_backlog_is_learned_in_steps_as_large_as_max_batch_size(
    tmp_path: Path, tiny_model_dir: Path, max_batch_size: int, steps: int
) -> None:
    examples = [{"text": f"the striker scored goal {i}", "label": f"label-{i % 4}"} for i in range(64)]
    settings = {**QUICK_LEARNER, "max_batch_size": max_batch_size}
    with serving(tmp_path, model=tiny_model_dir, **settings) as (base, _):

        def model() -> dict:
            return httpx.get(f"{base}/v1/model").json()

        assert httpx.post(f"{base}/v1/learner/pause", json={}).status_code == 200
        eventually(lambda: model()["learner"] == "paused", 60, "the learner paused")
        assert httpx.post(f"{base}/v1/feedback", json={"examples": examples}).status_code == 202
        assert httpx.post(f"{base}/v1/learner/resume", json={}).status_code == 200

        def taken() -> int:
            counters = model()["counters"]
            return counters.get("applied", 0) + counters.get("held_out", 0)

        eventually(lambda: taken() == 64, 120, "the backlog learned")
        assert model()["counters"]["updates"] == steps


def test_feedback_naming_served_predictions_reports_how_right_the_answers_were(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    texts = {
        "sports": "the striker scored a late goal",
        "finance": "shares fell as the bank cut its forecast",
    }
    teach = [{"text": f"{text} {i}", "label": label} for i in range(8) for label, text in texts.items()]
    with serving(tmp_path, model=tiny_model_dir, **QUICK_LEARNER) as (base, _):

        def forgetting() -> dict:
            return httpx.get(f"{base}/v1/forgetting").json()

        assert httpx.post(f"{base}/v1/feedback", json={"examples": teach}).status_code == 202
        eventually(lambda: set(httpx.get(f"{base}/v1/model").json()["labels"]) == set(texts), 120, "labels")
        inputs = [f"{text} again {i}" for i in range(3) for text in texts.values()]
        answered = httpx.post(f"{base}/v1/predict", json={"inputs": inputs}).json()
        answers = answered["predictions"]
        eventually(lambda: forgetting()["served"]["predictions"] == len(inputs), 30, "the answers remembered")

        # Feedback on four of the six answers: two confirm the served label, two correct it.
        other = {"sports": "finance", "finance": "sports"}
        feedback = [
            {
                "text": text,
                "label": answer["label"] if i < 2 else other[answer["label"]],
                "prediction_id": answer["prediction_id"],
            }
            for i, (text, answer) in enumerate(zip(inputs[:4], answers[:4], strict=True))
        ]
        assert httpx.post(f"{base}/v1/feedback", json={"examples": feedback}).status_code == 202
        eventually(lambda: forgetting()["served"]["joined"] == 4, 120, "the feedback joined to its answers")
        served = forgetting()["served"]
        assert served["accuracy"] == 0.5 and served["last_1000"]["accuracy"] == 0.5
        assert served["coverage"] == pytest.approx(4 / 6)
        assert served["last_1000"]["median_delay_s"] >= 0
        assert sum(row["joined"] for row in served["per_label"]) == 4
        assert served["per_version"] == [
            {"model_version": answered["model_version"], "joined": 4, "accuracy": 0.5}
        ]
        metrics = httpx.get(f"{base}/metrics").text
        assert 'retentive_served_accuracy{window="cumulative"} 0.5' in metrics


def test_a_poisoned_burst_is_held_back_and_the_version_that_passed_keeps_serving(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    sports = [f"the striker scored a late goal in match {i}" for i in range(16)]
    finance = [f"shares fell as the bank cut its forecast {i}" for i in range(16)]
    golden = sports[8:]
    settings = {**QUICK_LEARNER, "strategy": "sgd", "lr": 3e-3, "probe_fraction": 0, "eval_every": 5}
    with serving(tmp_path, model=tiny_model_dir, **settings) as (base, _):

        def model() -> dict:
            return httpx.get(f"{base}/v1/model").json()

        def served_sports_right() -> int:
            answered = httpx.post(f"{base}/v1/predict", json={"inputs": golden})
            if answered.status_code in (409, 503):  # no model or no label yet
                return 0
            assert answered.status_code == 200, answered.text
            return [answer["label"] for answer in answered.json()["predictions"]].count("sports")

        def feed(rounds: int, sports_label: str, finance_label: str) -> None:
            for _ in range(rounds):
                examples = [{"text": t, "label": sports_label} for t in sports[:4]]
                examples += [{"text": t, "label": finance_label} for t in finance[:4]]
                assert httpx.post(f"{base}/v1/feedback", json={"examples": examples}).status_code == 202

        put = httpx.put(
            f"{base}/v1/probes/golden", json={"examples": [{"text": t, "label": "sports"} for t in golden]}
        )
        assert put.status_code == 201, put.text
        feed(6, "sports", "finance")
        eventually(lambda: served_sports_right() == len(golden), 120, "the golden texts served right")
        assert model()["held_back"] is None

        feed(20, "finance", "sports")
        eventually(lambda: model()["held_back"] is not None, 120, "the poisoned weights held back")
        eventually(lambda: model()["stream_lag"] == 0, 120, "the poison applied")
        alarms = lambda: httpx.get(f"{base}/v1/forgetting").json()["alarms"]  # noqa: E731
        eventually(lambda: [a["probe"] for a in alarms()] == ["golden"], 120, "the learner's own alarm")

        held_back = model()["held_back"]
        assert "label 'sports'" in held_back["reason"]
        assert served_sports_right() >= 2, "the version served is one that passed"
        assert model()["counters"]["held_back"] >= 1
        assert "retentive_learner_held_back" in httpx.get(f"{base}/metrics").text
