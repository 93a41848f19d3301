"""`sgd`: plain fine-tuning with AdamW, the baseline every other strategy is measured against."""

from __future__ import annotations

from learner.strategies.base import Strategy, register


@register("sgd")
class Sgd(Strategy):
    """plain fine-tuning of every parameter with AdamW"""
