"""`retentive learn` as a real process on the tiny model: SIGKILL at any moment loses nothing and applies
nothing twice; a standby takes over; a Redis restart is ridden out; bad entries are dead-lettered."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from streams.embedded import EmbeddedRedis
from streams.heartbeats import alive
from streams.producer import FeedbackProducer
from streams.records import FeedbackRecord
from tests.conftest import RedisTarget
from tests.learners import LearnerHarness, audit, feed, kill, settled, stop_cleanly


def kill_inside_snapshot_write(harness: LearnerHarness, process: subprocess.Popen) -> bool:
    """SIGKILL the moment a snapshot's temporary directory appears; True if it was caught mid-write."""
    root = harness.snapshot_dir
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and process.poll() is None:
        if root.exists() and any(p.name.startswith(".tmp") for p in root.iterdir()):
            process.kill()
            process.wait(timeout=30)
            return True
        time.sleep(0.001)
    kill(process)
    return False


def test_sigkill_at_any_moment_loses_nothing_and_applies_nothing_twice(harness: LearnerHarness) -> None:
    fed = feed(harness, 0, 1000)
    rng = random.Random(7)

    for crash_at in ("after_snapshot", "before_snapshot"):
        process = harness.start(crash_at=crash_at)
        assert process.wait(timeout=120) == -signal.SIGKILL, harness.log_tail()

    caught_mid_write = kill_inside_snapshot_write(harness, harness.start())
    print(f"killed inside a snapshot write: {caught_mid_write}")
    fed += feed(harness, 1000, 2000)
    for _ in range(2):
        process = harness.start()
        time.sleep(rng.uniform(3.0, 6.0))
        kill(process)

    duplicates = (
        FeedbackProducer(harness.client, harness.keys)
        .add([FeedbackRecord(text="again", label="sports", id=f"e{i}") for i in range(50)])
        .duplicates
    )
    process = harness.start()
    try:
        harness.wait_for(settled(harness, fed), timeout=240, what="every entry applied and acknowledged")
    finally:
        stop_cleanly(process)
    audit(harness, fed, duplicates)


def test_standby_takes_over_within_the_lease(harness: LearnerHarness) -> None:
    fed = feed(harness, 0, 600)
    active = harness.start(name="active")
    harness.wait_for(lambda: harness.counters().get("applied", 0) > 0, timeout=120, what="the first snapshot")
    standby = harness.start(name="standby")
    # Starting a learner (torch, the model) takes seconds on a busy machine: wait until it is waiting.
    harness.wait_for(
        lambda: (
            [r["state"] for r in alive(harness.client, harness.keys.learners).values()].count("standby") == 1
        ),
        timeout=120,
        what="the second learner to stand by",
    )
    holder = harness.client.get(harness.keys.lease)
    kill(active)
    killed_at = time.monotonic()
    # A killed learner releases nothing: only the lease's time to live can free it for the standby.
    left_ms = harness.client.pttl(harness.keys.lease)
    try:
        harness.wait_for(
            lambda: harness.client.get(harness.keys.lease) not in (None, holder),
            timeout=120,
            what="the standby",
        )
        took_over_s = time.monotonic() - killed_at
        assert harness.client.pttl(harness.keys.lease) > 0, "the new holder keeps its lease alive"
        fed += feed(harness, 600, 1200)
        harness.wait_for(settled(harness, fed), timeout=120, what="the standby to finish the stream")
    finally:
        stop_cleanly(standby)
    audit(harness, fed, 0)
    print(f"standby took over {took_over_s:.2f} s after the kill, with {left_ms} ms of the lease left")
    assert left_ms > 0, "the killed holder's lease was still standing when it died"
    assert took_over_s * 1000 >= left_ms, "the standby waited for the lease to expire"


def test_bad_entries_are_dead_lettered_and_learning_goes_on(harness: LearnerHarness) -> None:
    fed = feed(harness, 0, 100)
    harness.client.xadd(harness.keys.feedback, {"v": "1", "text": "no label here"})
    harness.client.xadd(harness.keys.feedback, {"v": "1", "text": b"\xff\xfe broken", "label": "sports"})
    harness.client.xadd(harness.keys.feedback, {"v": "1", "text": "x" * 20_000, "label": "sports"})
    harness.client.incrby(harness.keys.backlog, 3)
    fed += 3 + feed(harness, 100, 200)
    process = harness.start()
    try:
        harness.wait_for(settled(harness, fed), timeout=120, what="the stream to be consumed")
    finally:
        stop_cleanly(process)
    dead = harness.client.xrange(harness.keys.dead)
    assert len(dead) == 3
    reasons = " ".join(fields[b"reason"].decode() for _, fields in dead)
    assert "label" in reasons and "text" in reasons
    audit(harness, fed, 0)


def test_learner_rides_out_an_embedded_redis_restart(
    harness: LearnerHarness, redis_target: RedisTarget
) -> None:
    if redis_target.url:
        pytest.skip("restarts the embedded server only")
    fed = feed(harness, 0, 400)
    process = harness.start()
    try:
        harness.wait_for(
            lambda: harness.counters().get("applied", 0) > 0, timeout=120, what="the first snapshot"
        )
        server = EmbeddedRedis(redis_target.data_dir / "redis")
        server.stop()
        server.start()
        fed += feed(harness, 400, 800)
        harness.wait_for(settled(harness, fed), timeout=180, what="the learner to carry on after the restart")
        assert process.poll() is None
    finally:
        stop_cleanly(process)
    audit(harness, fed, 0)


def test_learn_without_redis_is_one_clear_line(tiny_model_dir: Path, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "RETENTIVE_MODEL": str(tiny_model_dir),
        "RETENTIVE_REDIS_URL": "redis://127.0.0.1:1/0",
    }
    result = subprocess.run(
        ["retentive", "learn", "--data-dir", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: RETENTIVE_REDIS_URL: cannot reach redis://127.0.0.1:1/0")


def dead_letters_cli(harness: LearnerHarness, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["retentive", "dead-letters", *args], env=harness.env, capture_output=True, text=True, timeout=120
    )


def test_an_operator_requeues_a_dead_letter_once_its_cause_is_fixed(harness: LearnerHarness) -> None:
    harness.env["RETENTIVE_MAX_LABELS"] = "4"
    # Nothing held out as a probe: the requeued example must be trained on, whatever the random salt routes.
    harness.env["RETENTIVE_PROBE_FRACTION"] = "0"
    fed = feed(harness, 0, 40)
    science = FeedbackRecord(text="the probe measured the comet's dust", label="science", id="sci-1")
    producer = FeedbackProducer(harness.client, harness.keys)
    producer.add([science])
    process = harness.start()
    try:
        harness.wait_for(settled(harness, fed + 1), 120, "the stream consumed, the fifth label dead-lettered")
    finally:
        stop_cleanly(process)
    [letter] = [json.loads(line) for line in dead_letters_cli(harness, "list", "--json").stdout.splitlines()]
    assert "past its cap of 4" in letter["reason"] and letter["fields"]["label"] == "science"
    assert producer.add([science]).duplicates == 1, "its id still blocks sending it again"

    assert dead_letters_cli(harness, "requeue").returncode == 2, "naming nothing requeues nothing"
    harness.env["RETENTIVE_MAX_LABELS"] = "5"
    requeued = dead_letters_cli(harness, "requeue", "--id", letter["dead_id"])
    assert requeued.returncode == 0 and f"{letter['dead_id']}: requeued as" in requeued.stdout
    assert dead_letters_cli(harness, "list").stdout == "", "a requeued dead letter is not listed again"
    again = dead_letters_cli(harness, "requeue", "--all")
    assert again.returncode == 0 and again.stdout == "", "nor requeued twice"
    process = harness.start()
    try:
        harness.wait_for(
            lambda: harness.counters().get("applied", 0) + harness.counters().get("held_out", 0) == fed + 1,
            timeout=120,
            what="the requeued entry to be applied",
        )
    finally:
        stop_cleanly(process)
    assert "science" in harness.final_state()["labels"]
