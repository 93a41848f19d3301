"""What every strategy can change in a step, the registry of strategies by name, and plain AdamW."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from learner.gated_adamw import GatedAdamW, RowMasks


@dataclass(frozen=True)
class StrategyContext:
    """What a strategy is built from: the classifier, the learner's settings and its random generator."""

    model: nn.Module
    config: Any
    rng: random.Random


class Strategy:
    """Plain fine-tuning: AdamW on every parameter, no gate, no replay. Subclasses override the hooks they
    change and call `super()` in the ones that combine (`learned`, `discard`, `state`, `load_state`), so
    strategies compose by inheritance (`class MiguReplay(Migu, Replay)`)."""

    name: ClassVar[str] = ""

    def __init__(self, context: StrategyContext) -> None:
        self.context = context

    def optimizer(self, groups: list[dict[str, Any]], weight_decay: float) -> torch.optim.Optimizer:
        """The optimizer over `groups`. It must take row masks in `step` and per-row step counts in its state,
        as `GatedAdamW` does: the learner masks head rows and grows them one label at a time."""
        # AdamW with per-row step counts: a head row starts its own bias correction, and rows no loss
        # touched are left as they are (see `step`). With no row masks it is plain AdamW.
        return GatedAdamW(groups, weight_decay=weight_decay)

    def batch(self, texts: list[str], labels: list[str]) -> tuple[list[str], list[str]]:
        """The step's texts and labels: the incoming ones first, then anything the strategy adds."""
        return texts, labels

    @contextlib.contextmanager
    def measuring(self, attention_mask: Tensor, decide: bool = True) -> Iterator[None]:
        """Around a forward pass: what the strategy needs to see of it. `decide` is False when more forward
        passes of the same step follow (see `MiguGate.measuring`)."""
        yield

    def step(self, optimizer: torch.optim.Optimizer, row_masks: RowMasks) -> None:
        """Update the parameters, each only in the rows `row_masks` keeps (all rows of any other)."""
        optimizer.step(row_masks)

    def learned(self, texts: list[str], labels: list[str]) -> None:
        """After a step that was applied, with the incoming examples it trained on."""

    def discard(self) -> None:
        """After a step that was skipped: forget what was measured for it."""

    def forget_labels(self, labels: set[str]) -> None:
        """After an operator removed these labels: drop whatever the strategy keeps of them."""

    def keep_rates(self) -> dict[str, float]:
        """Share of rows updated by the last step, per gated layer (none for an ungated strategy)."""
        return {}

    def keep_rate(self) -> float:
        """Share of gated rows updated, over recent steps (1.0: nothing is gated)."""
        return 1.0

    def state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """Snapshot state: tensors, and JSON that is merged into the learner's state."""
        return {}, {}

    def load_state(self, tensors: dict[str, Tensor], state: dict[str, Any]) -> None:
        """Restore what `state` returned."""


_REGISTRY: dict[str, type[Strategy]] = {}


def register(name: str) -> Callable[[type[Strategy]], type[Strategy]]:
    """Class decorator: make a strategy available under `name` everywhere a strategy is chosen."""

    def add(cls: type[Strategy]) -> type[Strategy]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"strategy {name!r} is registered already")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return add


def names() -> list[str]:
    return list(_REGISTRY)


def describe() -> str:
    """Every registered strategy with the first line of its docstring, for settings and help texts."""
    lines = {name: (cls.__doc__ or "").strip().splitlines()[0] for name, cls in _REGISTRY.items()}
    return "; ".join(f"{name}: {line}" for name, line in lines.items())


def strategy_class(name: str) -> type[Strategy]:
    if name not in _REGISTRY:
        raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def make_strategy(name: str, context: StrategyContext) -> Strategy:
    return strategy_class(name)(context)
