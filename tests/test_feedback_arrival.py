"""Feedback posted to a real `retentive serve` with its defaults, one correction at a time or as a file sorted
by label, teaches the served model more than imprinting a head row from each label's first example does
(slow: the default model, real data)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import torch

from app.settings import Settings
from bench.arrival_service import accuracy, examples
from bench.data import read_split
from bench.service import eventually, serving
from learner.encoder import default_model_path, load_encoder
from learner.online import Example, LearnerConfig, OnlineLearner
from learner.snapshots import SnapshotStore

TASK = "agnews"


def imprinting_alone(train: list[dict[str, str]], test: list[dict[str, str]]) -> float:
    """Test accuracy of the default learner fed the same examples one per call, with nothing but
    imprinting: at a learning rate of zero only a new label's row, set from its first example, changes."""
    torch.set_num_threads(2)
    tokenizer, encoder = load_encoder(default_model_path())
    learner = OnlineLearner(tokenizer, encoder, LearnerConfig(lr=0.0, head_lr=0.0))
    for record in train:
        learner.learn([Example(record["text"], record["label"], record["id"])])
    predicted = learner.predict([record["text"] for record in test])
    return sum(p.label == r["label"] for p, r in zip(predicted, test, strict=True)) / len(test)


def taken(base: str) -> int:
    """Examples the learner has taken: trained on or held out."""
    counters = httpx.get(f"{base}/v1/model", timeout=30).json()["counters"]
    return counters.get("applied", 0) + counters.get("held_out", 0)


def post_one_at_a_time(base: str, train: list[dict[str, str]]) -> None:
    """A person labelling: each correction is posted alone once the learner has taken the one before, so
    every example reaches the learner as a micro-batch of its own."""
    for posted, record in enumerate(train, start=1):
        answer = httpx.post(f"{base}/v1/feedback", json={"examples": [record]}, timeout=30)
        assert answer.status_code == 202, answer.text
        eventually(lambda n=posted: taken(base) == n, 300, f"example {posted} taken by the learner")


def served_accuracy_after_all_updates(base: str, data_dir: Path, test: list[dict[str, str]]) -> float:
    """Wait until the replica serves weights that hold every update the learner took, then score."""
    store = SnapshotStore(Settings(data_dir=data_dir).snapshot_dir)

    def serves_every_update() -> bool:
        model = httpx.get(f"{base}/v1/model", timeout=30).json()
        served = next((m for m in store.list() if m.id == model["snapshot_id"]), None)
        return served is not None and served.info.get("updates") == model["counters"].get("updates")

    eventually(serves_every_update, 300, "the replica serving the newest weights")
    return accuracy(base, test)


@pytest.mark.slow
def test_one_correction_per_request_teaches_more_than_imprinting(cl_stream_dir: Path, tmp_path: Path) -> None:
    train = examples(TASK, per_label=12, seed=0, root=cl_stream_dir)
    test = read_split(TASK, "test", 200, root=cl_stream_dir)
    baseline = imprinting_alone(train, test)
    with serving(tmp_path) as (base, _):
        post_one_at_a_time(base, train)
        served = served_accuracy_after_all_updates(base, tmp_path, test)
    print(f"{len(train)} corrections one per request: served {served:.3f}, imprinting alone {baseline:.3f}")
    # 200 texts: one standard error of either accuracy is about 3.5 points; ask for more than twice that.
    assert served >= baseline + 0.07, (served, baseline)


@pytest.mark.slow
def test_a_file_sorted_by_label_teaches_every_label(cl_stream_dir: Path, tmp_path: Path) -> None:
    # 32 per label: most micro-batches of a sorted file then hold a single label.
    train = examples(TASK, per_label=32, seed=0, root=cl_stream_dir)
    test = read_split(TASK, "test", 200, root=cl_stream_dir)
    baseline = imprinting_alone(train, test)
    posted = sorted(train, key=lambda record: record["label"])
    with serving(tmp_path) as (base, _):
        answer = httpx.post(f"{base}/v1/feedback", json={"examples": posted}, timeout=60)
        assert answer.status_code == 202, answer.text
        eventually(lambda: taken(base) == len(posted), 600, "the whole file taken by the learner")
        served = served_accuracy_after_all_updates(base, tmp_path, test)
        predicted = httpx.post(
            f"{base}/v1/predict", json={"inputs": [r["text"] for r in test]}, timeout=300
        ).json()["predictions"]
    print(f"{len(train)} sorted by label, one request: served {served:.3f}, imprinting {baseline:.3f}")
    assert served >= baseline + 0.07, (served, baseline)
    assert {p["label"] for p in predicted} == {r["label"] for r in train}, "every label is still predicted"
