"""An int8 copy served by replicas (RETENTIVE_SERVE_QUANTIZE): same answers as the float weights it was
made from, rebuilt at each swap, and refused where it cannot run."""

from __future__ import annotations

from pathlib import Path

import pytest
from torch import nn

from app.serving import ModelHolder
from app.settings import ConfigError, load_settings
from learner.encoder import tiny_bert
from learner.online import Example, LearnerConfig, OnlineLearner
from learner.snapshots import SnapshotStore

SPORTS = [f"the team won the match {i} with a late goal" for i in range(16)]
FINANCE = [f"shares fell as the bank cut its forecast {i}" for i in range(16)]


def trained_learner() -> OnlineLearner:
    tokenizer, encoder = tiny_bert(seed=0)
    learner = OnlineLearner(
        tokenizer, encoder, LearnerConfig(lr=3e-3, probe_fraction=0.0), probe_salt=b"tests"
    )
    for start in range(0, 16, 4):
        learner.learn(
            [Example(t, "sports") for t in SPORTS[start : start + 4]]
            + [Example(t, "finance") for t in FINANCE[start : start + 4]]
        )
    return learner


def quantized_holder(store: SnapshotStore) -> ModelHolder:
    holder = ModelHolder("unused", store, quantize=True)
    holder._base = tiny_bert(seed=0)
    return holder


def test_the_int8_copy_gives_the_float_models_answers_and_is_rebuilt_at_each_swap(tmp_path: Path) -> None:
    learner = trained_learner()
    store = SnapshotStore(tmp_path)
    learner.save(store)
    holder = quantized_holder(store)
    assert holder.refresh()

    texts = SPORTS + FINANCE
    served = holder.current.predict(texts, top_k=2)
    learned = learner.predict(texts, top_k=2)
    assert [p.label for p in served] == [p.label for p in learned]
    assert [p.score for p in served] == pytest.approx([p.score for p in learned], abs=0.05)
    encoder = holder.current.classifier.encoder
    assert not [name for name, module in encoder.named_modules() if type(module) is nn.Linear]

    learner.learn([Example("a new label arrives with this text", "weather")])
    learner.save(store)
    assert holder.refresh()
    assert holder.current.classifier.labels == ["sports", "finance", "weather"]
    assert holder.current.predict(["a new label arrives with this text"], top_k=1)[0].label == "weather"


def test_quantizing_for_a_gpu_replica_is_refused_naming_both_settings() -> None:
    with pytest.raises(
        ConfigError, match=r"RETENTIVE_SERVE_QUANTIZE: .*RETENTIVE_API_DEVICE is cuda"
    ) as raised:
        load_settings(serve_quantize=True, api_device="cuda")
    assert "set RETENTIVE_API_DEVICE=cpu or RETENTIVE_SERVE_QUANTIZE=false" in str(raised.value)
    assert load_settings(serve_quantize=True, api_device="auto").serving_device() == "cpu"
    assert load_settings(serve_quantize=False, api_device="auto").serving_device() == "auto"
