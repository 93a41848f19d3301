"""Strategies are plug-ins: a new one is a `Strategy` subclass and one `register`, and everything that
chooses a strategy (the learner, the settings, their docs) finds it by name."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from app.settings import ConfigError, Settings, load_settings
from learner.encoder import tiny_bert
from learner.online import LearnerConfig, OnlineLearner
from learner.snapshots import SnapshotStore
from learner.strategies import Strategy, base, names, register

SPORTS = [f"the team won the match {i} with a late goal" for i in range(8)]
FINANCE = [f"shares fell as the bank cut its forecast {i}" for i in range(8)]


class HeadOnly(Strategy):
    """trains the head alone and leaves the encoder as it was"""

    def optimizer(self, groups: list[dict[str, Any]], weight_decay: float) -> torch.optim.Optimizer:
        head = {id(p) for p in self.context.model.head.parameters()}
        return super().optimizer([g for g in groups if all(id(p) in head for p in g["params"])], weight_decay)


@pytest.fixture
def head_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """HeadOnly registered for this test only."""
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    register("head-only")(HeadOnly)
    yield "head-only"


def test_a_registered_strategy_is_chosen_by_name_and_trains(head_only: str, tmp_path: Path) -> None:
    tokenizer, encoder = tiny_bert(seed=0)
    learner = OnlineLearner(tokenizer, encoder, LearnerConfig(strategy=head_only, lr=3e-3, probe_fraction=0))
    encoder_before = {n: p.detach().clone() for n, p in learner.model.encoder.named_parameters()}
    for _ in range(10):
        learner.train_step(SPORTS[:4] + FINANCE[:4], ["sports"] * 4 + ["finance"] * 4)

    assert isinstance(learner.strategy, HeadOnly)
    assert all(torch.equal(p, encoder_before[n]) for n, p in learner.model.encoder.named_parameters())
    assert [p.label for p in learner.predict(SPORTS[4:6] + FINANCE[4:6])] == ["sports"] * 2 + ["finance"] * 2

    saved = learner.save(SnapshotStore(tmp_path))
    again = OnlineLearner(*tiny_bert(seed=0), LearnerConfig(strategy=head_only, lr=3e-3, probe_fraction=0))
    again.restore(SnapshotStore(tmp_path).load(saved.id))
    assert [p.label for p in again.predict(SPORTS[4:6])] == ["sports"] * 2


def test_settings_accept_and_describe_a_registered_strategy(head_only: str) -> None:
    assert head_only in names()
    assert load_settings(strategy=head_only).strategy == head_only
    described = Settings.model_fields["strategy"].description
    assert described and "sgd" in described


def test_an_unknown_strategy_is_refused_with_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"RETENTIVE_STRATEGY: unknown strategy 'nope'; choose one of sgd"):
        load_settings(strategy="nope")
