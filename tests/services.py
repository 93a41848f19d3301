"""Real `retentive` processes for end-to-end tests (the launcher is shared with the benchmarks), and a first
snapshot for an API replica to serve."""

from __future__ import annotations

from app.settings import Settings
from bench.service import (
    QUICK_LEARNER,
    free_port,
    learner_and_replicas,
    serve_log,
    service_env,
    serving,
    wait_ready,
)
from learner.encoder import load_encoder
from learner.online import Example, LearnerConfig, OnlineLearner
from learner.snapshots import SnapshotStore

__all__ = [
    "QUICK_LEARNER",
    "free_port",
    "learner_and_replicas",
    "serve_log",
    "service_env",
    "serving",
    "wait_ready",
    "write_snapshot",
]


def write_snapshot(settings: Settings) -> str:
    """A snapshot that knows two labels, as a learner would have left it, so predictions answer 200."""
    tokenizer, encoder = load_encoder(settings.model)
    learner = OnlineLearner(tokenizer, encoder, LearnerConfig(probe_fraction=0.0))
    learner.learn([Example("the match ended in a draw", "sport"), Example("rates rose again", "business")])
    return learner.save(SnapshotStore(settings.snapshot_dir)).id
