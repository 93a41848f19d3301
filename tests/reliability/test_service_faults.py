"""A real `retentive serve` under faults: its learner child killed and its Redis crashed mid-stream, a new
snapshot published while 32 clients predict, a label-flipping burst that the rollback policy undoes, a Redis
Sentinel fail-over, and two models' learners and replicas on a Redis Cluster with a learner killed."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import pytest

from app.serving import ModelHolder
from bench.service import eventually, free_port, serve_log, service_env, serving, wait_ready
from learner.encoder import load_encoder
from learner.fsspec_snapshots import FsspecSnapshotStore
from learner.online import Example, LearnerConfig, OnlineLearner
from learner.snapshots import MANIFEST_FILE, SnapshotStore, version_of
from learner.stores import open_snapshot_store
from streams.connection import connect, embedded_dir, stop_embedded
from streams.embedded import EmbeddedRedis
from streams.keys import StreamKeys
from streams.notify import publish_version
from tests.object_store import BUCKET, s3_environment, s3_server
from tests.redis_servers import needs_redis_binaries, redis_cluster, sentinel_group

pytestmark = pytest.mark.reliability

VOCABULARY = {
    "astronomy": "telescope galaxy comet planet orbit star nebula moon eclipse asteroid",
    "cooking": "butter garlic oven bread bake pan stir onion flour simmer",
    "football": "striker goal keeper penalty match kick referee corner offside league",
}
FAST_LEARNER = {
    "batch_size": 8,
    "batch_wait_s": 0.2,
    "snapshot_every": 5,
    "snapshot_every_s": 1,
    "eval_every": 5,
    "lr": 1e-3,
    "lease_ttl_ms": 2000,
    "publish_every_s": 0.5,
    "ledger": "true",
}


def texts_of(label: str, count: int, seed: int) -> list[str]:
    rng = random.Random(f"{label}-{seed}")
    words = VOCABULARY[label].split()
    return [" ".join(rng.choices(words, k=8)) for _ in range(count)]


def examples_of(label: str, count: int, seed: int, as_label: str | None = None) -> list[dict[str, str]]:
    return [
        {"text": text, "label": as_label or label, "id": f"{label}-{as_label}-{seed}-{i}"}
        for i, text in enumerate(texts_of(label, count, seed))
    ]


def clean_stream(count: int, seed: int) -> list[dict[str, str]]:
    """`count` examples of each label, interleaved."""
    per_label = [examples_of(label, count, seed) for label in VOCABULARY]
    return [example for group in zip(*per_label, strict=True) for example in group]


def model(base: str) -> dict:
    return httpx.get(f"{base}/v1/model", timeout=30).json()


def applied_everything(base: str) -> bool:
    answer = model(base)
    done = sum(answer["counters"].get(name, 0) for name in ("applied", "held_out", "dead_lettered"))
    return done == answer["counters"]["accepted"] and answer["stream_lag"] == 0


def final_ledger(data_dir: Path) -> list[list[str]]:
    snapshot, problems = SnapshotStore(data_dir / "snapshots" / "default").load_latest_valid(only=["state"])
    assert snapshot is not None, problems
    return snapshot.state["extra"]["ledger"]


@dataclass
class Traffic:
    """Clients that keep posting feedback (with ids, retrying what was refused) and asking for predictions."""

    base: str
    stop: threading.Event = field(default_factory=threading.Event)
    accepted: set[str] = field(default_factory=set)
    feedback: list[tuple[float, int]] = field(default_factory=list)
    predictions: list[tuple[float, int]] = field(default_factory=list)
    unexplained: list[str] = field(default_factory=list)

    def post_feedback(self) -> None:
        with httpx.Client(base_url=self.base, timeout=60) as client:
            batch = 0
            while not self.stop.is_set():
                examples = clean_stream(4, seed=1000 + batch)
                response = client.post("/v1/feedback", json={"examples": examples})
                self.feedback.append((time.monotonic(), response.status_code))
                if response.status_code == 202:
                    self.accepted.update(response.json()["stream_ids"])
                    batch += 1
                elif response.status_code == 503 and response.headers.get("retry-after"):
                    time.sleep(0.2)  # the same batch again: its ids make a repeat harmless
                else:
                    self.unexplained.append(response.text)
                time.sleep(0.1)

    def predict(self) -> None:
        with httpx.Client(base_url=self.base, timeout=60) as client:
            while not self.stop.is_set():
                response = client.post("/v1/predict", json={"inputs": texts_of("cooking", 2, 0)})
                self.predictions.append((time.monotonic(), response.status_code))

    def statuses(self, kind: list[tuple[float, int]], start: float, end: float) -> Counter:
        return Counter(status for at, status in kind if start <= at < end)


def run_in_threads(*targets: Callable[[], None]) -> list[threading.Thread]:
    threads = [threading.Thread(target=target, daemon=True) for target in targets]
    for thread in threads:
        thread.start()
    return threads


@pytest.mark.parametrize("rounds", [1, pytest.param(5, marks=pytest.mark.long)], ids=["once", "five times"])
def test_learner_killed_and_redis_crashed_mid_stream(
    tmp_path: Path, tiny_model_dir: Path, rounds: int
) -> None:
    """Each round kills the learner child, then crashes Redis (SIGKILL) for 6 s. Predictions never fail;
    feedback is accepted while the learner is away and refused with 503 and Retry-After while Redis is;
    every accepted example ends up applied, exactly once."""
    data_dir = tmp_path / "data"
    learner_away: list[tuple[float, float]] = []
    redis_away: list[tuple[float, float]] = []
    with serving(data_dir, model=tiny_model_dir, **FAST_LEARNER) as (base, process):
        traffic = Traffic(base)
        feeder = run_in_threads(traffic.post_feedback)
        eventually(lambda: model(base)["model_version"] is not None, 120, "a first model")
        predictor = run_in_threads(traffic.predict)
        for _ in range(rounds):
            time.sleep(2)
            [child] = psutil.Process(process.pid).children()
            killed = time.monotonic()
            child.kill()
            eventually(lambda: model(base)["learner"] == "absent", 30, "the learner to be seen gone")
            eventually(lambda: model(base)["learner"] == "running", 120, "a new learner child")
            learner_away.append((killed, time.monotonic()))
            time.sleep(2)

            server = EmbeddedRedis(embedded_dir(data_dir))
            crashed = time.monotonic()
            os.kill(int(server.pidfile.read_text()), signal.SIGKILL)
            time.sleep(6)
            server.start()  # unless the restarted learner child already brought it back
            redis_away.append((crashed, time.monotonic()))
            eventually(lambda: model(base)["learner"] == "running", 120, "the learner after the crash")
        time.sleep(3)
        traffic.stop.set()
        for thread in feeder + predictor:
            thread.join(timeout=90)
        eventually(lambda: applied_everything(base), 180, "every accepted example applied")
        counters = model(base)["counters"]
    assert not traffic.unexplained
    assert {status for _, status in traffic.predictions} == {200}
    for start, end in learner_away:
        assert set(traffic.statuses(traffic.feedback, start, end)) <= {202}
    outages = [traffic.statuses(traffic.feedback, start, end) for start, end in redis_away]
    assert all(outage[503] > 0 for outage in outages), outages
    ledger = final_ledger(data_dir)
    applied = Counter(stream_id for stream_id, _, _ in ledger)
    assert max(applied.values()) == 1
    assert traffic.accepted <= set(applied)
    assert len(ledger) == counters["accepted"] == len(traffic.accepted)
    print(
        f"{rounds} learner kills and {rounds} Redis crashes: {len(traffic.predictions)} predictions, all "
        f"200; {len(traffic.accepted)} examples accepted, all applied once; feedback while Redis was "
        f"down: {sum(outages, Counter())}"
    )


def two_models(model_dir: Path) -> tuple[OnlineLearner, OnlineLearner]:
    """Different weights and different label sets, so an answer from a mix of the two is told apart."""
    learners = []
    for seed, labels in ((1, ["astronomy", "cooking"]), (2, ["astronomy", "cooking", "football"])):
        tokenizer, encoder = load_encoder(str(model_dir))
        learner = OnlineLearner(tokenizer, encoder, LearnerConfig(lr=1e-3, probe_fraction=0.0, seed=seed))
        for step in range(4):
            learner.learn(
                [Example(t, label) for label in labels for t in texts_of(label, 4, seed * 10 + step)]
            )
        learners.append(learner)
    return learners[0], learners[1]


def test_a_snapshot_published_while_32_clients_predict_is_served_whole(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    data_dir = tmp_path / "data"
    store = SnapshotStore(data_dir / "snapshots" / "default", keep=50)
    learners = two_models(tiny_model_dir)
    queries = [text for label in VOCABULARY for text in texts_of(label, 3, 99)]
    expected: list[dict[str, list[tuple[str, float]]]] = []
    holder = ModelHolder(str(tiny_model_dir), store)
    published: dict[int, tuple[str, int]] = {}
    for which, learner in enumerate(learners):
        manifest = learner.save(store, version=which + 1)
        published[manifest.version] = (manifest.id, which)
        holder.refresh()
        predicted = holder.current.predict(queries, top_k=3)
        tops = [[(scored.label, scored.score) for scored in answer.top] for answer in predicted]
        expected.append(dict(zip(queries, tops, strict=True)))
    first = learners[0].save(store, version=3)
    published[3] = (first.id, 0)

    with serving(data_dir, "--no-learner", model=tiny_model_dir) as (base, _):
        client = connect("", data_dir)
        stop = threading.Event()
        answers: list[tuple[list[str], httpx.Response]] = []

        def predictor(seed: int) -> None:
            rng = random.Random(seed)
            with httpx.Client(base_url=base, timeout=60) as http:
                while not stop.is_set():
                    texts = rng.sample(queries, rng.randint(1, 3))
                    answers.append((texts, http.post("/v1/predict", json={"inputs": texts, "top_k": 3})))

        threads = run_in_threads(*(lambda seed=seed: predictor(seed) for seed in range(32)))
        for version in range(4, 16):
            which = version % 2
            manifest = learners[which].save(store, version=version)
            published[version] = (manifest.id, which)
            publish_version(client, StreamKeys(), version, manifest.id)
            time.sleep(0.7)
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        client.close()

    assert answers and {response.status_code for _, response in answers} == {200}
    seen = Counter()
    for texts, response in answers:
        body = response.json()
        snapshot_id, which = published[body["model_version"]]
        assert body["snapshot_id"] == snapshot_id
        seen[body["model_version"]] += 1
        for text, prediction in zip(texts, body["predictions"], strict=True):
            want = expected[which][text]
            got = [(scored["label"], scored["score"]) for scored in prediction["top"]]
            assert [label for label, _ in got] == [label for label, _ in want]
            assert [score for _, score in got] == pytest.approx([score for _, score in want], abs=1e-4)
    assert len(seen) >= 8, seen
    print(f"{len(answers)} predictions from 32 clients over {len(seen)} versions, each answered whole")


def golden_accuracy(base: str) -> float | None:
    probes = httpx.get(f"{base}/v1/probes", timeout=30).json()
    return next((p["accuracy"] for p in probes if p["name"] == "golden"), None)


def test_a_label_flipping_burst_is_caught_and_rolled_back(tmp_path: Path, tiny_model_dir: Path) -> None:
    data_dir = tmp_path / "data"
    settings = {
        **FAST_LEARNER,
        "snapshot_every_s": 3600,  # snapshots only at evaluations, so each one knows its own alarms
        "probe_fraction": 0,
        "loss": "ce",
        "alarm_policy": "rollback",
        "snapshot_keep": 100,
    }
    with serving(data_dir, model=tiny_model_dir, **settings) as (base, _):
        # Twelve texts a label: a flipped label's twelve going wrong is significant (0.5 ** 12), where six
        # would not be at the alarm's 0.01 level.
        golden = [{"text": t, "label": label} for label in VOCABULARY for t in texts_of(label, 12, 7)]
        assert httpx.put(f"{base}/v1/probes/golden", json={"examples": golden}).status_code == 201
        for seed in range(5):
            httpx.post(f"{base}/v1/feedback", json={"examples": clean_stream(8, seed)}, timeout=30)
        eventually(lambda: (golden_accuracy(base) or 0) >= 0.9, 180, "the golden probe learned")
        eventually(lambda: model(base)["stream_lag"] == 0, 60, "the clean stream applied")

        flipped = examples_of("astronomy", 120, 50, as_label="cooking")
        football = examples_of("football", 120, 50)
        burst = [example for pair in zip(flipped, football, strict=True) for example in pair]
        for start in range(0, len(burst), 60):
            httpx.post(f"{base}/v1/feedback", json={"examples": burst[start : start + 60]}, timeout=30)
        eventually(lambda: model(base)["counters"].get("rollbacks", 0) >= 1, 180, "the rollback")
        eventually(lambda: model(base)["stream_lag"] == 0, 120, "the burst consumed")
        log = serve_log(data_dir).read_text()
    rollbacks = [line for line in log.splitlines() if '"event": "rollback"' in line]
    assert rollbacks and all('"reason": "forgetting alarm"' in line for line in rollbacks)
    assert any('"alarms": ["golden"]' in line for line in log.splitlines())
    store = SnapshotStore(data_dir / "snapshots" / "default")
    manifests = {m.id: m for m in store.list()}
    target = manifests[rollbacks[0].split('"to": "')[1].split('"')[0]]
    assert target.info["alarms"] == 0
    # Right after rolling back the learner wrote the target's weights again, as a new version.
    restored = [
        m for m in manifests.values() if m.version > target.version and m.model_sha256 == target.model_sha256
    ]
    assert restored, "no snapshot holds the rolled-back weights"
    print(f"{len(rollbacks)} rollbacks to {target.id} (mean accuracy {target.info['mean_accuracy']:.2f})")


def test_sigterm_stops_serve_and_its_learner_after_a_last_snapshot(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """A supervisor stopping the service must not leave the learner running on its own, and what the
    learner applied since its last snapshot is written before it goes."""
    data_dir = tmp_path / "data"
    settings = {**FAST_LEARNER, "snapshot_every": 1000, "snapshot_every_s": 3600}
    with serving(data_dir, model=tiny_model_dir, **settings) as (base, process):
        [child] = psutil.Process(process.pid).children()
        accepted = httpx.post(f"{base}/v1/feedback", json={"examples": clean_stream(4, 0)}, timeout=30)
        stream_ids = set(accepted.json()["stream_ids"])

        def applied() -> int:
            counters = model(base)["counters"]
            return counters.get("applied", 0) + counters.get("held_out", 0)

        eventually(lambda: applied() == len(stream_ids), 60, "the examples applied")
        assert model(base)["last_snapshot_at"] is None
        process.terminate()
        assert process.wait(timeout=90) == 0
        child.wait(timeout=10)  # it ended (its exit status is for its parent to read)
    assert {stream_id for stream_id, _, _ in final_ledger(data_dir)} == stream_ids


@pytest.mark.engines
@needs_redis_binaries
def test_a_sentinel_fail_over_moves_the_service_to_the_promoted_primary(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """The primary is killed while feedback and predictions flow; Sentinel promotes the replica and the
    service goes on there. Replication is asynchronous, so what the old primary accepted in its last moments
    and had not passed on can be lost: the test measures it, and everything else is applied exactly once."""
    data_dir = tmp_path / "data"
    with (
        sentinel_group(tmp_path / "redis") as group,
        serving(data_dir, model=tiny_model_dir, redis_url=group.url, **FAST_LEARNER) as (base, _),
    ):
        traffic = Traffic(base)
        feeder = run_in_threads(traffic.post_feedback)
        eventually(lambda: model(base)["model_version"] is not None, 120, "a first model")
        predictor = run_in_threads(traffic.predict)
        eventually(lambda: len(traffic.accepted) >= 60, 60, "feedback flowing")
        killed_at_ms = time.time() * 1000
        group.primary.kill()
        eventually(lambda: group.named_primary() == group.replica_port, 60, "the replica promoted")
        promoted = len(traffic.accepted)
        eventually(lambda: len(traffic.accepted) >= promoted + 60, 120, "feedback accepted after it")
        eventually(lambda: model(base)["learner"] == "running", 120, "the learner on the new primary")
        traffic.stop.set()
        for thread in feeder + predictor:
            thread.join(timeout=90)
        eventually(lambda: applied_everything(base), 180, "every example the new primary holds applied")
    assert not traffic.unexplained
    assert {status for _, status in traffic.predictions} == {200}
    applied = Counter(stream_id for stream_id, _, _ in final_ledger(data_dir))
    assert max(applied.values()) == 1
    lost = traffic.accepted - set(applied)
    # Only what the old primary accepted in the second before it died can have been lost with it.
    assert all(int(stream_id.split("-")[0]) >= killed_at_ms - 1000 for stream_id in lost), sorted(lost)
    kept = len(traffic.accepted) - len(lost)
    print(
        f"Sentinel fail-over: {len(traffic.accepted)} examples accepted, {kept} applied once, {len(lost)} "
        f"lost with the old primary; {len(traffic.predictions)} predictions, all 200; feedback answers "
        f"{dict(Counter(status for _, status in traffic.feedback))}"
    )


@dataclass
class ModelProcesses:
    """One model's learner and API replica, started as a team would run them, logging under `data_dir`."""

    name: str
    data_dir: Path
    env: dict[str, str]
    base: str = ""
    processes: list[subprocess.Popen] = field(default_factory=list)

    def start(self, command: list[str], **extra: str) -> subprocess.Popen:
        logs = self.data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        with (logs / f"{self.name}-{command[1]}-{len(self.processes)}.log").open("wb") as log:
            process = subprocess.Popen(command, env={**self.env, **extra}, stdout=log, stderr=log)
        self.processes.append(process)
        return process

    def start_learner(self) -> subprocess.Popen:
        return self.start(["retentive", "learn"])

    def start_replica(self) -> None:
        port = free_port()
        replica = self.start(["retentive", "serve", "--no-learner"], RETENTIVE_PORT=str(port))
        self.base = f"http://127.0.0.1:{port}"
        wait_ready(self.base, replica)

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            process.wait(timeout=60)

    def ledger(self) -> Counter:
        store = SnapshotStore(self.data_dir / "snapshots" / self.name)
        snapshot, problems = store.load_latest_valid(only=["state"])
        assert snapshot is not None, problems
        return Counter(stream_id for stream_id, _, _ in snapshot.state["extra"]["ledger"])


@pytest.mark.engines
@needs_redis_binaries
def test_two_models_on_a_redis_cluster_learn_apart_and_a_killed_learner_loses_nothing(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """Three primaries made by `redis-cli --cluster create`; a learner and a replica for each of two models,
    whose keys land on different slots. One learner is killed mid-stream and a new one resumes; every
    example accepted for either model is applied exactly once."""
    data_dir = tmp_path / "data"
    with redis_cluster(tmp_path / "redis") as cluster:
        env = service_env(data_dir, model=tiny_model_dir, redis_url=cluster.url, **FAST_LEARNER)
        models = [ModelProcesses(name, data_dir, {**env, "RETENTIVE_MODEL_NAME": name}) for name in MODELS]
        client = connect(cluster.url, data_dir)
        slots = {client.keyslot(StreamKeys("rt", name).feedback) for name in MODELS}
        assert len(slots) == len(MODELS), "each model on a slot of its own"
        try:
            for team in models:
                team.start_learner()
                team.start_replica()
            traffic = [Traffic(team.base) for team in models]
            threads = run_in_threads(*(t.post_feedback for t in traffic))
            for team in models:
                eventually(lambda team=team: model(team.base)["model_version"] is not None, 120, "a model")
            threads += run_in_threads(*(t.predict for t in traffic))
            alpha, alpha_traffic = models[0], traffic[0]
            eventually(lambda: len(alpha_traffic.accepted) >= 60, 60, "alpha's feedback flowing")
            alpha.processes[0].kill()
            eventually(lambda: model(alpha.base)["learner"] == "absent", 30, "the learner seen gone")
            alpha.start_learner()
            eventually(lambda: model(alpha.base)["learner"] == "running", 120, "a new learner for alpha")
            resumed = len(alpha_traffic.accepted)
            eventually(lambda: len(alpha_traffic.accepted) >= resumed + 60, 60, "feedback after the kill")
            for t in traffic:
                t.stop.set()
            for thread in threads:
                thread.join(timeout=90)
            for team in models:
                eventually(lambda team=team: applied_everything(team.base), 180, f"{team.name} applied")
        finally:
            for team in models:
                team.stop()
    for team, t in zip(models, traffic, strict=True):
        applied = team.ledger()
        assert not t.unexplained and {status for _, status in t.predictions} == {200}
        assert max(applied.values()) == 1 and t.accepted == set(applied), team.name
    accepted = [len(t.accepted) for t in traffic]
    print(f"Redis Cluster: {accepted} examples accepted for {MODELS}, each applied exactly once")


MODELS = ["alpha", "beta"]


def snapshot_in_progress(store: FsspecSnapshotStore) -> str | None:
    """A snapshot directory with files but no manifest yet: a write under way (or abandoned)."""
    store.fs.invalidate_cache()
    files = store.fs.find(store.path)
    directories = {path.rsplit("/", 2)[-2] for path in files}
    complete = {path.rsplit("/", 2)[-2] for path in files if path.endswith(f"/{MANIFEST_FILE}")}
    return next(iter(sorted(directories - complete)), None)


@pytest.mark.engines
def test_snapshots_in_s3_a_learner_killed_mid_write_leaves_nothing_partial_and_a_standby_resumes(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Snapshots and published weights in a real S3 API (moto's server, over HTTP, through s3fs): a learner
    writes them, two replicas follow its versions, the learner is killed while a snapshot is being written,
    and a standby resumes from the store; every accepted example is applied exactly once."""
    data_dir = tmp_path / "data"
    with s3_server(tmp_path / "s3.log") as endpoint:
        for name, value in s3_environment(endpoint).items():
            monkeypatch.setenv(name, value)
        url = f"s3://{BUCKET}/team"
        settings = {**FAST_LEARNER, "snapshot_every": 1}
        env = service_env(data_dir, model=tiny_model_dir, snapshot_url=url, **settings)
        team = ModelProcesses("default", data_dir, {**env, **s3_environment(endpoint)})
        store = open_snapshot_store(f"{url}/snapshots/default")
        try:
            active = team.start_learner()
            replicas = []
            for _ in range(2):
                team.start_replica()
                replicas.append(team.base)
            traffic = Traffic(replicas[0])
            threads = run_in_threads(traffic.post_feedback)
            eventually(lambda: model(replicas[0])["learner"] == "running", 120, "the learner running")
            standby = team.start_learner()  # it waits for the lease
            newest = lambda: store.max_version()  # noqa: E731
            eventually(lambda: newest() >= 3, 120, "snapshots in S3")
            target = newest()
            for base in replicas:
                eventually(lambda base=base: model(base)["model_version"] >= target, 60, "replicas following")
            threads += run_in_threads(traffic.predict)

            partial = None
            writing = lambda: snapshot_in_progress(store) is not None  # noqa: E731
            for _ in range(5):
                eventually(writing, 60, "a snapshot being written", 0.005)
                active.kill()
                partial = snapshot_in_progress(store)
                if partial is not None:
                    break
                # The write finished before the kill landed: the standby takes over and is killed next.
                active, standby = standby, team.start_learner()
            killed_at = len(traffic.accepted)
            eventually(lambda: len(traffic.accepted) >= killed_at + 60, 120, "feedback after the kill")
            eventually(lambda: newest() > version_of(partial or "0-0"), 120, "the standby snapshotting")
            traffic.stop.set()
            for thread in threads:
                thread.join(timeout=90)
            eventually(lambda: applied_everything(replicas[0]), 180, "every accepted example applied")
            listed = {manifest.id for manifest in store.list()}
            served = {model(base)["snapshot_id"] for base in replicas}
        finally:
            team.stop()
            stop_embedded(data_dir)
        snapshot, problems = store.load_latest_valid(only=["state"])
    assert partial is not None and partial not in listed and partial not in served, (partial, problems)
    applied = Counter(stream_id for stream_id, _, _ in snapshot.state["extra"]["ledger"])
    assert not traffic.unexplained and {status for _, status in traffic.predictions} == {200}
    assert max(applied.values()) == 1 and traffic.accepted == set(applied)
    print(
        f"S3 snapshots: learner killed while {partial} was being written; never listed nor served; "
        f"{len(traffic.accepted)} examples accepted, each applied exactly once"
    )
