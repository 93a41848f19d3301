"""The forgetting signal through a real `retentive serve`: a model that cannot change raises no alarm."""

from __future__ import annotations

import random
from pathlib import Path

import httpx

from bench.service import eventually, serving

LABELS = [f"topic{i:02d}" for i in range(24)]
WORDS = [
    "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota",
    "kappa", "lambda", "mu", "nu", "xi", "pi", "rho", "sigma",
]  # fmt: skip


def stream(count: int, seed: int = 0) -> list[dict[str, str]]:
    """`count` examples cycling through every label, each text a label word among random words."""
    rng = random.Random(seed)
    labels = [LABELS[i % len(LABELS)] for i in range(count)]
    return [{"text": f"{label} " + " ".join(rng.choices(WORDS, k=6)), "label": label} for label in labels]


def test_a_model_that_cannot_change_raises_no_alarm_over_thousands_of_examples(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    # Learning rates so small the weights cannot move; every label is imprinted in the first batches, long
    # before any probe set holds the 50 examples it needs to be evaluated.
    settings = {"lr": 1e-12, "head_lr": 1e-12, "probe_fraction": 0.2, "eval_every": 5}
    with serving(tmp_path, model=tiny_model_dir, **settings) as (base, _):
        examples = stream(9600)
        for start in range(0, len(examples), 100):
            answer = httpx.post(f"{base}/v1/feedback", json={"examples": examples[start : start + 100]})
            assert answer.status_code == 202, answer.text

        def taken() -> bool:
            counters = httpx.get(f"{base}/v1/model", timeout=30).json()["counters"]
            return counters.get("applied", 0) + counters.get("held_out", 0) == len(examples)

        eventually(taken, 600, "every example taken by the learner")
        matrix = httpx.get(f"{base}/v1/evaluations?limit=200", timeout=30).json()
        forgetting = httpx.get(f"{base}/v1/forgetting", timeout=30).json()
    # Each evaluation scores the sets due within its budget; every set has been reached by the end.
    evaluated = {probe["name"] for probe in forgetting["probes"] if probe["accuracy"] is not None}
    assert len(evaluated) >= len(LABELS), f"only {len(evaluated)} probe sets evaluated"
    assert evaluated <= set(matrix["probes"])
    assert sum(1 for column in matrix["evaluations"]) >= 10
    assert matrix["alarms"] == [] and forgetting["alarms"] == []
    assert forgetting["summary"]["max_forgetting"] < 0.2
