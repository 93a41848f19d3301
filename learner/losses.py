"""Losses over an open label set, and which labels a step's loss touches.

`ce` is plain cross-entropy over every label seen so far. `ace` is the asymmetric cross-entropy of ER-ACE
(Caccia et al., 2022): for incoming examples the softmax runs only over the labels present among them, so
a new distribution's labels do not push down the logits of old ones; replayed examples use every label.
It needs no task ids: the step's own labels are the mask.

Feedback often arrives one example, or one label, at a time. Over a single label `ace` is exactly zero, so
such a step would teach nothing and still move the weights through the optimizer's momentum. When the
incoming examples hold one label, the mask therefore spans the labels of the whole step (incoming and
replayed); when that is still one label, the step falls back to `ce` over every known label. When the
model knows a single label there is nothing to learn: the step carries no signal and is not taken.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor
from torch.nn import functional

LossKind = Literal["ce", "ace"]


@dataclass(frozen=True)
class StepLoss:
    """The loss of one step and the head rows (labels) it touched; `loss` is None when the step carries no
    signal."""

    loss: Tensor | None
    touched: Tensor


def classification_loss(logits: Tensor, targets: Tensor, kind: LossKind, replayed: Tensor) -> StepLoss:
    """Mean loss over the step; `replayed` marks the rows drawn from the replay buffer."""
    if kind not in ("ce", "ace"):
        raise ValueError(f"loss must be 'ce' or 'ace', got {kind!r}")
    labels = logits.shape[1]
    everything = torch.ones(labels, dtype=torch.bool, device=logits.device)
    if labels < 2:
        return StepLoss(None, torch.zeros_like(everything))
    incoming = ~replayed
    present = torch.zeros_like(everything)
    present[targets[incoming]] = True
    if kind == "ace" and int(present.sum()) < 2:
        present[targets] = True  # one incoming label: let the replayed labels be its competition
    if kind == "ce" or int(present.sum()) < 2:
        return StepLoss(functional.cross_entropy(logits, targets), everything)
    masked = logits[incoming].masked_fill(~present, float("-inf"))
    total = functional.cross_entropy(masked, targets[incoming], reduction="sum")
    touched = present
    if replayed.any():
        total = total + functional.cross_entropy(logits[replayed], targets[replayed], reduction="sum")
        touched = everything
    return StepLoss(total / len(targets), touched)
