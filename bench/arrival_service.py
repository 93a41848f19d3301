"""Feedback as people send it, through a real `retentive serve` with its defaults: the same labelled examples
posted in requests of 16, or one per request `--gap-s` apart (a person labelling one text after another),
then the served model's accuracy on held-out test texts.

    python -m bench.arrival_service [--task agnews] [--per-label 12] [--test 200] [--seeds 0,1,2]
                                    [--gap-s 1.5] [--quick] [--out bench/results/arrival_service.json]

Each seed draws its own examples (the same for both ways of posting) and starts a fresh service. The result
file holds every run, the mean accuracy of each way, and the ratio trickle / batched with its seed spread.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.data import read_split
from bench.meta import run_metadata
from bench.service import eventually, save_tiny_model, serving

WAYS = {"batched": 16, "trickle": 1}
PUBLISH_SETTLE_S = 12.0


def examples(task: str, per_label: int, seed: int, root: Path | None = None) -> list[dict[str, str]]:
    """`per_label` training examples of every label of `task`, shuffled by `seed`, each with an id."""
    records = read_split(task, "train", root=root)
    random.Random(seed).shuffle(records)
    chosen: dict[str, list[dict[str, str]]] = {}
    for record in records:
        picked = chosen.setdefault(record["label"], [])
        if len(picked) < per_label:
            picked.append(record)
    mixed = [record for group in chosen.values() for record in group]
    random.Random(seed + 1).shuffle(mixed)
    return [{"text": r["text"], "label": r["label"], "id": f"{seed}-{i}"} for i, r in enumerate(mixed)]


def post(base: str, examples: list[dict[str, str]], per_request: int, gap_s: float) -> None:
    """Post `per_request` examples at a time, `gap_s` apart when one at a time."""
    with httpx.Client(base_url=base, timeout=120) as client:
        for start in range(0, len(examples), per_request):
            response = client.post("/v1/feedback", json={"examples": examples[start : start + per_request]})
            response.raise_for_status()
            if per_request == 1:
                time.sleep(gap_s)


def served_after_learning(base: str, posted: int) -> None:
    """Wait until every example was applied, then until the replica serves the newest version, given the
    learner time to publish what it learned last (it publishes every RETENTIVE_PUBLISH_EVERY_S, 5 s)."""

    def counters() -> dict[str, int]:
        return httpx.get(f"{base}/v1/model", timeout=30).json()["counters"]

    eventually(
        lambda: counters().get("applied", 0) + counters().get("held_out", 0) == posted, 600, "all applied"
    )
    time.sleep(PUBLISH_SETTLE_S)

    def newest_served() -> bool:
        newest = httpx.get(f"{base}/v1/versions?limit=1", timeout=30).json()
        return bool(newest) and newest[0]["version"] == httpx.get(f"{base}/v1/model").json()["model_version"]

    eventually(newest_served, 600, "the newest version served")


def accuracy(base: str, test: list[dict[str, str]]) -> float:
    hits = 0
    with httpx.Client(base_url=base, timeout=300) as client:
        for start in range(0, len(test), 50):
            chunk = test[start : start + 50]
            answer = client.post("/v1/predict", json={"inputs": [r["text"] for r in chunk]}).json()
            hits += sum(p["label"] == r["label"] for p, r in zip(answer["predictions"], chunk, strict=True))
    return hits / len(test)


def run_once(
    model: str, way: str, train: list[dict[str, str]], test: list[dict[str, str]], gap_s: float
) -> dict[str, Any]:
    settings = {"model": model} if model else {}
    with tempfile.TemporaryDirectory() as data_dir, serving(Path(data_dir), **settings) as (base, _):
        began = time.monotonic()
        post(base, train, WAYS[way], gap_s)
        served_after_learning(base, len(train))
        counters = httpx.get(f"{base}/v1/model", timeout=30).json()["counters"]
        prequential = httpx.get(f"{base}/v1/forgetting", timeout=30).json()["prequential"]
        return {
            "accuracy": accuracy(base, test),
            "updates": counters.get("updates"),
            "applied": counters.get("applied"),
            "held_out": counters.get("held_out"),
            "prequential": prequential and {k: prequential[k] for k in ("cumulative", "last_1000", "scored")},
            "wall_s": time.monotonic() - began,
        }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--task", default="agnews")
    parser.add_argument("--per-label", type=int, default=12)
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--gap-s", type=float, default=1.5, help="seconds between one-example requests")
    parser.add_argument("--quick", action="store_true", help="tiny model, one seed: a smoke run")
    parser.add_argument("--out", default="bench/results/arrival_service.json")
    args = parser.parse_args(argv)
    seeds = [0] if args.quick else [int(seed) for seed in args.seeds.split(",")]
    test = read_split(args.task, "test", args.test)
    with tempfile.TemporaryDirectory() as model_dir:
        model = save_tiny_model(Path(model_dir)) if args.quick else ""
        runs: dict[str, list[dict[str, Any]]] = {way: [] for way in WAYS}
        for seed in seeds:
            train = examples(args.task, args.per_label, seed)
            for way in WAYS:
                run = {"seed": seed, **run_once(model, way, train, test, args.gap_s)}
                print(
                    f"seed {seed} {way:<8} accuracy {run['accuracy']:.3f} updates {run['updates']}",
                    flush=True,
                )
                runs[way].append(run)
    ratios = [t["accuracy"] / b["accuracy"] for t, b in zip(runs["trickle"], runs["batched"], strict=True)]
    result = {
        **run_metadata("bench.arrival_service", argv),
        "task": args.task,
        "per_label": args.per_label,
        "test_texts": len(test),
        "model": "tiny" if args.quick else "all-MiniLM-L6-v2",
        "gap_s": args.gap_s,
        "runs": runs,
        "mean_accuracy": {way: statistics.mean(r["accuracy"] for r in rs) for way, rs in runs.items()},
        "trickle_vs_batched": statistics.mean(ratios),
        "trickle_vs_batched_sd": statistics.stdev(ratios) if len(ratios) > 1 else None,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        json.dumps({k: result[k] for k in ("mean_accuracy", "trickle_vs_batched", "trickle_vs_batched_sd")})
    )
    return result


if __name__ == "__main__":
    main()
