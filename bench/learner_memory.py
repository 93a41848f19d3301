"""The learner's resident memory through the service, over time, while it learns a backlog.

    python -m bench.learner_memory [--seconds 240] [--precision auto] [--quick]
        [--out bench/results/learner_memory.json]

One real `retentive serve` (tcmalloc preloaded where installed, as in the container image) receives
`--backlog` news examples at once; the learner child's resident memory is sampled every 50 ms for
`--seconds`, or until the learner has read the whole backlog if that takes longer, and its peak (VmHWM)
read at the end. The result keeps the lowest and highest resident size in
each 10-second window, so a peak can be told apart from a level that creeps up, and the learner's snapshot
and evaluation events from its log, to see which moments the peaks fall on.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.data import news_records
from bench.memory import ALLOCATORS
from bench.meta import run_metadata
from bench.service import eventually, save_tiny_model, serve_log, serving
from bench.speed import peak_rss_mb, post_feedback, service_allocator
from learner.devices import resolve_device, resolve_precision
from learner.encoder import default_model_path

WINDOW_S = 10


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=240.0, help="how long to sample, at least")
    parser.add_argument("--backlog", type=int, default=1500, help="examples posted at the start")
    parser.add_argument("--precision", default="auto", help="RETENTIVE_PRECISION of the learner")
    parser.add_argument("--quick", action="store_true", help="tiny model, a few seconds: a smoke run")
    parser.add_argument("--out", type=Path, default=Path("bench/results/learner_memory.json"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="retentive-learner-memory-") as scratch:
        model = save_tiny_model(Path(scratch) / "tiny") if args.quick else str(default_model_path())
        figures = learner_memory(
            Path(scratch) / "service", model, news_records(args.backlog), args.seconds, args.precision
        )
    result = {
        **run_metadata("bench.learner_memory"),
        "model": "tiny" if args.quick else "all-MiniLM-L6-v2",
        "seconds": args.seconds,
        "backlog": args.backlog,
        **figures,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({key: value for key, value in result.items() if key != "windows"}, indent=1))
    return result


def learner_memory(
    data_dir: Path, model: str, records: list[dict[str, str]], seconds: float, precision: str
) -> dict[str, Any]:
    """Resident memory of the learner child of one `retentive serve` learning `records`."""
    allocator = service_allocator()
    with serving(data_dir, model=model, precision=precision, environ=ALLOCATORS[allocator]) as (base, serve):
        eventually(lambda: _learner_child(serve) is not None, 60, "the learner child")
        child = _learner_child(serve)
        assert child is not None
        samples: list[tuple[float, float]] = []
        stop = threading.Event()
        sampler = threading.Thread(target=_sample, args=(child, samples, stop), daemon=True)
        began = time.monotonic()
        sampler.start()
        with httpx.Client(base_url=base, timeout=60) as client:
            post_feedback(client, records)
            eventually(lambda: _counters(client).get("read", 0) >= len(records), 3600, "the backlog read")
            stop.wait(max(0.0, seconds - (time.monotonic() - began)))
            counters = _counters(client)
        peak = peak_rss_mb(child.pid)
        stop.set()
        sampler.join()
        events = _events(serve_log(data_dir))
    return {
        "allocator": allocator,
        "precision": resolve_precision(precision, resolve_device("auto")),
        "learner_peak_mb": peak,
        "learner_end_mb": samples[-1][1],
        "applied": counters["applied"],
        "updates": counters["updates"],
        "windows": _windows(samples, began),
        "events": events,
    }


def _learner_child(serve: Any) -> psutil.Process | None:
    children = [c for c in psutil.Process(serve.pid).children() if c.name() != "redis-server"]
    return children[0] if children else None


def _counters(client: httpx.Client) -> dict[str, int]:
    return client.get("/v1/model").json()["counters"]


def _sample(child: psutil.Process, samples: list[tuple[float, float]], stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            samples.append((time.monotonic(), child.memory_info().rss / 2**20))
        except psutil.Error:
            return
        stop.wait(0.05)


def _windows(samples: list[tuple[float, float]], began: float) -> list[dict[str, float]]:
    windows: dict[int, list[float]] = {}
    for at, rss in samples:
        windows.setdefault(int((at - began) // WINDOW_S), []).append(rss)
    return [
        {"from_s": index * WINDOW_S, "min_mb": round(min(values)), "max_mb": round(max(values))}
        for index, values in sorted(windows.items())
    ]


def _events(log: Path) -> list[dict[str, Any]]:
    """The learner's snapshot and evaluation lines, in order."""
    events = []
    for line in log.read_text().splitlines():
        if not line.startswith("{"):
            continue
        event = json.loads(line)
        if event.get("event") in ("snapshot", "evaluation"):
            keep = ("event", "version", "updates", "serialize_s", "write_s")
            events.append({key: event[key] for key in keep if key in event})
    return events


if __name__ == "__main__":
    main()
