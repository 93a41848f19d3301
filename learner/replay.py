"""Experience replay: a reservoir (a fixed-size, uniform sample of everything the stream has trained on) and
the most recent examples, which give a step that holds one label its competition."""

from __future__ import annotations

import random
from collections import deque
from typing import Any


class ReservoirBuffer:
    """Keeps `capacity` (text, label) pairs, each stream example equally likely to be among them."""

    def __init__(self, capacity: int, rng: random.Random) -> None:
        if capacity < 0:
            raise ValueError(f"replay capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self.items: list[tuple[str, str]] = []
        self.seen = 0
        self._rng = rng

    def __len__(self) -> int:
        return len(self.items)

    def add(self, text: str, label: str) -> None:
        self.seen += 1
        if len(self.items) < self.capacity:
            self.items.append((text, label))
            return
        slot = self._rng.randrange(self.seen)
        if slot < self.capacity:
            self.items[slot] = (text, label)

    def sample(self, count: int) -> list[tuple[str, str]]:
        return self._rng.sample(self.items, min(count, len(self.items)))

    def state_dict(self) -> dict[str, Any]:
        return {"items": [list(item) for item in self.items], "seen": self.seen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.items = [(text, label) for text, label in state["items"]]
        self.seen = int(state["seen"])


class RecentExamples:
    """The last `capacity` examples trained on, oldest first: the labels the stream has just been teaching.

    A file sorted by label reaches the learner one label per micro-batch; against the reservoir (mostly
    older labels) such a step pushes its label up over the past, not over the labels it sits beside. Drawing
    its competition from the recent examples of other labels restores that contest, as a shuffled file
    would have it, without waiting for the file to be read whole (README, "Feedback as people send it")."""

    def __init__(self, capacity: int, rng: random.Random) -> None:
        if capacity < 0:
            raise ValueError(f"recent capacity must be >= 0, got {capacity}")
        self.items: deque[tuple[str, str]] = deque(maxlen=capacity)
        self._rng = rng

    def add(self, text: str, label: str) -> None:
        if self.items.maxlen:
            self.items.append((text, label))

    def others(self, label: str, count: int) -> list[tuple[str, str]]:
        """Up to `count` recent examples of labels other than `label`."""
        candidates = [item for item in self.items if item[1] != label]
        return self._rng.sample(candidates, min(count, len(candidates)))

    def drop_labels(self, labels: set[str]) -> None:
        kept = [item for item in self.items if item[1] not in labels]
        self.items = deque(kept, maxlen=self.items.maxlen)

    def state_dict(self) -> list[list[str]]:
        return [list(item) for item in self.items]

    def load_state_dict(self, state: list[list[str]]) -> None:
        self.items = deque(((text, label) for text, label in state), maxlen=self.items.maxlen)
