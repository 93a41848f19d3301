"""How long a snapshot and a publication hold training up, now that only their serialization runs on the
training thread and the write runs on a thread of its own.

    python -m bench.writes [--repeats 5] [--quick] [--out bench/results/writes.json]

The default model and strategy learn one micro-batch of news, then a snapshot and a publication are each
serialized (`learner.snapshots.serialized`, on the training thread) and written (`SnapshotStore.write`: hash,
files, fsync, rename, prune; on the writer thread) `--repeats` times, alternating, into a temporary
directory. Training is held up by the serialization alone; before the writer thread it was held up by both,
which is `held_before_s`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.data import read_split
from bench.meta import run_metadata
from learner.encoder import default_model_path, load_encoder, tiny_bert
from learner.online import Example, LearnerConfig, OnlineLearner
from learner.snapshots import SnapshotStore, serialized


def timings(learner: OnlineLearner, root: Path, repeats: int) -> dict[str, dict[str, list[float]]]:
    """Seconds to serialize and to write each kind, `repeats` times, the two kinds alternating."""
    stores = {"snapshot": SnapshotStore(root / "snapshots"), "publication": SnapshotStore(root / "published")}
    measured: dict[str, dict[str, list[float]]] = {
        kind: {"serialize_s": [], "write_s": [], "megabytes": []} for kind in stores
    }
    version = learner.counters.model_version
    for _ in range(repeats):
        for kind, store in stores.items():
            version += 1
            began = time.perf_counter()
            if kind == "snapshot":
                tensors, state, info = learner.snapshot_contents(version)
            else:
                tensors, state, info = learner.publication_contents()
            payload = serialized(tensors, state)
            serialized_at = time.perf_counter()
            store.write(payload, info, None, version)
            measured[kind]["serialize_s"].append(serialized_at - began)
            measured[kind]["write_s"].append(time.perf_counter() - serialized_at)
            measured[kind]["megabytes"].append(sum(map(len, payload.values())) / 1e6)
    return measured


def summary(measured: dict[str, list[float]]) -> dict[str, float]:
    """Medians, and what training was held up for before the writer thread: serializing and writing."""
    serialize_s, write_s = statistics.median(measured["serialize_s"]), statistics.median(measured["write_s"])
    return {
        "serialize_s": serialize_s,
        "write_s": write_s,
        "held_before_s": serialize_s + write_s,
        "megabytes": statistics.median(measured["megabytes"]),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="the tiny model: a smoke run")
    parser.add_argument("--out", type=Path, default=Path("bench/results/writes.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    tokenizer, encoder = tiny_bert() if args.quick else load_encoder(default_model_path())
    learner = OnlineLearner(tokenizer, encoder, LearnerConfig())
    learner.learn([Example(r["text"], r["label"]) for r in read_split("agnews", "train", 16)])
    with tempfile.TemporaryDirectory(prefix="retentive-writes-") as scratch:
        measured = timings(learner, Path(scratch), args.repeats)
    result = {
        **run_metadata("bench.writes", argv),
        "model": "tiny" if args.quick else "all-MiniLM-L6-v2",
        "repeats": args.repeats,
        **{kind: summary(runs) for kind, runs in measured.items()},
        "runs": measured,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for kind in measured:
        figures = result[kind]
        print(
            f"{kind}: {figures['megabytes']:.0f} MB, training held up {figures['serialize_s']:.3f} s "
            f"(was {figures['held_before_s']:.3f} s), written in {figures['write_s']:.3f} s"
        )
    return result


if __name__ == "__main__":
    main()
