"""Cost of one learner update per strategy, as a ratio to plain fine-tuning measured in the same run.

    python -m bench.step_speed [--strategies sgd,migu,migu@precision=bf16] [--steps 20] [--batch 16]
                               [--tokens 128] [--texts long|mixed|news] [--out bench/results/step_speed.json]

A strategy may be followed by learner settings as `bench.cl_stream` takes them (`migu+replay@precision=bf16
@pass_size=12`); the training forward is fp32 unless one names the precision. Steps of the strategies are
interleaved (sgd, migu, sgd, migu, ...) so that load from elsewhere on a shared machine falls on all of them
alike; the ratio of median step times is what is reported. `--texts long` (the default) steps on long
reviews only, every text at the token limit; `--texts mixed` on the four tasks' training texts shuffled
together, as a stream brings them, short and long in one batch; `--texts news` on news and encyclopedia
texts, short to middling, the texts `bench.speed`'s learner loop trains on.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import torch

from bench.cl_stream import parse_run
from bench.data import news_records, read_split, task_orders
from bench.meta import run_metadata
from learner.encoder import default_model_path, load_encoder, tiny_bert
from learner.online import LearnerConfig, OnlineLearner


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--strategies", default="sgd,migu")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--texts", choices=("long", "mixed", "news"), default="long")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--quick", action="store_true", help="tiny model, few steps (a smoke run)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/step_speed.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    names = args.strategies.split(",")
    steps = 2 if args.quick else args.steps
    times = step_times(names, steps, args.warmup, args.batch, args.tokens, args.quick, args.texts)

    reference = statistics.median(times[names[0]])
    result = {
        **run_metadata("bench.step_speed", argv),
        "model": "tiny" if args.quick else "all-MiniLM-L6-v2",
        "batch": args.batch,
        "tokens": args.tokens,
        "texts": args.texts,
        "steps": steps,
        "median_step_s": {name: statistics.median(t) for name, t in times.items()},
        f"ratio_to_{names[0]}": {name: statistics.median(t) / reference for name, t in times.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


def step_times(
    names: list[str],
    steps: int,
    warmup: int,
    batch: int,
    tokens: int,
    quick: bool = False,
    kind: str = "long",
) -> dict[str, list[float]]:
    """Seconds of each timed step per strategy, the strategies' steps interleaved on the same batches."""
    learners = {name: _learner(name, tokens, quick) for name in names}
    records = _records(kind)
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


def _records(kind: str) -> list[dict[str, str]]:
    if kind == "news":
        return news_records(2000)
    if kind == "long":
        # Long reviews, so every text fills the token budget and all steps see the same shapes.
        return [r for r in read_split("yelp", "train", 2000) if len(r["text"]) > 1500]
    mixed = [
        {"text": r["text"], "label": f"{task}/{r['label']}"}
        for task in task_orders()["order1"]
        for r in read_split(task, "train", 500)
    ]
    random.Random(0).shuffle(mixed)
    return mixed


def _learner(spec: str, tokens: int, quick: bool) -> OnlineLearner:
    tokenizer, encoder = tiny_bert() if quick else load_encoder(default_model_path())
    defaults = LearnerConfig(precision="fp32", max_length=tokens, probe_fraction=0)
    return OnlineLearner(tokenizer, encoder, parse_run(spec, defaults).config)


if __name__ == "__main__":
    main()
