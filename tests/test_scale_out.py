"""Scale-out end to end: three `retentive serve --no-learner` replicas and one `retentive learn` on one Redis,
sharing snapshots through an fsspec URL. Predictions go round-robin and feedback to every replica; all
replicas converge on one version and every example accepted is accounted for, once."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from bench.service import QUICK_LEARNER, eventually, learner_and_replicas
from learner.stores import open_snapshot_store
from streams.connection import connect
from streams.keys import StreamKeys
from streams.notify import latest_version
from tests.conftest import TEST_REDIS_URL
from tests.test_api import ADMIN, LABELS, call, examples

REPLICAS = 3
# One label more than the head may hold: its examples are dead-lettered, and must be counted as such.
OVERFLOW = [
    {"text": f"prune the roses and water the tulips {i}", "label": "gardening", "id": f"gardening-{i}"}
    for i in range(6)
]


@dataclass
class ScaleOut:
    replicas: list[str]
    client: redis.Redis
    keys: StreamKeys
    data_dir: Path
    snapshot_url: str
    # Versions each replica answered predictions with, in the order it answered.
    answered: dict[str, list[int]] = field(default_factory=dict)
    _turn: Iterator[str] = field(init=False)

    def __post_init__(self) -> None:
        self._turn = itertools.cycle(self.replicas)
        self.answered = {base: [] for base in self.replicas}

    def predict_on_next(self) -> None:
        """One prediction on the next replica in turn; before the first model it is refused with 409."""
        base = next(self._turn)
        response = call(base, "POST", "/v1/predict", json={"inputs": [LABELS["football"]]})
        if response.status_code == 409:
            assert response.json()["error"]["code"] == "no_labels_yet"
            return
        assert response.status_code == 200, response.text
        self.answered[base].append(response.json()["model_version"])

    def model(self, base: str | None = None) -> dict:
        return call(base or self.replicas[0], "GET", "/v1/model").json()


@pytest.fixture(scope="module")
def scale_out(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[ScaleOut]:
    data_dir = tmp_path_factory.mktemp("scale-out")
    snapshot_url = f"file://{tmp_path_factory.mktemp('shared-snapshots')}"
    name = f"rt-test-{uuid.uuid4().hex[:12]}"
    with learner_and_replicas(
        data_dir,
        REPLICAS,
        model=tiny_model_dir,
        redis_url=TEST_REDIS_URL,
        snapshot_url=snapshot_url,
        key_prefix=name,
        model_name=name,
        api_keys=f"{ADMIN}:admin",
        **QUICK_LEARNER,
        probe_fraction=0.2,
        probe_min_size=2,
        max_labels=len(LABELS),
        ledger=True,
    ) as replicas:
        client = connect(TEST_REDIS_URL, data_dir)
        try:
            yield ScaleOut(replicas, client, StreamKeys(name, name), data_dir, snapshot_url)
        finally:
            client.close()


def send_feedback(cluster: ScaleOut, batches: list[list[dict]]) -> tuple[int, int]:
    """Post each batch to the next replica in turn, a prediction after each: (accepted, duplicates)."""
    accepted = duplicates = 0
    for base, batch in zip(itertools.cycle(cluster.replicas), batches, strict=False):
        response = call(base, "POST", "/v1/feedback", json={"examples": batch})
        assert response.status_code == 202, response.text
        accepted += response.json()["accepted"]
        duplicates += response.json()["duplicates"]
        cluster.predict_on_next()
    return accepted, duplicates


def stream_ids_of(client: redis.Redis, stream: str, field_name: bytes) -> list[str]:
    return [fields[field_name].decode() for _, fields in client.xrange(stream) if field_name in fields]


def test_every_replica_converges_on_one_version_and_nothing_is_lost(scale_out: ScaleOut) -> None:
    cluster = scale_out
    learnable = examples(30)
    fed = learnable + OVERFLOW
    # The overflow label arrives last, once the head holds every other label.
    batches = [learnable[i : i + 9] for i in range(0, len(learnable), 9)] + [OVERFLOW]
    accepted, duplicates = send_feedback(cluster, batches)
    # A third of them again, spread over the replicas: every one is a duplicate, whichever replica got it.
    repeated = learnable[::3]
    accepted_again, duplicates_again = send_feedback(cluster, [repeated[i : i + 5] for i in range(0, 30, 5)])
    assert (accepted, duplicates, accepted_again, duplicates_again) == (len(fed), 0, 0, len(repeated))

    def settled() -> bool:
        cluster.predict_on_next()
        model = cluster.model()
        counters = model["counters"]
        done = sum(counters.get(name, 0) for name in ("applied", "held_out", "dead_lettered"))
        # The learner reports pending entries after it announced the snapshot that acknowledged them.
        acknowledged = counters.get("pending") == 0 and model["stream_lag"] == 0
        return done == counters.get("accepted") and acknowledged

    eventually(settled, 120, "the learner to apply or dead-letter every accepted example", every=0.3)
    announced = latest_version(cluster.client, cluster.keys)
    assert announced is not None

    def converged() -> bool:
        cluster.predict_on_next()
        return {cluster.model(base)["model_version"] for base in cluster.replicas} == {announced[0]}

    eventually(converged, 30, f"every replica to serve version {announced[0]}", every=0.3)
    assert latest_version(cluster.client, cluster.keys) == announced, "the learner went on publishing"

    # Every replica serves the same snapshot and answers alike; none ever went back to an older version.
    models = [cluster.model(base) for base in cluster.replicas]
    assert {m["snapshot_id"] for m in models} == {announced[1]}
    assert all(m["learner"] == "running" and sorted(m["labels"]) == sorted(LABELS) for m in models)
    query = {"inputs": list(LABELS.values()), "top_k": 3}
    answers = [call(base, "POST", "/v1/predict", json=query).json() for base in cluster.replicas]
    assert {a["model_version"] for a in answers} == {announced[0]}
    # Same labels and scores everywhere; only each prediction's own id differs.
    outputs = [[(p["label"], p["score"], p["top"]) for p in a["predictions"]] for a in answers]
    assert outputs[0] == outputs[1] == outputs[2]
    for base, answer in zip(cluster.replicas, answers, strict=True):
        cluster.answered[base].append(answer["model_version"])
    for base, versions in cluster.answered.items():
        assert versions, f"{base} answered no prediction"
        assert versions == sorted(versions), f"{base} went back to an older version: {versions}"

    # Accepted = trained + held out + duplicates + dead-lettered, by the service's own counters.
    counters = models[0]["counters"]
    assert counters["accepted"] == len(fed) and counters["duplicates"] == len(repeated)
    assert counters["dead_lettered"] == len(OVERFLOW)
    assert counters["applied"] > 0 and counters["held_out"] > 0
    total = sum(counters[name] for name in ("applied", "held_out", "duplicates", "dead_lettered"))
    assert total == len(fed) + len(repeated)

    # Every id fed is in the stream once and was applied (trained or held out) or dead-lettered, once.
    fed_ids = sorted(example["id"] for example in fed)
    assert sorted(stream_ids_of(cluster.client, cluster.keys.feedback, b"id")) == fed_ids
    store = open_snapshot_store(f"{cluster.snapshot_url}/snapshots/{cluster.keys.model}")
    snapshot, problems = store.load_latest_valid(only=["state"])
    assert snapshot is not None and snapshot.id == announced[1], problems
    ledger = snapshot.state["extra"]["ledger"]
    dead = stream_ids_of(cluster.client, cluster.keys.dead, b"f.id")
    assert sorted([record_id for _, record_id, _ in ledger] + dead) == fed_ids
    assert len({stream_id for stream_id, _, _ in ledger}) == len(ledger)
    assert sum(kind == "held_out" for _, _, kind in ledger) == counters["held_out"]

    # Snapshots went to the shared URL, not the data directory, and every replica lists the same ones.
    assert not (cluster.data_dir / "snapshots").exists()
    listed = [[s["id"] for s in call(base, "GET", "/v1/snapshots").json()] for base in cluster.replicas]
    assert listed[0] and listed[0] == listed[1] == listed[2] == [m.id for m in store.list()]
