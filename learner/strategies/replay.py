"""`replay`: every step also trains on examples drawn from a reservoir of everything trained on before,
which keeps old labels competing in the head while new ones arrive. A step whose incoming examples hold one
label (a correction posted alone, a file sorted by label) also draws `recent_ratio` recent examples of other
labels per incoming one (`learner.replay.RecentExamples`), so it teaches its label against the ones the stream
sits among."""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from learner.replay import RecentExamples, ReservoirBuffer
from learner.strategies.base import Strategy, StrategyContext, register


@register("replay")
class Replay(Strategy):
    """every step also trains on examples drawn from a reservoir of earlier ones"""

    def __init__(self, context: StrategyContext) -> None:
        super().__init__(context)
        self.buffer = ReservoirBuffer(context.config.replay_size, context.rng)
        self.recent = RecentExamples(context.config.recent_size, context.rng)
        self.ratio = context.config.replay_ratio
        self.recent_ratio = context.config.recent_ratio

    def batch(self, texts: list[str], labels: list[str]) -> tuple[list[str], list[str]]:
        texts, labels = super().batch(texts, labels)
        # Rounded up, so that a single example still has company to compete with.
        replayed = self.buffer.sample(math.ceil(len(texts) * self.ratio))
        if len(set(labels)) == 1:
            replayed += self.recent.others(labels[0], math.ceil(len(texts) * self.recent_ratio))
        return texts + [text for text, _ in replayed], labels + [label for _, label in replayed]

    def learned(self, texts: list[str], labels: list[str]) -> None:
        super().learned(texts, labels)
        for text, label in zip(texts, labels, strict=True):
            self.buffer.add(text, label)
            self.recent.add(text, label)

    def forget_labels(self, labels: set[str]) -> None:
        super().forget_labels(labels)
        self.buffer.items = [(text, label) for text, label in self.buffer.items if label not in labels]
        self.recent.drop_labels(labels)

    def state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        tensors, state = super().state()
        return tensors, {**state, "replay": self.buffer.state_dict(), "recent": self.recent.state_dict()}

    def load_state(self, tensors: dict[str, Tensor], state: dict[str, Any]) -> None:
        super().load_state(tensors, state)
        if state.get("replay") is not None:
            self.buffer.load_state_dict(state["replay"])
        if state.get("recent") is not None:
            self.recent.load_state_dict(state["recent"])
