"""`retentive learn` as a real process on the tiny model: SIGKILL at any moment loses nothing and applies
nothing twice; a standby takes over; a Redis restart is ridden out; bad entries are dead-lettered."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from learner.snapshots import SnapshotStore
from streams.consumer import GROUP
from streams.embedded import EmbeddedRedis
from streams.keys import StreamKeys
from streams.producer import FeedbackProducer
from streams.records import FeedbackRecord
from tests.conftest import RedisTarget

WORDS = "river market goal vote rain film code bank match storm album player court cloud engine".split()  # noqa: SIM905
LABELS = ["sports", "business", "weather", "culture"]


@dataclass
class LearnerHarness:
    """Starts and kills learner processes against one model's stream and snapshot directory."""

    env: dict[str, str]
    client: redis.Redis
    keys: StreamKeys
    data_dir: Path
    logs: Path

    def start(self, crash_at: str | None = None, name: str = "learner") -> subprocess.Popen:
        env = dict(self.env)
        if crash_at:
            env["RETENTIVE_CRASH_AT"] = crash_at
        log = (self.logs / f"{name}-{time.monotonic_ns()}.log").open("w")
        return subprocess.Popen(["retentive", "learn"], env=env, stdout=log, stderr=subprocess.STDOUT)

    @property
    def snapshots(self) -> SnapshotStore:
        return SnapshotStore(self.data_dir / "snapshots" / self.keys.model)

    def counters(self) -> dict[str, int]:
        values = self.client.hgetall(self.keys.counters).items()
        return {k.decode(): int(v) for k, v in values if v.isdigit()}

    def pending(self) -> int:
        return int(self.client.xpending(self.keys.feedback, GROUP)["pending"])

    def wait_for(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(0.2)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}; logs: {self.log_tail()}")

    def log_tail(self) -> str:
        return " | ".join(p.read_text()[-600:] for p in sorted(self.logs.iterdir())[-2:])

    def final_state(self) -> dict:
        snapshot, problems = self.snapshots.load_latest_valid(only=["state"])
        assert snapshot is not None, problems
        return snapshot.state


@pytest.fixture
def harness(
    redis_target: RedisTarget,
    redis_client: redis.Redis,
    key_prefix: str,
    tmp_path: Path,
    tiny_model_dir: Path,
) -> Iterator[LearnerHarness]:
    data_dir = tmp_path / "data"
    logs = tmp_path / "logs"
    logs.mkdir()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "RETENTIVE_MODEL": str(tiny_model_dir),
        "RETENTIVE_DATA_DIR": str(data_dir),
        "RETENTIVE_REDIS_URL": redis_target.url,
        "RETENTIVE_KEY_PREFIX": key_prefix,
        "RETENTIVE_MODEL_NAME": key_prefix,
        "RETENTIVE_BATCH_SIZE": "16",
        "RETENTIVE_BATCH_WAIT_S": "0.2",
        "RETENTIVE_SNAPSHOT_EVERY": "10",
        "RETENTIVE_SNAPSHOT_EVERY_S": "2",
        "RETENTIVE_EVAL_EVERY": "10",
        "RETENTIVE_LEASE_TTL_MS": "2000",
        "RETENTIVE_LEDGER": "true",
        "RETENTIVE_LEARNING_RATE": "1e-3",
    }
    if not redis_target.url:
        # Learners attach to the session's embedded server through its directory; the model name (unique
        # per test) keeps snapshots apart there.
        env["RETENTIVE_DATA_DIR"] = str(redis_target.data_dir)
        data_dir = redis_target.data_dir
    env.pop("REDIS_URL", None)
    yield LearnerHarness(env, redis_client, StreamKeys(key_prefix, key_prefix), data_dir, logs)


def feed(harness: LearnerHarness, start: int, stop: int) -> int:
    rng = random.Random(start)
    producer = FeedbackProducer(harness.client, harness.keys)
    records = []
    for i in range(start, stop):
        label = LABELS[i % len(LABELS)]
        text = f"{label} " + " ".join(rng.choice(WORDS) for _ in range(8)) + f" item {i}"
        records.append(FeedbackRecord(text=text, label=label, id=f"e{i}"))
    for chunk in range(0, len(records), 100):
        producer.add(records[chunk : chunk + 100])
    return len(records)


def settled(harness: LearnerHarness, fed: int) -> Callable[[], bool]:
    def check() -> bool:
        counters = harness.counters()
        done = sum(counters.get(k, 0) for k in ("applied", "held_out", "dead_lettered"))
        return done == fed and harness.pending() == 0

    return check


def audit(harness: LearnerHarness, fed: int, duplicates: int) -> None:
    """Accepted = applied + held out + dead-lettered + duplicates, and each entry was applied exactly once."""
    state = harness.final_state()
    ledger = state["extra"]["ledger"]
    counts = Counter(stream_id for stream_id, _, _ in ledger)
    assert max(counts.values()) == 1, [s for s, n in counts.items() if n > 1][:5]
    counters = harness.counters()
    dead = harness.client.xlen(harness.keys.dead)
    assert (
        counters["applied"] + counters["held_out"] + dead + counters.get("duplicates", 0) == fed + duplicates
    )
    assert counters.get("duplicates", 0) == duplicates
    trained_ids = {record_id for _, record_id, kind in ledger if kind == "trained"}
    assert len(trained_ids) == state["counters"]["examples_trained"] == counters["applied"]
    assert len(ledger) == fed - dead
    assert harness.pending() == 0


def stop_cleanly(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0


def kill(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(timeout=30)


def kill_inside_snapshot_write(harness: LearnerHarness, process: subprocess.Popen) -> bool:
    """SIGKILL the moment a snapshot's temporary directory appears; True if it was caught mid-write."""
    root = harness.data_dir / "snapshots" / harness.keys.model
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
    time.sleep(3)
    holder = harness.client.get(harness.keys.lease)
    kill(active)
    killed_at = time.monotonic()
    try:
        harness.wait_for(
            lambda: harness.client.get(harness.keys.lease) not in (None, holder),
            timeout=30,
            what="the standby",
        )
        took_over_s = time.monotonic() - killed_at
        fed += feed(harness, 600, 1200)
        harness.wait_for(settled(harness, fed), timeout=120, what="the standby to finish the stream")
    finally:
        stop_cleanly(standby)
    audit(harness, fed, 0)
    # The lease is 2 s and the standby polls it every 0.5 s; the rest is slack for a busy 2-core machine.
    assert took_over_s < 2.0 + 4.0, took_over_s


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
