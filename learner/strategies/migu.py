"""`migu`: magnitude-gated updates. Forward hooks measure each row's output of the encoder's linear layers;
only the rows above the per-layer quantile get a gradient step and optimizer-state update."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import Tensor

from learner.gated_adamw import RowMasks
from learner.migu import MiguGate
from learner.strategies.base import Strategy, StrategyContext, register

_PREFIX = "gate."


@register("migu")
class Migu(Strategy):
    """gated updates: only the encoder rows with the largest outputs are updated"""

    def __init__(self, context: StrategyContext) -> None:
        super().__init__(context)
        model, config = context.model, context.config
        # Never gate the head (a new label's row starts small and would never learn) or the unused pooler.
        pooler = getattr(model.encoder, "pooler", None)
        self.gate = MiguGate(
            model,
            config.quantile,
            exclude=[model.head, *([pooler] if pooler is not None else [])],
            ema=config.gate_ema,
            warmup_steps=config.gate_warmup,
            exclude_padding=not config.gate_padding,
        )

    def measuring(self, attention_mask: Tensor, decide: bool = True) -> AbstractContextManager[None]:
        return self.gate.measuring(attention_mask, decide)

    def step(self, optimizer: torch.optim.Optimizer, row_masks: RowMasks) -> None:
        # The gate covers the encoder, the head's masks come from the loss: they never share a parameter.
        super().step(optimizer, {**self.gate.row_masks(), **row_masks})

    def discard(self) -> None:
        super().discard()
        self.gate.discard()

    def keep_rates(self) -> dict[str, float]:
        return {layer: stats["keep_rate"] for layer, stats in self.gate.last_stats().items()}

    def keep_rate(self) -> float:
        return self.gate.keep_rate()

    def state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        tensors, state = super().state()
        return {**tensors, **{_PREFIX + key: value for key, value in self.gate.state_dict().items()}}, state

    def load_state(self, tensors: dict[str, Tensor], state: dict[str, Any]) -> None:
        super().load_state(tensors, state)
        self.gate.load_state_dict(
            {key.removeprefix(_PREFIX): value for key, value in tensors.items() if key.startswith(_PREFIX)}
        )
