"""Peak memory of the learner, and how much of it is the memory allocator's.

    python -m bench.memory [--steps 12] [--rounds 2] [--pass-sizes 0,12] [--quick]
        [--out bench/results/memory.json]

Each variant runs in a fresh process, since a process picks its allocator when it starts: the default model
and the default strategy learn `--steps` micro-batches of long reviews (every text at the 128-token limit,
plus the replayed ones), then save a snapshot, and the process reports its peak resident memory (VmHWM),
its resident memory at the end and its median step time. It also says where that memory goes: what the
process holds once the model is loaded and once the run is over (each read after asking the allocator to give
back what it keeps free: the memory truly in use), and the highest point during the steps and during the
snapshot (Linux's peak counter reset before each phase). Variants, run in turn for `--rounds` rounds:

- `glibc`: the C library's malloc, what a plain `pip install` gets;
- `tcmalloc`: `libtcmalloc_minimal.so.4` preloaded (`LD_PRELOAD`), as the container image does, where it is
  installed (Debian: `apt-get install libtcmalloc-minimal4`). Activations change size with every batch's
  length, and glibc's arenas keep much of what a step freed.

Each allocator runs once per `--pass-sizes` value (`RETENTIVE_PASS_SIZE`; 0, the whole step in one pass, is
named by the allocator alone, others as `tcmalloc@pass_size=12`). Peak memory is compared as a ratio to
`glibc`'s, and so is step time (rounds alternate, so load from elsewhere falls on all).
"""

from __future__ import annotations

import argparse
import ctypes.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from app.allocator import release_free_memory
from bench.data import read_split
from bench.meta import run_metadata
from learner.encoder import default_model_path, load_encoder, tiny_bert
from learner.online import Example, LearnerConfig, OnlineLearner
from learner.snapshots import SnapshotStore

TCMALLOC = "libtcmalloc_minimal.so.4"
ALLOCATORS = {"glibc": {}, "tcmalloc": {"LD_PRELOAD": TCMALLOC}}


def child(steps: int, quick: bool, pass_size: int) -> dict[str, Any]:
    """Learn `steps` micro-batches in this process; its peak and final memory and median step time."""
    torch.set_num_threads(1)
    tokenizer, encoder = tiny_bert() if quick else load_encoder(default_model_path())
    learner = OnlineLearner(tokenizer, encoder, LearnerConfig(pass_size=pass_size))
    records = [r for r in read_split("yelp", "train", 2000) if len(r["text"]) > 1500]
    preloaded = TCMALLOC in Path("/proc/self/maps").read_text()
    loading_peak = _status_mb("VmHWM")
    loaded = _in_use_mb()
    times, step_peaks = [], []
    for step in range(steps):
        batch = records[step * 16 : (step + 1) * 16]
        _reset_peak()
        began = time.perf_counter()
        learner.learn([Example(r["text"], r["label"]) for r in batch])
        times.append(time.perf_counter() - began)
        step_peaks.append(_status_mb("VmHWM"))
    end_rss = _status_mb("VmRSS")
    _reset_peak()
    with tempfile.TemporaryDirectory(prefix="retentive-memory-") as scratch:
        learner.save(SnapshotStore(Path(scratch)))
    snapshot_peak = _status_mb("VmHWM")
    return {
        "peak_rss_mb": max(loading_peak, *step_peaks, snapshot_peak),
        "end_rss_mb": end_rss,
        "loaded_mb": loaded,
        "held_mb": _in_use_mb(),
        "step_peak_mb": max(step_peaks),
        "snapshot_peak_mb": snapshot_peak,
        # The first steps allocate the optimizer's state: the rest are the steady state.
        "median_step_s": statistics.median(times[2:] or times),
        "tcmalloc_loaded": preloaded,
        "precision": learner.precision,
    }


def _status_mb(field: str) -> float:
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(status[field].split()[0]) / 1024


def _reset_peak() -> None:
    """Start VmHWM again from the present resident size (Linux 4.0 and later)."""
    Path("/proc/self/clear_refs").write_text("5")


def _in_use_mb() -> float:
    """Resident memory once the allocator has returned its free pages to the system."""
    release_free_memory()
    return _status_mb("VmRSS")


def variant_name(allocator: str, pass_size: int) -> str:
    return f"{allocator}@pass_size={pass_size}" if pass_size else allocator


def run_variant(allocator: str, pass_size: int, steps: int, quick: bool) -> dict[str, Any]:
    argv = [sys.executable, "-m", "bench.memory", "--child", "--steps", str(steps)]
    argv += ["--pass-sizes", str(pass_size), *(["--quick"] * quick)]
    env = {**os.environ, **ALLOCATORS[allocator]}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def available() -> list[str]:
    """The allocators this machine can run: tcmalloc only where its library is installed."""
    return [name for name in ALLOCATORS if name != "tcmalloc" or ctypes.util.find_library("tcmalloc_minimal")]


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    figures = {
        name: {
            "peak_rss_mb": max(r["peak_rss_mb"] for r in listed),
            "end_rss_mb": statistics.median(r["end_rss_mb"] for r in listed),
            "median_step_s": statistics.median(r["median_step_s"] for r in listed),
            **{
                key: statistics.median(r[key] for r in listed)
                for key in ("loaded_mb", "held_mb", "step_peak_mb", "snapshot_peak_mb")
            },
        }
        for name, listed in runs.items()
    }
    reference = figures["glibc"]
    for values in figures.values():
        values["peak_vs_glibc"] = values["peak_rss_mb"] / reference["peak_rss_mb"]
        values["step_vs_glibc"] = values["median_step_s"] / reference["median_step_s"]
    return figures


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--pass-sizes", default="0", help="comma-separated RETENTIVE_PASS_SIZE values")
    parser.add_argument("--quick", action="store_true", help="tiny model, a few steps (a smoke run)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=Path("bench/results/memory.json"))
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.steps, args.quick, int(args.pass_sizes))))
        return {}
    # One pass is the reference every ratio is taken against.
    pass_sizes = sorted({0, *(int(size) for size in args.pass_sizes.split(","))})
    torch.set_num_threads(1)
    variants = [(allocator, size) for size in pass_sizes for allocator in available()]
    runs: dict[str, list[dict[str, Any]]] = {variant_name(*variant): [] for variant in variants}
    for round_ in range(args.rounds):
        for allocator, size in variants:
            name = variant_name(allocator, size)
            print(f"round {round_ + 1}: {name} ...", flush=True)
            runs[name].append(run_variant(allocator, size, args.steps, args.quick))
    result = {
        **run_metadata("bench.memory", argv),
        "model": "tiny" if args.quick else "all-MiniLM-L6-v2",
        "steps": args.steps,
        "strategy": LearnerConfig().strategy,
        "pass_sizes": pass_sizes,
        "variants": summarize(runs),
        "unavailable": [name for name in ALLOCATORS if name not in available()],
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["variants"], indent=2))
    return result


if __name__ == "__main__":
    main()
