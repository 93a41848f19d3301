"""Prequential (test-then-train) accuracy: each incoming example is scored by the model as it stood just
before learning from it, as River and MOA report a stream.

It shows how fast the learner adapts; the probe evaluations show what it kept. The score comes from the
training step's own forward pass, before the update and before a new label's row is added (a label the
model has never seen counts as a miss), so it costs nothing extra. That forward runs in training mode:
with dropout on, it reads slightly below what the same weights would score in evaluation.
"""

from __future__ import annotations

from collections import deque
from typing import Any

WINDOW = 1000


class PrequentialAccuracy:
    """Hits over every scored example, over the last `WINDOW`, and per true label."""

    def __init__(self) -> None:
        self.hits = 0
        self.total = 0
        self.recent: deque[bool] = deque(maxlen=WINDOW)
        self.per_label: dict[str, list[int]] = {}

    def record(self, predicted: list[str | None], labels: list[str]) -> None:
        for guess, label in zip(predicted, labels, strict=True):
            hit = guess == label
            self.hits += hit
            self.total += 1
            self.recent.append(hit)
            counts = self.per_label.setdefault(label, [0, 0])
            counts[0] += hit
            counts[1] += 1

    def report(self) -> dict[str, Any]:
        """`cumulative` and `last_1000` accuracy (None before any example), `scored`, and `per_label`."""
        return {
            "cumulative": self.hits / self.total if self.total else None,
            "last_1000": sum(self.recent) / len(self.recent) if self.recent else None,
            "scored": self.total,
            "per_label": {
                label: {"accuracy": hits / seen, "scored": seen}
                for label, (hits, seen) in sorted(self.per_label.items())
            },
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "hits": self.hits,
            "total": self.total,
            "recent": list(self.recent),
            "per_label": self.per_label,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.hits, self.total = int(state["hits"]), int(state["total"])
        self.recent = deque((bool(hit) for hit in state["recent"]), maxlen=WINDOW)
        self.per_label = {label: [int(h), int(n)] for label, (h, n) in state["per_label"].items()}
