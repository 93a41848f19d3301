"""Reservoir experience replay: a fixed-size, uniform sample of everything the stream has trained on."""

from __future__ import annotations

import random
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
