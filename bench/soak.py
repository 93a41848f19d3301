"""A soak run: a real `retentive serve` (API and learner child, embedded Redis) on loopback under concurrent
clients that mix predictions and feedback, for a bounded time and number of requests.

    python -m bench.soak [--minutes 5] [--clients 32] [--feedback-share 0.2] [--max-requests 1000000]
                         [--quick] [--out bench/results/soak.json]

Each client sends one request after another: a prediction of one text, or (with probability
`--feedback-share`) feedback of `--examples` labelled examples with unique ids. The run stops by itself at
the time or request limit. Then the service is stopped (the learner writes its last snapshot) and every
example the API answered 202 for is looked for in the final snapshot's ledger of applied entries or, not yet
read, in the stream. The result file records request counts by status, latency percentiles per kind, the
learner's progress during the load, and what was lost or applied twice; the exit status is 1 if there was
any 5xx, transport error, loss or double application, or if the learner did not train.

`--quick` runs the tiny test model for a few seconds, as the test suite does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.meta import run_metadata
from bench.predict_batching import LABELS, WORDS
from bench.service import free_port, save_tiny_model, serve_log, service_env
from learner.encoder import default_model_path
from learner.snapshots import SnapshotStore
from streams.connection import connect, stop_embedded
from streams.keys import StreamKeys

KINDS = ("predict", "feedback")
READY_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 180.0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=5.0, help="length of the load phase")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--feedback-share", type=float, default=0.2)
    parser.add_argument("--examples", type=int, default=4, help="labelled examples per feedback request")
    parser.add_argument("--max-requests", type=int, default=1_000_000, help="stop after this many")
    parser.add_argument("--quick", action="store_true", help="tiny model for 10 seconds (a smoke run)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/soak.json"))
    parser.add_argument("--keep", type=Path, help="keep the data directory (and logs/serve.log) here")
    args = parser.parse_args()
    seconds = 10.0 if args.quick else args.minutes * 60

    with tempfile.TemporaryDirectory(prefix="retentive-soak-") as scratch:
        root = Path(scratch)
        model = save_tiny_model(root / "tiny") if args.quick else str(default_model_path())
        data_dir = args.keep or root / "data"
        try:
            with _service(model, data_dir) as base:
                _warm_up(base)
                before = _model(base)
                load = asyncio.run(_load(base, seconds, args))
                after = _model(base)
            result = _result(args, load, before, after, _account(data_dir, load.accepted))
        finally:
            stop_embedded(data_dir)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    sys.exit(0 if result["passed"] else 1)


@dataclass
class Load:
    """What the clients saw."""

    seconds: float = 0.0
    statuses: dict[str, Counter] = field(default_factory=lambda: {kind: Counter() for kind in KINDS})
    latencies: dict[str, list[float]] = field(default_factory=lambda: {kind: [] for kind in KINDS})
    transport_errors: list[str] = field(default_factory=list)
    accepted: set[str] = field(default_factory=set)
    duplicates: int = 0
    stopped_by: str = "time"

    @property
    def requests(self) -> int:
        return sum(sum(counts.values()) for counts in self.statuses.values())


@contextlib.contextmanager
def _service(model: str, data_dir: Path) -> Iterator[str]:
    """`retentive serve` on a free loopback port, in test mode (ledger on), stopped with SIGTERM. The
    embedded Redis stays up, so that what the learner left in the stream can be accounted for."""
    port = free_port()
    env = service_env(data_dir, model=model, host="127.0.0.1", port=port, ledger="true")
    log_path = serve_log(data_dir)
    log_path.parent.mkdir(parents=True)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: _answers(f"{base}/readyz"), READY_TIMEOUT_S, "the service to start", process)
        yield base
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def _wait(check: object, timeout: float, what: str, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise SystemExit(f"the service exited while waiting for {what}")
        if check():
            return
        time.sleep(0.5)
    raise SystemExit(f"gave up after {timeout:.0f} s waiting for {what}")


def _warm_up(base: str) -> None:
    """Teach the labels once, so that predictions answer from the first request of the load."""
    rng = random.Random(0)
    examples = [_example(rng, f"warm-{i}") for i in range(16 * len(LABELS))]
    httpx.post(f"{base}/v1/feedback", json={"examples": examples}, timeout=60).raise_for_status()
    probe = {"inputs": ["warming up"]}
    _wait(
        lambda: httpx.post(f"{base}/v1/predict", json=probe, timeout=60).status_code == 200,
        READY_TIMEOUT_S,
        "the first model",
    )


def _text(rng: random.Random) -> str:
    return " ".join(rng.choices(WORDS, k=rng.randint(8, 40)))


def _example(rng: random.Random, example_id: str) -> dict[str, str]:
    # The label's own word in the text, so that there is something to learn.
    label = rng.choice(LABELS)
    return {"text": f"{label} {_text(rng)}", "label": label, "id": example_id}


async def _load(base: str, seconds: float, args: argparse.Namespace) -> Load:
    load = Load()
    deadline = time.monotonic() + seconds
    began = time.monotonic()
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
        await asyncio.gather(*(_client(client, n, deadline, args, load) for n in range(args.clients)))
    load.seconds = time.monotonic() - began
    return load


async def _client(
    client: httpx.AsyncClient, number: int, deadline: float, args: argparse.Namespace, load: Load
) -> None:
    rng = random.Random(number)
    sent = 0
    while time.monotonic() < deadline:
        if load.requests >= args.max_requests:
            load.stopped_by = "requests"
            return
        feedback = rng.random() < args.feedback_share
        kind = "feedback" if feedback else "predict"
        if feedback:
            examples = [_example(rng, f"c{number}-{sent}-{i}") for i in range(args.examples)]
            request = client.post("/v1/feedback", json={"examples": examples})
        else:
            request = client.post("/v1/predict", json={"inputs": [_text(rng)]})
        sent += 1
        began = time.perf_counter()
        try:
            response = await request
        except httpx.TransportError as err:
            after = time.perf_counter() - began
            load.transport_errors.append(f"{kind} after {after:.1f} s: {type(err).__name__} {err}")
            continue
        load.latencies[kind].append(time.perf_counter() - began)
        load.statuses[kind][str(response.status_code)] += 1
        if feedback and response.status_code == 202:
            body = response.json()
            load.accepted.update(body["stream_ids"])
            load.duplicates += body["duplicates"]


def _model(base: str) -> dict:
    return httpx.get(f"{base}/v1/model", timeout=60).json()


def _account(data_dir: Path, accepted: set[str]) -> dict[str, int]:
    """Where every accepted entry is, once the service has stopped: applied (in the final snapshot's
    ledger), still in the stream unread, or nowhere (lost)."""
    snapshot, problems = SnapshotStore(data_dir / "snapshots" / "default").load_latest_valid(only=["state"])
    if snapshot is None:
        raise SystemExit(f"no valid snapshot after the run: {problems}")
    ledger = Counter(stream_id for stream_id, _, _ in snapshot.state["extra"]["ledger"])
    client = connect("", data_dir)
    try:
        in_stream = {
            entry_id.decode() for entry_id, _ in client.xrange(StreamKeys().feedback) if entry_id is not None
        }
    finally:
        client.close()
    return {
        "accepted": len(accepted),
        "applied": len(accepted & set(ledger)),
        "in_stream_not_applied": len((accepted - set(ledger)) & in_stream),
        "lost": len(accepted - set(ledger) - in_stream),
        "applied_twice": sum(1 for count in ledger.values() if count > 1),
    }


def _percentiles(seconds: list[float]) -> dict[str, float | int]:
    if len(seconds) < 2:
        return {"count": len(seconds)}
    cuts = statistics.quantiles(seconds, n=100, method="inclusive")
    return {
        "count": len(seconds),
        "p50_ms": round(1000 * cuts[49], 1),
        "p90_ms": round(1000 * cuts[89], 1),
        "p95_ms": round(1000 * cuts[94], 1),
        "p99_ms": round(1000 * cuts[98], 1),
        "max_ms": round(1000 * max(seconds), 1),
    }


def _result(
    args: argparse.Namespace, load: Load, before: dict, after: dict, examples: dict[str, int]
) -> dict:
    server_errors = sum(
        count for counts in load.statuses.values() for status, count in counts.items() if int(status) >= 500
    )
    counters_before, counters_after = before["counters"], after["counters"]
    learner = {
        name: counters_after.get(name, 0) - counters_before.get(name, 0)
        for name in ("updates", "applied", "backoffs")
    }
    passed = (
        server_errors == 0
        and not load.transport_errors
        and examples["lost"] == 0
        and examples["applied_twice"] == 0
        and learner["updates"] > 0
    )
    return {
        **run_metadata("bench.soak"),
        "model": "tiny" if args.quick else "all-MiniLM-L6-v2",
        "clients": args.clients,
        "feedback_share": args.feedback_share,
        "examples_per_feedback": args.examples,
        "load_seconds": round(load.seconds, 1),
        "stopped_by": load.stopped_by,
        "requests": load.requests,
        "requests_per_s": round(load.requests / load.seconds, 1),
        "statuses": {kind: dict(counts) for kind, counts in load.statuses.items()},
        "server_errors": server_errors,
        "transport_errors": len(load.transport_errors),
        "transport_error_examples": load.transport_errors[:5],
        "latency": {kind: _percentiles(seconds) for kind, seconds in load.latencies.items()},
        "feedback_examples": {**examples, "duplicates": load.duplicates},
        "learner_during_load": {
            **learner,
            "version_before": before["model_version"],
            "version_after": after["model_version"],
            "stream_lag_after": after["stream_lag"],
        },
        "passed": passed,
    }


if __name__ == "__main__":
    main()
