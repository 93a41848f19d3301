"""The learner loop follows operators and serving: pause, rollback, probes, weight publishing, back-off."""

from __future__ import annotations

import contextlib
import copy
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import torch

from app.learner_loop import LearnerLoop, LoopConfig
from app.serving import ModelHolder
from bench.service import eventually
from learner.encoder import Encoder
from learner.forgetting import AlarmPolicy
from learner.online import LearnerConfig, OnlineLearner
from learner.snapshots import MODEL, Manifest, SnapshotStore
from streams.control import Control, learner_state
from streams.heartbeats import beat, leave
from streams.keys import StreamKeys
from streams.notify import (
    probe_figures,
    read_counters,
    read_held_back,
    read_keep_rates,
    recent_evaluations,
    recent_versions,
)
from streams.producer import FeedbackProducer
from streams.records import FeedbackRecord

LABELS = ["sports", "business", "weather"]


@dataclass
class RunningLoop:
    loop: LearnerLoop
    keys: StreamKeys
    client: redis.Redis
    control: Control
    fed: int = 0

    @property
    def learner(self) -> OnlineLearner:
        return self.loop.learner

    def feed(self, count: int) -> None:
        records = [
            FeedbackRecord(
                text=f"{LABELS[i % 3]} story number {i} about {LABELS[i % 3]}",
                label=LABELS[i % 3],
                id=f"e{i}",
            )
            for i in range(self.fed, self.fed + count)
        ]
        FeedbackProducer(self.client, self.keys).add(records)
        self.fed += count

    def applied(self) -> int:
        counters = self.loop.state.counters
        return counters.applied + counters.held_out


QUICK_MIGU = LearnerConfig(strategy="migu", lr=1e-3, eval_every=2, probe_fraction=0.0)


@contextlib.contextmanager
def start_loop(
    encoder: Encoder,
    client: redis.Redis,
    keys: StreamKeys,
    root: Path,
    learner_config: LearnerConfig = QUICK_MIGU,
    **config: object,
) -> Iterator[RunningLoop]:
    tokenizer, model = encoder
    store = SnapshotStore(root / "snapshots", keep=50)
    learner = OnlineLearner(tokenizer, copy.deepcopy(model), learner_config)
    loop = LearnerLoop(
        learner,
        store,
        client,
        keys,
        consumer_name="learner-under-test",
        config=LoopConfig(
            batch_size=8,
            batch_wait_s=0.05,
            lease_ttl_ms=1500,
            **{"snapshot_every": 1000, "snapshot_every_s": 60.0, "publish_every_s": 0.0, **config},
        ),
        published=SnapshotStore(root / "published", keep=2),
    )
    stop = threading.Event()
    thread = threading.Thread(target=loop.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield RunningLoop(loop, keys, client, Control(client, keys))
    finally:
        stop.set()
        thread.join(timeout=30)


@pytest.fixture
def running(
    tiny_encoder: Encoder, redis_client: redis.Redis, key_prefix: str, tmp_path: Path
) -> Iterator[RunningLoop]:
    with start_loop(tiny_encoder, redis_client, StreamKeys(key_prefix, "m"), tmp_path) as running:
        yield running


def test_a_paused_learner_leaves_feedback_in_the_stream_until_resumed(running: RunningLoop) -> None:
    running.control.pause("paused by an operator")
    eventually(lambda: running.loop.status == "paused", 60, "the learner to pause")
    running.feed(24)
    time.sleep(1.0)
    assert running.applied() == 0
    eventually(
        lambda: learner_state(running.client, running.keys) == "paused", 60, "the heartbeat to say paused"
    )
    running.control.resume()
    eventually(lambda: running.applied() == 24, 60, "the held feedback to be applied")
    assert running.learner.counters.updates > 0
    eventually(
        lambda: learner_state(running.client, running.keys) == "running", 60, "the heartbeat to say running"
    )


def snapshot_after(running: RunningLoop, count: int) -> Manifest:
    running.feed(count)
    eventually(lambda: running.applied() == running.fed, 60, f"{running.fed} entries applied")
    return running.loop.snapshot()


def model_tensors(store: SnapshotStore, manifest: Manifest) -> dict[str, torch.Tensor]:
    return store.load(manifest.id, only=[MODEL]).tensors[MODEL]


def wait_for_rollback(running: RunningLoop, before: int) -> Manifest:
    eventually(lambda: running.loop.state.counters.rollbacks == before + 1, 60, "the rollback")
    eventually(lambda: running.control.state().rollback is None, 60, "the request to be marked done")
    latest = running.loop.store.latest()
    assert latest is not None
    return latest


def test_rollback_serves_the_old_weights_as_a_new_version_and_drops_later_feedback(
    running: RunningLoop,
) -> None:
    store = running.loop.store
    target = snapshot_after(running, 16)
    updates_then = running.learner.counters.updates
    later = snapshot_after(running, 32)
    cursor = running.loop.state.cursor
    assert running.learner.counters.updates > updates_then

    running.control.request_rollback(target.id, replay=False)
    rolled = wait_for_rollback(running, 0)

    assert rolled.version > later.version
    restored, old = model_tensors(store, rolled), model_tensors(store, target)
    assert restored.keys() == old.keys()
    assert all(torch.equal(restored[name], old[name]) for name in old)
    assert running.learner.counters.updates == updates_then
    assert running.loop.state.cursor == cursor
    running.feed(8)
    eventually(
        lambda: running.learner.counters.updates == updates_then + 1, 60, "learning to go on from there"
    )


def test_rollback_with_replay_learns_the_later_feedback_again(running: RunningLoop) -> None:
    target = snapshot_after(running, 16)
    updates_then = running.learner.counters.updates
    snapshot_after(running, 32)

    running.control.request_rollback(target.id, replay=True)
    wait_for_rollback(running, 0)

    assert running.learner.counters.updates == updates_then + 32 // 8
    assert running.loop.state.cursor is not None


def test_a_rollback_to_a_missing_snapshot_is_dropped_and_learning_goes_on(running: RunningLoop) -> None:
    snapshot_after(running, 8)
    running.control.request_rollback("00000099-aaaaaaaaaaaa", replay=False)
    eventually(lambda: running.control.state().rollback is None, 60, "the request to be dropped")
    assert running.loop.state.counters.rollbacks == 0
    snapshot_after(running, 8)
    assert running.applied() == 16


def test_a_registered_probe_is_evaluated_at_once_and_dropped_when_deleted(running: RunningLoop) -> None:
    snapshot_after(running, 16)
    running.control.put_probe("golden", [("sports story about sports", "sports"), ("weather now", "weather")])

    def evaluated_probes() -> set[str]:
        return set(probe_figures(running.client, running.keys))

    eventually(lambda: "golden" in evaluated_probes(), 60, "the new probe in an evaluation")
    columns = recent_evaluations(running.client, running.keys, 200)
    assert any(row[0] == "golden" for column in columns for row in column["scored"])
    golden = probe_figures(running.client, running.keys)["golden"]
    assert golden["source"] == "registered" and golden["size"] == 2
    running.control.delete_probe("golden")
    eventually(lambda: "golden" not in evaluated_probes(), 60, "the probe to be gone")


def updates_published(store: SnapshotStore) -> int | None:
    manifest = store.latest()
    return manifest.info["updates"] if manifest else None


def test_weights_are_published_between_snapshots_and_served(
    tiny_encoder: Encoder, tiny_model_dir: Path, redis_client: redis.Redis, key_prefix: str, tmp_path: Path
) -> None:
    keys = StreamKeys(key_prefix, "m")
    published = SnapshotStore(tmp_path / "published")
    with start_loop(tiny_encoder, redis_client, keys, tmp_path, publish_every_s=0.2) as running:
        running.feed(16)
        eventually(lambda: running.applied() == 16, 60, "the feedback to be applied")
        updates = running.learner.counters.updates
        # Settled on the publication of the last update, so no newer one can land between the checks.
        eventually(lambda: updates_published(published) == updates, 60, "the last update's weights")
        assert running.loop.store.latest() is None
        holder = ModelHolder(str(tiny_model_dir), SnapshotStore(tmp_path / "snapshots"), published)
        assert holder.refresh()
        assert holder.current is not None and holder.current.version == published.max_version()
        assert holder.current.classifier.labels == running.learner.model.labels
        snapshot = running.loop.snapshot()
        assert snapshot.version > holder.current.version
        assert holder.refresh() and holder.current.version == snapshot.version


@pytest.mark.parametrize(
    "pressure", [{"queue": 10_000, "slowdown": 1.0}, {"queue": 0, "slowdown": 5.0}], ids=["queue", "slowdown"]
)
def test_the_learner_backs_off_while_a_replica_reports_pressure(
    running: RunningLoop, pressure: dict[str, float]
) -> None:
    beat(running.client, running.keys.pressure, "replica-1", pressure, ttl_s=60)
    eventually(lambda: running.loop.state.counters.backoffs >= 1, 60, "the learner to back off")
    running.feed(16)
    eventually(lambda: running.loop.state.counters.backoffs >= 3, 60, "the learner to keep backing off")
    assert running.applied() == 0
    leave(running.client, running.keys.pressure, "replica-1")
    eventually(lambda: running.applied() == 16, 60, "learning to resume once the pressure is gone")


def test_a_replica_answering_as_fast_as_it_can_does_not_hold_learning_back(running: RunningLoop) -> None:
    # Requests of many texts take long, but no longer than this replica's own fastest of their size.
    beat(running.client, running.keys.pressure, "replica-1", {"queue": 0, "slowdown": 1.2}, ttl_s=60)
    running.feed(16)
    eventually(lambda: running.applied() == 16, 60, "the feedback applied")
    assert running.loop.state.counters.backoffs == 0


def test_a_rollback_is_logged_with_its_version_and_rates_do_not_run_backwards(running: RunningLoop) -> None:
    target = snapshot_after(running, 16)
    later = snapshot_after(running, 32)
    running.control.request_rollback(target.id, replay=False)
    rolled = wait_for_rollback(running, 0)

    log = [(e["version"], e["rolled_back_to"]) for e in recent_versions(running.client, running.keys)]
    assert log[:2] == [(rolled.version, target.id), (later.version, None)]
    counters = read_counters(running.client, running.keys)
    assert float(counters["examples_per_s"]) >= 0 and float(counters["updates_per_s"]) >= 0
    running.feed(8)
    eventually(lambda: running.applied() == running.fed, 60, "learning after the rollback")
    assert running.loop.snapshot().version == rolled.version + 1
    assert recent_versions(running.client, running.keys, 1)[0]["rolled_back_to"] is None


def test_the_keep_rate_of_every_gated_layer_is_published_with_the_counters(running: RunningLoop) -> None:
    snapshot_after(running, 16)
    gate = running.learner.strategy.gate
    published = read_keep_rates(running.client, running.keys)
    assert list(published) == list(gate.layers)
    expected = {layer: round(stats["keep_rate"], 4) for layer, stats in gate.last_stats().items()}
    assert published == expected and all(0.2 <= rate <= 0.4 for rate in published.values())


def test_under_sustained_pressure_the_learner_still_steps_now_and_then(
    tiny_encoder: Encoder, redis_client: redis.Redis, key_prefix: str, tmp_path: Path
) -> None:
    keys = StreamKeys(key_prefix, "m")
    with start_loop(tiny_encoder, redis_client, keys, tmp_path, backoff_max_s=1.0) as running:
        beat(running.client, running.keys.pressure, "replica-1", {"queue": 10_000, "slowdown": 1.0}, ttl_s=60)
        running.feed(24)
        eventually(lambda: running.applied() == 24, 60, "steps taken despite the pressure")
        assert running.loop.state.counters.backoffs >= 2


SPORTS = [f"the team won the match {i} with a late goal" for i in range(8)]
FINANCE = [f"shares fell as the bank cut its forecast {i}" for i in range(8)]


def teach_then_poison(running: RunningLoop) -> Manifest:
    """Teach sports and finance with a registered sports probe (texts never trained on: a probe's texts are
    held out wherever they come), snapshot that, then stream the two labels swapped; returns the snapshot
    taken before the poison."""
    # Eight texts: all of them going wrong is significant (0.5 ** 8), as an alarm needs.
    probe = [f"the team won the match {i} with a late goal" for i in range(8, 16)]
    running.control.put_probe("sports", [(text, "sports") for text in probe])
    producer = FeedbackProducer(running.client, running.keys)

    def add(round_: str, sports_label: str, finance_label: str) -> None:
        producer.add(
            [
                FeedbackRecord(text=t, label=sports_label, id=f"{round_}-s{i}")
                for i, t in enumerate(SPORTS[:4])
            ]
            + [
                FeedbackRecord(text=t, label=finance_label, id=f"{round_}-f{i}")
                for i, t in enumerate(FINANCE[:4])
            ]
        )

    def sports_probe_accuracy() -> float | None:
        return probe_figures(running.client, running.keys).get("sports", {}).get("accuracy")

    for round_ in range(6):
        add(f"good{round_}", "sports", "finance")
    eventually(lambda: running.loop.state.counters.applied == 48, 60, "the good examples applied")
    eventually(lambda: sports_probe_accuracy() == 1.0, 60, "the sports probe learned")
    good = running.loop.snapshot()
    for round_ in range(20):
        add(f"poison{round_}", "finance", "sports")
    return good


POISON_CONFIG = LearnerConfig(strategy="sgd", lr=3e-3, eval_every=1, probe_fraction=0.0)


def test_the_rollback_policy_returns_to_the_last_snapshot_without_an_alarm(
    tiny_encoder: Encoder, redis_client: redis.Redis, key_prefix: str, tmp_path: Path
) -> None:
    keys = StreamKeys(key_prefix, "m")
    with start_loop(
        tiny_encoder, redis_client, keys, tmp_path, POISON_CONFIG, alarm_policy=AlarmPolicy.ROLLBACK
    ) as running:
        good = teach_then_poison(running)

        def rollback_announcements() -> list[dict]:
            return [v for v in recent_versions(running.client, keys) if v.get("rolled_back_to")]

        eventually(lambda: rollback_announcements() != [], 120, "a rollback by the alarm policy")
        first = rollback_announcements()[-1]
        assert first["rolled_back_to"] == good.id
        assert running.loop.state.counters.rollbacks >= 1
        assert running.control.state().paused is None
        store = running.loop.store
        restored = store.load(first["snapshot_id"], only=[MODEL]).tensors[MODEL]
        assert all(torch.equal(restored[k], v) for k, v in model_tensors(store, good).items())


def test_the_pause_policy_pauses_learning_as_an_operator_would(
    tiny_encoder: Encoder, redis_client: redis.Redis, key_prefix: str, tmp_path: Path
) -> None:
    keys = StreamKeys(key_prefix, "m")
    with start_loop(
        tiny_encoder, redis_client, keys, tmp_path, POISON_CONFIG, alarm_policy=AlarmPolicy.PAUSE
    ) as running:
        teach_then_poison(running)
        eventually(lambda: running.loop.status == "paused", 120, "the alarm policy to pause learning")
        assert running.control.state().paused.startswith("forgetting alarm")
        assert running.loop.state.counters.rollbacks == 0


def test_weights_a_poisoned_burst_broke_are_never_served_and_replicas_keep_the_passing_version(
    tiny_encoder: Encoder, tiny_model_dir: Path, redis_client: redis.Redis, key_prefix: str, tmp_path: Path
) -> None:
    keys = StreamKeys(key_prefix, "m")
    config = LearnerConfig(strategy="sgd", lr=3e-3, eval_every=1000, probe_fraction=0.0)
    with start_loop(tiny_encoder, redis_client, keys, tmp_path, config, publish_every_s=0.1) as running:
        holder = ModelHolder(str(tiny_model_dir), running.loop.store, running.loop.published)
        probe = [f"the team won the match {i} with a late goal" for i in range(8, 16)]

        def served_sports_right() -> int:
            holder.refresh()
            return [p.label for p in holder.current.predict(probe, top_k=1)].count("sports")

        teach_then_poison(running)
        eventually(lambda: running.loop.state.counters.held_back >= 1, 120, "weights held back")
        eventually(lambda: running.applied() == 48 + 160, 120, "the poison applied")
        learned = [p.label for p in running.learner.predict(probe)].count("sports")
        assert learned <= 1, "the learner's own weights took the poison"
        held = running.loop.snapshot()
        assert held.info["promoted"] is False

        assert served_sports_right() >= 2, "a version that passed is served"
        assert holder.current.version < held.version
        announced = {v["snapshot_id"] for v in recent_versions(running.client, keys)}
        assert held.id not in announced
        assert "label 'sports'" in read_held_back(running.client, keys)["reason"]


def test_a_snapshot_store_failing_in_any_way_is_retried_and_nothing_is_lost(
    tiny_encoder: Encoder, redis_client: redis.Redis, key_prefix: str, tmp_path: Path
) -> None:
    keys = StreamKeys(key_prefix, "m")
    config = {"snapshot_every": 2, "snapshot_retry_s": 0.1}
    with start_loop(tiny_encoder, redis_client, keys, tmp_path, **config) as running:
        write, failures = running.loop.store.write, []

        # An object store's client raises its own errors, not OSError; the fault is simulated here.
        def failing_twice(*args: object, **kwargs: object) -> Manifest:
            if len(failures) < 2:
                failures.append(ValueError("the object store answered 500"))
                raise failures[-1]
            return write(*args, **kwargs)

        running.loop.store.write = failing_twice
        running.feed(24)
        eventually(lambda: running.loop.store.list() != [], 60, "a snapshot once the store works again")
        eventually(lambda: running.client.xpending(keys.feedback, "learners")["pending"] == 0, 60, "acks")
        assert len(failures) == 2 and running.loop.state.counters.snapshot_failures == 2
        assert running.applied() == 24


def test_learning_goes_on_while_a_snapshot_is_written_and_is_acknowledged_once_a_snapshot_holds_it(
    tiny_encoder: Encoder, redis_client: redis.Redis, key_prefix: str, tmp_path: Path
) -> None:
    keys = StreamKeys(key_prefix, "m")
    with start_loop(tiny_encoder, redis_client, keys, tmp_path, snapshot_every=1) as running:
        write, disk_ready, writing = running.loop.store.write, threading.Event(), threading.Event()

        def slow_disk(*args: object, **kwargs: object) -> Manifest:
            writing.set()
            disk_ready.wait(60)
            return write(*args, **kwargs)

        def pending() -> int:
            return redis_client.xpending(keys.feedback, "learners")["pending"]

        running.loop.store.write = slow_disk
        running.feed(16)
        eventually(writing.is_set, 60, "a snapshot being written")
        running.feed(16)
        eventually(lambda: running.applied() == 32, 60, "feedback learned while the snapshot is written")
        assert pending() == 32, "acknowledged before a snapshot holding it was durable"

        disk_ready.set()
        eventually(lambda: pending() == 0, 60, "everything acknowledged once snapshots hold it")
    first = min(running.loop.store.list(), key=lambda manifest: manifest.version)
    last_entry = redis_client.xrevrange(keys.feedback, count=1)[0][0].decode()
    assert first.info["cursor"] != last_entry, "the first snapshot was taken before the later feedback"


def test_a_learner_that_lost_its_lease_while_writing_acknowledges_and_announces_nothing(
    tiny_encoder: Encoder, redis_client: redis.Redis, key_prefix: str, tmp_path: Path
) -> None:
    keys = StreamKeys(key_prefix, "m")
    with start_loop(tiny_encoder, redis_client, keys, tmp_path, snapshot_every=2) as running:
        write, taken = running.loop.store.write, []

        # Another learner took the lease while this one wrote (a pause longer than the lease's ttl).
        def overtaken(*args: object, **kwargs: object) -> Manifest:
            manifest = write(*args, **kwargs)
            redis_client.set(keys.lease, "the-new-holder", px=60_000)
            taken.append(manifest)
            return manifest

        running.loop.store.write = overtaken
        eventually(lambda: running.loop.leading, 60, "the learner to lead")
        running.feed(24)
        eventually(lambda: taken and not running.loop.leading, 60, "the learner to step down")
    assert len(taken) == 1, "it stopped after the write that overlapped the new holder's lease"
    assert redis_client.xpending(keys.feedback, "learners")["pending"] > 0, "nothing was acknowledged"
    assert all(event["snapshot_id"] != taken[0].id for event in recent_versions(redis_client, keys))
    assert redis_client.get(keys.lease) == b"the-new-holder"


@pytest.mark.parametrize(("mix_window", "mixed"), [(48, True), (0, False)])
def test_a_file_sorted_by_label_posted_at_once_is_learned_in_mixed_micro_batches(
    tiny_encoder: Encoder,
    redis_client: redis.Redis,
    key_prefix: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    mix_window: int,
    mixed: bool,
) -> None:
    keys = StreamKeys(key_prefix, "m")
    with start_loop(tiny_encoder, redis_client, keys, tmp_path, mix_window=mix_window) as running:
        taken: list[set[str]] = []
        learn = running.learner.learn
        monkeypatch.setattr(
            running.learner,
            "learn",
            lambda examples: taken.append({e.label for e in examples}) or learn(examples),
        )
        nightly = [
            FeedbackRecord(text=f"{label} story number {i} about {label}", label=label, id=f"{label}-{i}")
            for label in LABELS
            for i in range(16)
        ]
        FeedbackProducer(running.client, keys).add(nightly)  # one request: all of it waits at once
        eventually(lambda: running.applied() == 48, 60, "the file applied")
    assert len(taken) == 6
    if mixed:
        assert all(len(labels) >= 2 for labels in taken), taken
    else:
        assert all(len(labels) == 1 for labels in taken), taken
