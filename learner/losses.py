"""Losses over an open label set.

`ce` is plain cross-entropy over every label seen so far. `ace` is the asymmetric cross-entropy of ER-ACE
(Caccia et al., 2022): for incoming examples the softmax runs only over the labels present in the batch, so
a new distribution's labels do not push down the logits of old ones; replayed examples use every label.
It needs no task ids: the batch's own labels are the mask.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor
from torch.nn import functional

LossKind = Literal["ce", "ace"]


def classification_loss(logits: Tensor, targets: Tensor, kind: LossKind, replayed: Tensor) -> Tensor:
    """Mean loss over the batch; `replayed` marks the rows drawn from the replay buffer."""
    if kind == "ce":
        return functional.cross_entropy(logits, targets)
    if kind != "ace":
        raise ValueError(f"loss must be 'ce' or 'ace', got {kind!r}")
    incoming = ~replayed
    present = torch.zeros(logits.shape[1], dtype=torch.bool)
    present[targets[incoming]] = True
    masked = logits[incoming].masked_fill(~present, float("-inf"))
    total = functional.cross_entropy(masked, targets[incoming], reduction="sum")
    if replayed.any():
        total = total + functional.cross_entropy(logits[replayed], targets[replayed], reduction="sum")
    return total / len(targets)
