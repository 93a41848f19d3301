"""Real `retentive learn` processes on the tiny model, a feed of labelled examples, and the exactly-once audit
that crash tests end with."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import redis

from app.faults import CRASH_AT_ENV
from bench.service import eventually
from learner.snapshots import SnapshotStore
from streams.consumer import GROUP
from streams.keys import StreamKeys
from streams.producer import FeedbackProducer
from streams.records import FeedbackRecord

if TYPE_CHECKING:
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
            env[CRASH_AT_ENV] = crash_at
        log = (self.logs / f"{name}-{time.monotonic_ns()}.log").open("w")
        return subprocess.Popen(["retentive", "learn"], env=env, stdout=log, stderr=subprocess.STDOUT)

    @property
    def snapshot_dir(self) -> Path:
        return self.data_dir / "snapshots" / self.keys.model

    @property
    def snapshots(self) -> SnapshotStore:
        return SnapshotStore(self.snapshot_dir)

    def counters(self) -> dict[str, int]:
        values = self.client.hgetall(self.keys.counters).items()
        return {k.decode(): int(v) for k, v in values if v.isdigit()}

    def pending(self) -> int:
        return int(self.client.xpending(self.keys.feedback, GROUP)["pending"])

    def wait_for(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        """`eventually`, with the learners' logs in the failure."""
        try:
            eventually(condition, timeout, what, every=0.2)
        except AssertionError as err:
            raise AssertionError(f"{err}; logs: {self.log_tail()}") from None

    def log_tail(self) -> str:
        return " | ".join(p.read_text()[-600:] for p in sorted(self.logs.iterdir())[-2:])

    def final_state(self) -> dict:
        snapshot, problems = self.snapshots.load_latest_valid(only=["state"])
        assert snapshot is not None, problems
        return snapshot.state


def learner_harness(
    redis_target: RedisTarget,
    client: redis.Redis,
    key_prefix: str,
    tmp_path: Path,
    tiny_model_dir: Path,
) -> LearnerHarness:
    """Learners of a fresh model (named `key_prefix`) on the tiny model, snapshotting often, ledger on."""
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
        "RETENTIVE_LR": "1e-3",
    }
    if not redis_target.url:
        # Learners attach to the session's embedded server through its directory; the model name (unique
        # per test) keeps snapshots apart there.
        env["RETENTIVE_DATA_DIR"] = str(redis_target.data_dir)
        data_dir = redis_target.data_dir
    env.pop("REDIS_URL", None)
    return LearnerHarness(env, client, StreamKeys(key_prefix, key_prefix), data_dir, logs)


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
