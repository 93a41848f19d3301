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

The mask is decided over the whole step (`plan_loss`), and each example adds its own term: a step computed in
several forward passes (`pass_loss`) sums to the loss of the step in one.
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


@dataclass(frozen=True)
class LossPlan:
    """How a step's examples are scored: the labels an incoming example's softmax runs over (None: every
    label), the head rows the loss touches, and how many examples the mean is over."""

    incoming_labels: Tensor | None
    touched: Tensor
    examples: int


def plan_loss(targets: Tensor, kind: LossKind, replayed: Tensor, labels: int) -> LossPlan | None:
    """The plan for a step of `targets` over `labels` head rows; None when the step carries no signal."""
    if kind not in ("ce", "ace"):
        raise ValueError(f"loss must be 'ce' or 'ace', got {kind!r}")
    if labels < 2:
        return None
    everything = torch.ones(labels, dtype=torch.bool, device=targets.device)
    present = torch.zeros_like(everything)
    present[targets[~replayed]] = True
    if kind == "ace" and int(present.sum()) < 2:
        present[targets] = True  # one incoming label: let the replayed labels be its competition
    if kind == "ce" or int(present.sum()) < 2:
        return LossPlan(None, everything, len(targets))
    return LossPlan(present, everything if bool(replayed.any()) else present, len(targets))


def pass_loss(plan: LossPlan, logits: Tensor, targets: Tensor, replayed: Tensor) -> Tensor:
    """These examples' share of the step's mean loss: their terms summed, over the step's example count."""
    if plan.incoming_labels is None:
        total = functional.cross_entropy(logits, targets, reduction="sum")
    else:
        incoming = ~replayed
        masked = logits[incoming].masked_fill(~plan.incoming_labels, float("-inf"))
        total = functional.cross_entropy(masked, targets[incoming], reduction="sum")
        if replayed.any():
            total = total + functional.cross_entropy(logits[replayed], targets[replayed], reduction="sum")
    return total / plan.examples


def classification_loss(logits: Tensor, targets: Tensor, kind: LossKind, replayed: Tensor) -> StepLoss:
    """Mean loss over the step; `replayed` marks the rows drawn from the replay buffer."""
    plan = plan_loss(targets, kind, replayed, logits.shape[1])
    if plan is None:
        return StepLoss(None, torch.zeros(logits.shape[1], dtype=torch.bool, device=logits.device))
    return StepLoss(pass_loss(plan, logits, targets, replayed), plan.touched)
