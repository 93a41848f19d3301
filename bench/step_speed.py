"""Cost of one learner update per strategy, as a ratio to plain fine-tuning measured in the same run.

    python -m bench.step_speed [--strategies sgd,migu,migu@precision=bf16] [--steps 20] [--batch 16]
                               [--tokens 128] [--out bench/results/step_speed.json]

A strategy may name the precision of its training forward after an `@` (RETENTIVE_PRECISION). Steps of the
strategies are interleaved (sgd, migu, sgd, migu, ...) so that load from elsewhere on a shared
machine falls on all of them alike; the ratio of median step times is what is reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from bench.data import read_split
from bench.meta import run_metadata
from learner.encoder import default_model_path, load_encoder, tiny_bert
from learner.online import LearnerConfig, OnlineLearner


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--strategies", default="sgd,migu")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--quick", action="store_true", help="tiny model, few steps (a smoke run)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/step_speed.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    names = args.strategies.split(",")
    steps = 2 if args.quick else args.steps
    times = step_times(names, steps, args.warmup, args.batch, args.tokens, args.quick)

    reference = statistics.median(times[names[0]])
    result = {
        **run_metadata("bench.step_speed"),
        "model": "tiny" if args.quick else "all-MiniLM-L6-v2",
        "batch": args.batch,
        "tokens": args.tokens,
        "steps": steps,
        "median_step_s": {name: statistics.median(t) for name, t in times.items()},
        f"ratio_to_{names[0]}": {name: statistics.median(t) / reference for name, t in times.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def step_times(
    names: list[str], steps: int, warmup: int, batch: int, tokens: int, quick: bool = False
) -> dict[str, list[float]]:
    """Seconds of each timed step per strategy, the strategies' steps interleaved on the same batches."""
    learners = {name: _learner(name, tokens, quick) for name in names}
    # Long reviews, so every text fills the token budget and all steps see the same shapes.
    records = [r for r in read_split("yelp", "train", 2000) if len(r["text"]) > 1500]
    texts, labels = [r["text"] for r in records], [r["label"] for r in records]
    times: dict[str, list[float]] = {name: [] for name in names}
    for step in range(warmup + steps):
        start = (step * batch) % (len(texts) - batch)
        batch_texts, batch_labels = texts[start : start + batch], labels[start : start + batch]
        for name, learner in learners.items():
            began = time.perf_counter()
            learner.train_step(batch_texts, batch_labels)
            if step >= warmup:
                times[name].append(time.perf_counter() - began)
    return times


def _learner(spec: str, tokens: int, quick: bool) -> OnlineLearner:
    strategy, _, option = spec.partition("@")
    key, _, precision = option.partition("=")
    if option and key != "precision":
        raise SystemExit(f"--strategies: {spec!r}: only precision=fp32|bf16 may follow the @")
    tokenizer, encoder = tiny_bert() if quick else load_encoder(default_model_path())
    config = LearnerConfig(
        strategy=strategy, precision=precision or "fp32", max_length=tokens, probe_fraction=0
    )
    return OnlineLearner(tokenizer, encoder, config)


if __name__ == "__main__":
    main()
