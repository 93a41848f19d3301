"""What end-to-end tests share beyond the launcher in `bench.service`: a first snapshot for an API replica to
serve, and one way to call a service over HTTP."""

from __future__ import annotations

import httpx

from app.settings import Settings
from learner.encoder import load_encoder
from learner.online import Example, LearnerConfig, OnlineLearner
from learner.snapshots import SnapshotStore


def write_snapshot(settings: Settings) -> str:
    """A snapshot that knows two labels, as a learner would have left it, so predictions answer 200."""
    tokenizer, encoder = load_encoder(settings.model)
    learner = OnlineLearner(tokenizer, encoder, LearnerConfig(probe_fraction=0.0))
    learner.learn([Example("the match ended in a draw", "sport"), Example("rates rose again", "business")])
    return learner.save(SnapshotStore(settings.snapshot_dir)).id


def call(
    base: str, method: str, path: str, key: str | None = None, timeout: float = 30, **kwargs: object
) -> httpx.Response:
    """`method path` on the service at `base`, with `key` as its bearer token when given."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    headers |= kwargs.pop("headers", None) or {}
    return httpx.request(method, f"{base}{path}", headers=headers, timeout=timeout, **kwargs)
