"""`migu+replay`: the gate on the encoder and replay in every step, each doing what it does alone."""

from __future__ import annotations

from learner.strategies.base import register
from learner.strategies.migu import Migu
from learner.strategies.replay import Replay


@register("migu+replay")
class MiguReplay(Migu, Replay):
    """gated steps over batches that mix in replayed examples"""
