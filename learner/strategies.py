"""Update strategies: the optimizer, whether MIGU gates the encoder, whether replay mixes in old examples."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from learner.gated_adamw import GatedAdamW


@dataclass(frozen=True)
class Strategy:
    """`gated`: MIGU row gating of the encoder's linear layers; `replay`: reservoir experience replay."""

    name: str
    gated: bool
    replay: bool

    @classmethod
    def parse(cls, name: str) -> Strategy:
        if name not in STRATEGIES:
            raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
        return STRATEGIES[name]

    def optimizer(self, groups: list[dict[str, Any]], weight_decay: float) -> torch.optim.Optimizer:
        """AdamW for every strategy; the gated one skips masked rows' weights and optimizer state."""
        if self.gated:
            return GatedAdamW(groups, weight_decay=weight_decay)
        return torch.optim.AdamW(groups, weight_decay=weight_decay)


STRATEGIES = {
    "sgd": Strategy("sgd", gated=False, replay=False),
    "migu": Strategy("migu", gated=True, replay=False),
    "replay": Strategy("replay", gated=False, replay=True),
    "migu+replay": Strategy("migu+replay", gated=True, replay=True),
}


def swap_parameter(optimizer: torch.optim.Optimizer, old: nn.Parameter, new: nn.Parameter) -> None:
    """Point the optimizer at a grown parameter, keeping the old rows' state and zero state for new rows."""
    for group in optimizer.param_groups:
        for i, param in enumerate(group["params"]):
            if param is old:
                group["params"][i] = new
    state = optimizer.state.pop(old, None)
    if state is None:
        return
    optimizer.state[new] = {
        key: _grow_rows(value, old.shape[0], new.shape[0]) for key, value in state.items()
    }


def _grow_rows(value: object, old_rows: int, new_rows: int) -> object:
    if not isinstance(value, torch.Tensor) or value.ndim == 0 or value.shape[0] != old_rows:
        return value
    padding = value.new_zeros((new_rows - old_rows, *value.shape[1:]))
    return torch.cat([value, padding])
