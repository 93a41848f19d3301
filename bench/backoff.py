"""Does predicting large batches stall learning? A real `retentive serve` with its defaults on the default
model: after a first model, one client predicts `--requests` requests of 64 AG News test texts, one after
another, while another posts feedback in batches of 16; the learner's back-offs and updates over that phase,
and the predict latencies, go to the result file.

    python -m bench.backoff [--requests 16] [--quick] [--out bench/results/backoff.json]

A request of 64 texts is slower than one of a single text by nature, not because anything is overloaded;
the learner should take its steps through it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench.data import read_split
from bench.meta import run_metadata
from bench.service import eventually, save_tiny_model, serving


def run(requests: int, quick: bool, scratch: Path) -> dict[str, Any]:
    settings: dict[str, object] = {}
    if quick:
        settings["model"] = save_tiny_model(scratch / "tiny")
    train = [{**r, "id": f"train-{i}"} for i, r in enumerate(read_split("agnews", "train", 400))]
    texts = [r["text"] for r in read_split("agnews", "test", 64)]
    with serving(scratch / "data", **settings) as (base, _):
        client = httpx.Client(base_url=base, timeout=300)
        client.post("/v1/feedback", json={"examples": train[:48]}).raise_for_status()
        eventually(lambda: _served_after_training(client), 600, "a first model and the updates it holds")
        before = client.get("/v1/model").json()["counters"]
        stop = threading.Event()
        feeder = threading.Thread(target=_feed, args=(client, train[48:], stop), daemon=True)
        feeder.start()
        latencies = []
        for _ in range(requests):
            began = time.perf_counter()
            client.post("/v1/predict", json={"inputs": texts}).raise_for_status()
            latencies.append(time.perf_counter() - began)
        stop.set()
        feeder.join(timeout=300)
        after = client.get("/v1/model").json()["counters"]
    return {
        "predict_requests": requests,
        "texts_per_request": len(texts),
        "predict_median_s": statistics.median(latencies),
        "phase_s": sum(latencies),
        "backoffs": after.get("backoffs", 0) - before.get("backoffs", 0),
        "updates": after.get("updates", 0) - before.get("updates", 0),
        "updates_before": before.get("updates", 0),
    }


def _served_after_training(client: httpx.Client) -> bool:
    """A replica serves weights and the learner has reported its updates: a replica may load a snapshot
    from the store before the learner has announced it and published its counters."""
    model = client.get("/v1/model").json()
    return model["model_version"] is not None and model["counters"].get("updates", 0) >= 1


def _feed(client: httpx.Client, records: list[dict[str, str]], stop: threading.Event) -> None:
    for start in range(0, len(records), 16):
        if stop.is_set():
            return
        client.post("/v1/feedback", json={"examples": records[start : start + 16]})
        stop.wait(1.0)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--quick", action="store_true", help="the tiny model: a smoke run")
    parser.add_argument("--out", type=Path, default=Path("bench/results/backoff.json"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="retentive-backoff-") as scratch:
        figures = run(args.requests, args.quick, Path(scratch))
    result = {**run_metadata("bench.backoff", argv), "model": "tiny" if args.quick else "all-MiniLM-L6-v2"}
    result.update(figures)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    return result


if __name__ == "__main__":
    main()
