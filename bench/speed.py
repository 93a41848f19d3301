"""Speed of the service, each figure beside a reference measured in the same run, so ratios hold on a noisy
machine.

    python -m bench.speed [--quick] [--out bench/results/speed.json]

- learner: trained examples/s of the real learner loop consuming from an embedded Redis, running the bare
  loop's update, against a bare PyTorch AdamW loop on the same model, batch and length over pre-tokenized
  tensors, and the loop with the service's default strategy beside them; all on RETENTIVE_LEARNER_THREADS
  torch threads, in alternating rounds;
- MIGU step time against a plain AdamW step (bench.step_speed, steps interleaved);
- then one real `retentive serve` (API and learner child) over HTTP: freshness, from a feedback POST until a
  prediction comes from weights that applied it (seen as the new label appearing); with the learner paused,
  so that the API is a replica like any other, p50 and p99 of one-text requests against the bare forward
  pass `head(encoder(**batch))` on RETENTIVE_API_THREADS threads (`predict_p50_vs_bare`), timed in
  alternating blocks of ten on the same texts, with the API's own mean time in forward passes (its
  `retentive_predict_batch_seconds`) beside the bare pass's mean; texts/s from 16
  concurrent clients against bare batched forward passes of 16, and ingest, examples/s through POST
  /v1/feedback in batches of 100, against pipelined XADD from redis-py; then p99 while the learner trains
  flat out on a backlog against the same with the learner paused, in alternating phases;
- peak RSS (VmHWM) of the API process and of the learner, and the device each computes on;
- eval_share: the share of the learner's time that probe evaluation takes in steady state at the defaults,
  every probe set already big and more probe texts than one evaluation's budget, measured as rounds of
  `RETENTIVE_EVAL_EVERY` timed updates then one timed evaluation;
- promotion_share: the share the promotion checks take in the same run, one due after every
  `RETENTIVE_PUBLISH_EVERY_S` of the learner's time (or later, when a check is slow), as the loop does.

- quantized_vs_bare: the int8 copy a replica serves with RETENTIVE_SERVE_QUANTIZE, one text per forward
  pass against the float forward pass, and both models' accuracy on the cl_stream test sets after learning
  a stream with the defaults (`bench.quantized`).

`--only eval_share` measures the evaluation and promotion shares alone (a few minutes on the default model),
`--only quantized` the int8 figures alone (`bench/results/quantized.json`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import statistics
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import torch
from torch import nn
from torch.nn import functional

from app.learner_loop import LearnerLoop, publication_spacing
from app.settings import Settings
from bench.data import news_records, read_split
from bench.memory import ALLOCATORS
from bench.memory import available as available_allocators
from bench.meta import run_metadata
from bench.quantized import forward_timings, quantized_figures
from bench.service import eventually, metric_sample, save_tiny_model, serving
from bench.step_speed import step_times
from learner.classifier import TextClassifier
from learner.devices import describe, resolve_device, resolve_precision
from learner.encoder import default_model_path, load_encoder, mean_pool
from learner.online import Example, LearnerConfig, OnlineLearner
from learner.snapshots import SnapshotStore
from streams.connection import connect, stop_embedded
from streams.producer import FeedbackProducer
from streams.records import FeedbackRecord

# The bare loop's learning rates, which the like-for-like learner loop runs with too.
BARE_LR, BARE_HEAD_LR = 1e-4, 1e-2

AIMS = {
    "learner_vs_bare": (">=", 0.85),
    "default_vs_bare": (">=", 1.2),
    "predict_p50_vs_bare": ("<=", 1.15),
    "migu_vs_sgd_step": ("<=", 0.85),
    "throughput_vs_bare": (">=", 0.7),
    "p99_learning_vs_paused": ("<=", 1.5),
    "ingest_vs_xadd": (">=", 0.5),
    "eval_share": ("<=", 0.10),
    "promotion_share": ("<=", 0.10),
    "quantized_vs_bare": ("<=", 1.0),
    "learner_rss_mb": ("<=", 1200),
}

QUANTIZED_FIGURES = [
    "quantized_vs_bare",
    "float_accuracy",
    "quantized_accuracy",
    "quantized_accuracy_difference",
    "quantized_accuracy_difference_95",
]


SERVICE_FIGURES = [
    "predict_p50_ms",
    "predict_p50_vs_bare",
    "predict_p99_ms",
    "bare_forward_ms",
    "api_forward_mean_ms",
    "bare_forward_mean_ms",
    "throughput_vs_bare",
    "p99_learning_vs_paused",
    "ingest_vs_xadd",
    "freshness_s",
    "learner_rss_mb",
    "api_rss_mb",
]


@dataclass(frozen=True)
class Sizes:
    """How much of each measurement to run; `--quick` shrinks all of it to a smoke run on the tiny model."""

    learn_examples: int = 320
    rounds: int = 2
    eval_rounds: int = 2
    steps: int = 20
    requests: int = 300
    clients: int = 16
    client_requests: int = 20
    ingest_batches: int = 40
    freshness_trials: int = 5
    backlog: int = 1500
    phase_s: float = 20.0
    phases: int = 2
    quantized_train: int = 200
    quantized_test: int = 300


QUICK = Sizes(
    learn_examples=64,
    rounds=1,
    eval_rounds=1,
    steps=2,
    requests=30,
    client_requests=4,
    ingest_batches=5,
    freshness_trials=2,
    backlog=400,
    phase_s=2.0,
    phases=1,
    quantized_train=8,
    quantized_test=8,
)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny model, a few of everything: a smoke run")
    parser.add_argument("--out", type=Path, default=None, help="default: bench/results/speed.json")
    parser.add_argument("--only", choices=["eval_share", "quantized"], help="measure these figures alone")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else Sizes()
    with tempfile.TemporaryDirectory(prefix="retentive-speed-") as scratch:
        model = _model_dir(Path(scratch), args.quick)
        defaults = Settings(model=model, data_dir=Path(scratch) / "unused")
        if args.only == "quantized":
            print("the int8 served copy against the float model ...", flush=True)
            figures = quantized_figures(
                model, defaults.batch_size, defaults.api_threads, sizes.quantized_train, sizes.quantized_test
            )
            return _write(args.out or Path("bench/results/quantized.json"), _quantized_result(figures, args))
        if args.only:
            print("probe evaluation against training ...", flush=True)
            evaluation = evaluation_share(model, defaults, sizes.eval_rounds)
            return _write(args.out or Path("bench/results/eval_share.json"), _eval_result(evaluation, args))
        records = news_records(sizes.backlog)

        print("learner loop against a bare AdamW loop ...", flush=True)
        learner = learner_throughput(model, records[: sizes.learn_examples], sizes.rounds, defaults, scratch)
        print("MIGU step against a plain step ...", flush=True)
        steps = step_times(
            ["sgd", "migu"], sizes.steps, 2, defaults.batch_size, defaults.max_length, args.quick
        )
        migu_ratio = statistics.median(steps["migu"]) / statistics.median(steps["sgd"])
        print("the service over HTTP ...", flush=True)
        service = service_figures(model, records, sizes, defaults, Path(scratch) / "service")
        print("probe evaluation against training ...", flush=True)
        evaluation = evaluation_share(model, defaults, sizes.eval_rounds)
        print("the int8 served copy against the float model ...", flush=True)
        int8 = quantized_figures(
            model, defaults.batch_size, defaults.api_threads, sizes.quantized_train, sizes.quantized_test
        )

    result = {
        **run_metadata("bench.speed"),
        "model": "tiny" if args.quick else "all-MiniLM-L6-v2",
        "devices": {
            "learner": describe(resolve_device(defaults.device)),
            "api": describe(resolve_device(defaults.serving_device())),
        },
        "precision": resolve_precision(defaults.precision, resolve_device(defaults.device)),
        "allocator": service["allocator"],
        "learner_vs_bare": learner["ratio"],
        "default_vs_bare": learner["default_vs_bare"],
        "migu_vs_sgd_step": migu_ratio,
        **{key: service[key] for key in SERVICE_FIGURES},
        "eval_share": evaluation["eval_share"],
        "promotion_share": evaluation["promotion_share"],
        **{key: int8[key] for key in QUANTIZED_FIGURES},
        "details": {
            "learner": learner,
            "step_s": {name: statistics.median(times) for name, times in steps.items()},
            "service": service,
            "evaluation": evaluation,
            "quantized": int8,
        },
    }
    result["aims"] = aims(result)
    _write(args.out or Path("bench/results/speed.json"), result)
    print_summary(result)
    return result


def _eval_result(evaluation: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    result = {
        **run_metadata("bench.speed"),
        "model": "tiny" if args.quick else "all-MiniLM-L6-v2",
        "eval_share": evaluation["eval_share"],
        "promotion_share": evaluation["promotion_share"],
        "details": {"evaluation": evaluation},
    }
    result["aims"] = aims(result)
    print_summary(result)
    return result


def _quantized_result(figures: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    result = {
        **run_metadata("bench.speed"),
        "model": "tiny" if args.quick else "all-MiniLM-L6-v2",
        **{key: figures[key] for key in QUANTIZED_FIGURES},
        "details": {"quantized": figures},
    }
    result["aims"] = aims(result)
    print_summary(result)
    return result


def _write(out: Path, result: dict[str, Any]) -> dict[str, Any]:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def aims(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each aim with its measured value and whether it was met."""
    checked = {}
    for key, (sense, bound) in AIMS.items():
        if key not in result:
            continue
        value = result[key]
        met = value >= bound if sense == ">=" else value <= bound
        checked[key] = {"aim": f"{sense} {bound}", "value": value, "met": met}
    if "predict_p50_ms" in result:
        p50_bound = 1.5 * result["bare_forward_ms"] + 3.0
        checked["predict_p50_ms"] = {
            "aim": f"<= 1.5 x bare + 3 ms = {p50_bound:.1f}",
            "value": result["predict_p50_ms"],
            "met": result["predict_p50_ms"] <= p50_bound,
        }
    return checked


# --- the learner -------------------------------------------------------------------------------------


def learner_throughput(
    model: str, records: list[dict[str, str]], rounds: int, defaults: Settings, scratch: str
) -> dict[str, Any]:
    """Alternating rounds of the bare loop and the learner loop; the ratio of their summed rates.

    The ratio is like for like: the loop runs the bare loop's update (plain AdamW, linear head, its learning
    rates) with everything else of the service around it, so it measures the loop's own cost. The default
    strategy's rate, which replays old examples beside each new batch, is reported beside it."""
    torch.set_num_threads(defaults.learner_threads)
    like_bare = defaults.model_copy(
        update={
            "strategy": "sgd",
            "precision": "fp32",
            "head": "linear",
            "lr": BARE_LR,
            "head_lr": BARE_HEAD_LR,
        }
    )
    bare, loop, default = [], [], []
    for round_ in range(rounds):
        bare.append(bare_training(model, records, defaults.batch_size, defaults.max_length))
        loop.append(loop_training(model, records, like_bare, Path(scratch) / f"loop-{round_}"))
        default.append(loop_training(model, records, defaults, Path(scratch) / f"default-{round_}"))
    bare_rate, loop_rate, default_rate = (_rate(runs) for runs in (bare, loop, default))
    return {
        "bare_examples_per_s": bare_rate,
        "loop_examples_per_s": loop_rate,
        "ratio": loop_rate / bare_rate,
        "default_strategy": defaults.strategy,
        "default_examples_per_s": default_rate,
        "default_vs_bare": default_rate / bare_rate,
        "threads": defaults.learner_threads,
        "rounds": {"bare": bare, "loop": loop, "default": default},
    }


def evaluation_share(model: str, defaults: Settings, rounds: int) -> dict[str, Any]:
    """Share of the learner's time spent evaluating probes in steady state at the default settings.

    Registered probe sets of test texts, twice the evaluation budget in all, make every evaluation score
    a full budget, as it does once a stream has run long enough. Each round trains `eval_every` updates
    of `batch_size` stream examples (with the default strategy, replay and held-out routing), then runs
    one evaluation; both are timed on the learner's threads."""
    torch.set_num_threads(defaults.learner_threads)
    config = dataclasses.replace(defaults.learner_config(), eval_every=10**9)  # evaluations are timed apart
    tokenizer, encoder = load_encoder(model)
    learner = OnlineLearner(tokenizer, encoder, config)
    per_round = defaults.eval_every * defaults.batch_size
    stream = news_records(per_round * rounds + defaults.batch_size)
    # Test texts of the tasks trained on, interleaved the same way: never trained on.
    held = news_records(2 * defaults.eval_budget, split="test")
    learner.learn([Example(r["text"], r["label"]) for r in stream[: defaults.batch_size]])
    for start in range(0, len(held), defaults.probe_size):
        chunk = held[start : start + defaults.probe_size]
        learner.register_probe(f"speed-{start}", [(r["text"], r["label"]) for r in chunk])
    while any(learner.tracker.last_evaluated(probe.name) is None for probe in learner.probes.evaluable()):
        learner.evaluate()  # every set scored once, as in a stream that has run a while
    learner.check_promotion(defaults.promotion_budget)
    train_s, eval_s, scored = 0.0, 0.0, 0
    checks = PromotionChecks(defaults.promotion_budget, defaults.publish_every_s)
    for round_ in range(rounds):
        offset = defaults.batch_size + round_ * per_round
        for start in range(offset, offset + per_round, defaults.batch_size):
            batch = stream[start : start + defaults.batch_size]
            began = time.perf_counter()
            learner.learn([Example(r["text"], r["label"]) for r in batch])
            train_s += time.perf_counter() - began
            checks.maybe_check(learner)
        began = time.perf_counter()
        learner.evaluate()
        eval_s += time.perf_counter() - began
        scored += len(learner.tracker.column()["scored"])
    total_s = train_s + eval_s + checks.seconds
    return {
        "eval_share": eval_s / (train_s + eval_s),
        "promotion_share": checks.seconds / total_s,
        "probe_share": (eval_s + checks.seconds) / total_s,
        "train_s": train_s,
        "eval_s": eval_s,
        "promotion_s": checks.seconds,
        "promotion_checks": checks.count,
        "promotion_texts": checks.texts,
        "promotion_budget": defaults.promotion_budget,
        "publish_every_s": defaults.publish_every_s,
        "updates_per_evaluation": defaults.eval_every,
        "examples_per_update": defaults.batch_size,
        "eval_budget": defaults.eval_budget,
        "sets_scored": scored,
        "rounds": rounds,
        "strategy": defaults.strategy,
        "threads": defaults.learner_threads,
    }


class PromotionChecks:
    """The learner loop's promotion checks, on its clock: one when a publication is due, every
    `publish_every_s` of the learner's time or further apart when a check is slow (`publication_spacing`)."""

    def __init__(self, budget: int, publish_every_s: float) -> None:
        self.budget, self.publish_every_s = budget, publish_every_s
        self.spacing = publish_every_s
        self.last = time.perf_counter()
        self.seconds, self.count, self.texts = 0.0, 0, 0

    def maybe_check(self, learner: OnlineLearner) -> None:
        if time.perf_counter() - self.last < self.spacing:
            return
        began = time.perf_counter()
        verdict = learner.check_promotion(self.budget)
        took = time.perf_counter() - began
        self.seconds, self.count, self.texts = self.seconds + took, self.count + 1, self.texts + verdict.texts
        self.spacing = publication_spacing(self.publish_every_s, took)
        self.last = time.perf_counter()


def _rate(runs: list[dict[str, float]]) -> float:
    return sum(r["examples"] for r in runs) / sum(r["seconds"] for r in runs)


def bare_training(model: str, records: list[dict[str, str]], batch: int, max_len: int) -> dict[str, float]:
    """A plain AdamW loop: encoder, mean pooling, a linear head, cross-entropy, over in-memory tensors."""
    tokenizer, encoder = load_encoder(model)
    labels = sorted({r["label"] for r in records})
    head = nn.Linear(encoder.config.hidden_size, len(labels))
    optimizer = torch.optim.AdamW(
        [{"params": encoder.parameters(), "lr": BARE_LR}, {"params": head.parameters(), "lr": BARE_HEAD_LR}],
        weight_decay=0.01,
    )
    batches = []
    for start in range(0, len(records), batch):
        chunk = records[start : start + batch]
        tokens = tokenizer(
            [r["text"] for r in chunk], padding=True, truncation=True, max_length=max_len, return_tensors="pt"
        )
        batches.append((tokens, torch.tensor([labels.index(r["label"]) for r in chunk])))
    encoder.train()
    began = time.perf_counter()
    for tokens, targets in batches:
        pooled = mean_pool(encoder(**tokens).last_hidden_state, tokens["attention_mask"])
        functional.cross_entropy(head(pooled), targets).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return {"examples": len(records), "seconds": time.perf_counter() - began}


def loop_training(model: str, records: list[dict[str, str]], defaults: Settings, data_dir: Path) -> dict:
    """The service's learner loop on an embedded Redis holding `records`, until it has applied them all."""
    settings = defaults.model_copy(update={"data_dir": data_dir})
    client = connect("", data_dir)
    try:
        keys = settings.stream_keys()
        producer = FeedbackProducer(client, keys, limits=settings.record_limits())
        producer.add([FeedbackRecord(r["text"], r["label"], id=uuid.uuid4().hex) for r in records])
        tokenizer, encoder = load_encoder(model)
        store = SnapshotStore(settings.snapshot_dir, keep=settings.snapshot_keep)
        learner = OnlineLearner(tokenizer, encoder, settings.learner_config())
        loop = LearnerLoop(
            learner,
            store,
            client,
            keys,
            consumer_name="bench",
            config=settings.loop_config(),
            published=SnapshotStore(settings.published_dir, keep=2),
            limits=settings.record_limits(),
        )
        stop = threading.Event()
        worker = threading.Thread(target=loop.run, args=(stop,))
        began = time.perf_counter()
        worker.start()
        consumed = lambda: loop.state.counters.applied + loop.state.counters.held_out  # noqa: E731
        eventually(lambda: consumed() == len(records) or not worker.is_alive(), 3600, "the loop")
        seconds = time.perf_counter() - began
        stop.set()
        worker.join()
        return {"examples": learner.counters.examples_trained, "seconds": seconds}
    finally:
        client.close()
        stop_embedded(data_dir)


# --- the service over HTTP --------------------------------------------------------------------------


def service_figures(
    model: str, records: list[dict[str, str]], sizes: Sizes, defaults: Settings, data_dir: Path
) -> dict[str, Any]:
    """One real `retentive serve` (API and learner child). With the learner paused the API is a replica
    like any other: prediction latency, throughput and ingest are measured then, against their bare
    references; freshness before, and serving while learning after, on a backlog."""
    texts = [r["text"] for r in read_split("agnews", "test", max(sizes.requests, 200))]
    torch.set_num_threads(defaults.api_threads)
    classifier = _topic_classifier(model)
    allocator = service_allocator()
    with serving(data_dir, model=model, environ=ALLOCATORS[allocator]) as (base, process):
        with httpx.Client(base_url=base, timeout=60) as client:
            post_feedback(client, records[:64])
            eventually(lambda: _predicts(client), 600, "the first model")
            freshness = [_freshness(client, trial) for trial in range(sizes.freshness_trials)]
            _pause(client)
            for text in texts[:10]:
                _predicts(client, text)
            forward_before = _forward_seconds(client)
            latencies, bare = _predictions_beside_bare(client, classifier, texts[: sizes.requests])
            api_forward_ms = _mean_ms(_forward_seconds(client), forward_before)
            served_rate = _concurrent_predictions(base, texts, sizes.clients, sizes.client_requests)
            ingest = _ingest_rate(client, sizes.ingest_batches)
            xadd = _xadd_rate(data_dir, sizes.ingest_batches)
            api_rss = peak_rss_mb(process.pid)
            post_feedback(client, records[64:])
            client.post("/v1/learner/resume", json={}).raise_for_status()
            learning, paused = _learning_and_paused_latencies(client, texts, sizes)
        learner_rss = max(
            (peak_rss_mb(child.pid) for child in psutil.Process(process.pid).children()), default=0.0
        )
    bare_rate = _bare_batched_rate(classifier, texts, sizes.clients, sizes.client_requests)
    bare_ms = statistics.median(bare)
    return {
        "predict_p50_ms": _percentile(latencies, 50),
        "predict_p99_ms": _percentile(latencies, 99),
        "bare_forward_ms": bare_ms,
        "predict_p50_vs_bare": _percentile(latencies, 50) / bare_ms,
        "api_forward_mean_ms": api_forward_ms,
        "bare_forward_mean_ms": statistics.mean(bare),
        "served_texts_per_s": served_rate,
        "bare_batched_texts_per_s": bare_rate,
        "throughput_vs_bare": served_rate / bare_rate,
        "ingest_examples_per_s": ingest,
        "xadd_examples_per_s": xadd,
        "ingest_vs_xadd": ingest / xadd,
        "freshness_s": statistics.median(freshness),
        "freshness_trials_s": freshness,
        "p99_learning_ms": _percentile(learning, 99),
        "p99_paused_ms": _percentile(paused, 99),
        "p50_learning_ms": _percentile(learning, 50),
        "p50_paused_ms": _percentile(paused, 50),
        "p99_learning_vs_paused": _percentile(learning, 99) / _percentile(paused, 99),
        "requests_learning": len(learning),
        "requests_paused": len(paused),
        "api_rss_mb": api_rss,
        "learner_rss_mb": learner_rss,
        "api_threads": defaults.api_threads,
        "allocator": allocator,
        "requests": sizes.requests,
        "clients": sizes.clients,
    }


def service_allocator() -> str:
    """The malloc the service runs with: tcmalloc, which the container image preloads, where it is
    installed, else glibc's."""
    return "tcmalloc" if "tcmalloc" in available_allocators() else "glibc"


def _topic_classifier(model: str) -> TextClassifier:
    """The model with the four news topics, for the bare forward passes the served ones are set against."""
    tokenizer, encoder = load_encoder(model)
    learner = OnlineLearner(tokenizer, encoder, LearnerConfig(probe_fraction=0.0))
    learner.learn([Example(r["text"], r["label"]) for r in read_split("agnews", "train", 32)])
    learner.model.eval()
    return learner.model


def _predicts(client: httpx.Client, text: str = "x") -> bool:
    return client.post("/v1/predict", json={"inputs": [text]}).status_code == 200


def _pause(client: httpx.Client) -> None:
    client.post("/v1/learner/pause", json={}).raise_for_status()
    eventually(lambda: _learner_state(client) == "paused", 120, "the learner to pause")


def _predictions_beside_bare(
    client: httpx.Client, classifier: TextClassifier, texts: list[str], block: int = 10
) -> tuple[list[float], list[float]]:
    """Milliseconds of one-text requests and of the bare forward pass on the same texts, in alternating
    blocks, so that a machine slowing down or speeding up moves both alike."""
    served: list[float] = []
    bare: list[float] = []
    for start in range(0, len(texts), block):
        part = texts[start : start + block]
        served += _sequential_predictions(client, part)
        bare += forward_timings(classifier, part)
    return served, bare


def _forward_seconds(client: httpx.Client) -> tuple[float, float]:
    """The API's time in batched forward passes so far, and their count, from its metrics."""
    page = client.get("/metrics").raise_for_status().text
    return (
        metric_sample(page, "retentive_predict_batch_seconds_sum"),
        metric_sample(page, "retentive_predict_batch_seconds_count"),
    )


def _mean_ms(after: tuple[float, float], before: tuple[float, float]) -> float:
    return 1000 * (after[0] - before[0]) / (after[1] - before[1])


def _sequential_predictions(client: httpx.Client, texts: list[str]) -> list[float]:
    latencies = []
    for text in texts:
        began = time.perf_counter()
        client.post("/v1/predict", json={"inputs": [text]}).raise_for_status()
        latencies.append((time.perf_counter() - began) * 1000)
    return latencies


def _concurrent_predictions(base: str, texts: list[str], clients: int, each: int) -> float:
    """Texts per second answered to `clients` threads each sending `each` one-text requests in turn."""

    def client_run(offset: int) -> None:
        with httpx.Client(base_url=base, timeout=60) as client:
            for i in range(each):
                text = texts[(offset * each + i) % len(texts)]
                client.post("/v1/predict", json={"inputs": [text]}).raise_for_status()

    began = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client_run, range(clients)))
    return clients * each / (time.perf_counter() - began)


def _bare_batched_rate(classifier: TextClassifier, texts: list[str], batch: int, rounds: int) -> float:
    chunks = [texts[(i * batch) % len(texts) :][:batch] for i in range(rounds)]
    batches = [classifier.tokenize(chunk) for chunk in chunks]
    with torch.inference_mode():
        began = time.perf_counter()
        for tokens in batches:
            classifier.head(classifier.embed(tokens))
    return sum(len(chunk) for chunk in chunks) / (time.perf_counter() - began)


def _ingest_rate(client: httpx.Client, batches: int) -> float:
    payloads = [{"examples": _feedback_batch(100)} for _ in range(batches)]
    began = time.perf_counter()
    for payload in payloads:
        client.post("/v1/feedback", json=payload).raise_for_status()
    return 100 * batches / (time.perf_counter() - began)


def _xadd_rate(data_dir: Path, batches: int) -> float:
    """Pipelined XADD of the same entries, 100 per round trip, on the service's Redis."""
    client = connect("", data_dir)
    key = f"bench:xadd:{uuid.uuid4().hex}"
    entries = [
        [FeedbackRecord(e["text"], e["label"], id=e["id"], received_at=time.time()).to_fields() for e in b]
        for b in (_feedback_batch(100) for _ in range(batches))
    ]
    try:
        began = time.perf_counter()
        for batch in entries:
            pipeline = client.pipeline(transaction=False)
            for fields in batch:
                pipeline.xadd(key, fields)
            pipeline.execute()
        return 100 * batches / (time.perf_counter() - began)
    finally:
        client.delete(key)
        client.close()


def _feedback_batch(size: int) -> list[dict[str, str]]:
    return [
        {"text": f"a feedback text of ordinary length, number {i}", "label": "news", "id": uuid.uuid4().hex}
        for i in range(size)
    ]


def _freshness(client: httpx.Client, trial: int) -> float:
    """Seconds from posting examples of a new label until a prediction ranks that label at all."""
    label = f"fresh-{trial}-{uuid.uuid4().hex[:6]}"
    examples = [
        {"text": f"a {label} example number {i}", "label": label, "id": uuid.uuid4().hex} for i in range(8)
    ]
    began = time.perf_counter()
    client.post("/v1/feedback", json={"examples": examples}).raise_for_status()

    def served() -> bool:
        answer = client.post("/v1/predict", json={"inputs": [examples[0]["text"]], "top_k": 100}).json()
        return any(scored["label"] == label for scored in answer["predictions"][0]["top"])

    eventually(served, 300, f"label {label} to be served", every=0.05)
    return time.perf_counter() - began


def _learning_and_paused_latencies(
    client: httpx.Client, texts: list[str], sizes: Sizes
) -> tuple[list[float], list[float]]:
    """Alternating phases of one-text predictions: the learner training on a backlog, then paused."""
    learning: list[float] = []
    paused: list[float] = []
    for _ in range(sizes.phases):
        eventually(lambda: _learner_state(client) == "running", 120, "the learner to run")
        learning += _timed_phase(client, texts, sizes.phase_s)
        _pause(client)
        paused += _timed_phase(client, texts, sizes.phase_s)
        client.post("/v1/learner/resume", json={}).raise_for_status()
    return learning, paused


def _timed_phase(client: httpx.Client, texts: list[str], seconds: float) -> list[float]:
    latencies = []
    ends = time.perf_counter() + seconds
    while time.perf_counter() < ends:
        latencies += _sequential_predictions(client, [texts[len(latencies) % len(texts)]])
    return latencies


def _learner_state(client: httpx.Client) -> str:
    return client.get("/v1/model").json()["learner"]


def post_feedback(client: httpx.Client, records: list[dict[str, str]]) -> None:
    for start in range(0, len(records), 100):
        chunk = records[start : start + 100]
        examples = [{"text": r["text"], "label": r["label"], "id": uuid.uuid4().hex} for r in chunk]
        client.post("/v1/feedback", json={"examples": examples}).raise_for_status()


# --- shared pieces -----------------------------------------------------------------------------------


def _model_dir(scratch: Path, quick: bool) -> str:
    return save_tiny_model(scratch / "tiny-model") if quick else str(default_model_path())


def peak_rss_mb(pid: int) -> float:
    """Peak resident memory of a live process (VmHWM), in MiB."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return psutil.Process(pid).memory_info().rss / 2**20


def _percentile(values: list[float], percent: int) -> float:
    if len(values) < 2:
        return values[0]
    return (
        statistics.quantiles(values, n=100, method="inclusive")[percent - 1] if percent < 100 else max(values)
    )


def print_summary(result: dict[str, Any]) -> None:
    print(f"model {result['model']}, {result['machine']}")
    for key, checked in result["aims"].items():
        mark = "met" if checked["met"] else "MISSED"
        print(f"  {key:<26}{checked['value']:>10.3f}   aim {checked['aim']:<28}{mark}")
    for key in ("predict_p99_ms", "freshness_s", "learner_rss_mb", "api_rss_mb", *QUANTIZED_FIGURES[1:]):
        if key in result:
            print(f"  {key:<26}{result[key]:>10.3f}")
    learner = result["details"].get("learner")
    if learner is None:
        return
    print(
        f"  learner, default strategy {learner['default_strategy']}: "
        f"{learner['default_examples_per_s']:.1f} examples/s, {learner['default_vs_bare']:.2f}x bare"
    )


if __name__ == "__main__":
    main()
