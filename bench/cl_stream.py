"""Forgetting on a task-free stream: the four cl_stream tasks in one concatenated stream, no task ids.

    python -m bench.cl_stream [--order order1[,order2...]|all]
                              [--strategies sgd,migu,replay,migu+replay,joint] [--loss ace] [--head linear]
                              [--train-per-task 1000] [--test-per-task 300] [--seed 0]
                              [--max-len 128] [--lr 1e-4] [--quantile 0.7] [--quick]
                              [--arrival batched|trickle|sorted|bursty]
                              [--out bench/results/cl_stream_{order}.json] [--resume]

Each strategy learns the stream from scratch through the same `OnlineLearner` the service runs, one pass,
in micro-batches, with every label in one open head (amazon and yelp share their five ratings). After each
task's portion of the stream it is evaluated on every task's test set, predicting over all labels it knows:
that is the accuracy matrix, matrix[i][j] = accuracy on task j after the stream went through task i.
Beside it, `within_task_matrix` holds the same accuracy with each prediction restricted to the task's own
labels, as if the task were named: where it stays up while the matrix falls, the encoder still tells the
old task's classes apart and the forgetting is in the head, where new labels outscore old ones.
A task none of whose labels the head holds yet scores 0.0 without being run. `joint` learns the shuffled
union of all tasks (the upper bound, not a continual method), evaluated after each quarter of its stream.

`--arrival` is how the feedback reaches the learner, as people send it: `batched` in shuffled micro-batches of
`--batch`, `trickle` one example per call (one correction at a time), `sorted` in micro-batches of each task's
examples sorted by label (a nightly file), `bursty` in bursts of four micro-batches between runs of single
examples. Each row records its arrival and its prequential accuracy (each incoming example scored before it
is learned from: `cumulative` and `last_1000`), the figure that shows how fast the learner adapts, beside
the accuracy matrix that shows what it kept. Rows of another arrival than `batched` go to
`cl_stream_{order}_{arrival}.json` unless `--out` says otherwise.

A strategy may carry its own settings, each after an `@`: `migu@loss=ce@lr=3e-4@quantile=0.5`; the global
flags are the defaults. The spec as written names the row in the result file, which also lists each row's
strategy, loss, head and settings. One JSON file per order, with a heatmap per row and a bar chart of AA and
forgetting beside it (same name, `.png`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.data import data_dir, read_split, task_orders
from bench.meta import run_metadata
from bench.plots import plot_cl_results
from learner.encoder import default_model_path, load_encoder, tiny_bert
from learner.forgetting import task_metrics
from learner.online import Example, LearnerConfig, OnlineLearner
from learner.strategies import names as strategy_names

JOINT = "joint"
ARRIVALS = ("batched", "trickle", "sorted", "bursty")
BURST_BATCHES = 4
# LearnerConfig fields a strategy spec may set, with the type to read the value as.
OVERRIDABLE = {
    "loss": str,
    "head": str,
    "imprint": lambda v: v.lower() in ("1", "true", "yes"),
    "lr": float,
    "head_lr": float,
    "quantile": float,
    "gate_ema": float,
    "gate_warmup": int,
    "replay_size": int,
    "replay_ratio": float,
    "weight_decay": float,
}


@dataclass(frozen=True)
class Run:
    """One row of the results: a strategy and the learner settings it runs with."""

    spec: str
    joint: bool
    config: LearnerConfig


@dataclass(frozen=True)
class Task:
    name: str
    labels: frozenset[str]
    train: list[Example]
    test: list[dict[str, str]]


def parse_run(spec: str, defaults: LearnerConfig) -> Run:
    """`NAME[@key=value...]`; `joint` trains plain fine-tuning (or the strategy given as `strategy=`)."""
    name, *options = spec.split("@")
    overrides: dict[str, Any] = {}
    for option in options:
        key, sep, value = option.partition("=")
        if key == "strategy" and name == JOINT:
            overrides["strategy"] = value
            continue
        if not sep or key not in OVERRIDABLE:
            raise SystemExit(f"--strategies: {option!r} in {spec!r}: settable are {', '.join(OVERRIDABLE)}")
        overrides[key] = OVERRIDABLE[key](value)
    strategy = overrides.pop("strategy", "sgd") if name == JOINT else name
    return Run(spec, name == JOINT, dataclasses.replace(defaults, strategy=strategy, **overrides))


def load_tasks(order: list[str], train: int, test: int, seed: int, root: Path) -> list[Task]:
    """Each task's first `train` and `test` records; the training part shuffled by `seed`."""
    tasks = []
    for name in order:
        records = read_split(name, "train", train, root=root)
        random.Random(f"{seed}-{name}").shuffle(records)
        labels = frozenset(json.loads((root / name / "labels.json").read_text()))
        examples = [Example(r["text"], r["label"]) for r in records]
        tasks.append(Task(name, labels, examples, read_split(name, "test", test, root=root)))
    return tasks


def accuracies(learner: OnlineLearner, task: Task) -> tuple[float, float]:
    """Accuracy over every label the head knows, and within the task's own labels (as if the task were
    named): the gap between the two is forgetting in the head's competition between tasks, not in what
    the encoder still tells apart."""
    if not task.labels & set(learner.model.labels):
        return 0.0, 0.0
    predictions = learner.predict([r["text"] for r in task.test], top_k=len(learner.model.labels))
    hits = within = 0
    for prediction, record in zip(predictions, task.test, strict=True):
        hits += prediction.label == record["label"]
        own = next(scored.label for scored in prediction.top if scored.label in task.labels)
        within += own == record["label"]
    return hits / len(task.test), within / len(task.test)


def portions(run: Run, tasks: list[Task], seed: int) -> list[list[Example]]:
    """What the learner sees between evaluations: each task in order, or (joint) quarters of the union."""
    if not run.joint:
        return [task.train for task in tasks]
    union = [example for task in tasks for example in task.train]
    random.Random(seed).shuffle(union)
    size = -(-len(union) // len(tasks))
    return [union[start : start + size] for start in range(0, len(union), size)]


def arrivals(portion: list[Example], arrival: str, batch: int) -> list[list[Example]]:
    """The calls to `learn` that deliver `portion` the way `arrival` says."""
    if arrival == "trickle":
        return [[example] for example in portion]
    if arrival == "sorted":
        portion = sorted(portion, key=lambda example: example.label)
    if arrival in ("batched", "sorted"):
        return [portion[start : start + batch] for start in range(0, len(portion), batch)]
    calls, start, burst = [], 0, True
    while start < len(portion):
        if burst:
            end = start + BURST_BATCHES * batch
            calls += [portion[i : min(i + batch, end)] for i in range(start, min(end, len(portion)), batch)]
        else:
            end = start + batch
            calls += [[example] for example in portion[start:end]]
        start, burst = end, not burst
    return calls


def run_stream(
    run: Run,
    tasks: list[Task],
    encoder_factory: Any,
    batch: int,
    seed: int,
    log: Any,
    arrival: str = "batched",
) -> dict[str, Any]:
    tokenizer, encoder = encoder_factory()
    initial = {name: weight.detach().clone() for name, weight in encoder.named_parameters()}
    learner = OnlineLearner(tokenizer, encoder, run.config)
    matrix: list[list[float]] = []
    within_task: list[list[float]] = []
    train_s = 0.0
    began = time.perf_counter()
    for position, portion in enumerate(portions(run, tasks, seed)):
        started = time.perf_counter()
        for examples in arrivals(portion, arrival, batch):
            learner.learn(examples)
        train_s += time.perf_counter() - started
        measured = [accuracies(learner, task) for task in tasks]
        matrix.append([overall for overall, _ in measured])
        within_task.append([own for _, own in measured])
        after = f"quarter {position + 1}" if run.joint else tasks[position].name
        log(f"  {run.spec:<28} after {after:<10} " + " ".join(f"{a:.3f}" for a in matrix[-1]))
    metrics, within_metrics = task_metrics(matrix), task_metrics(within_task)
    trained = learner.counters.examples_trained
    prequential = learner.prequential.report()
    return {
        "strategy": run.config.strategy,
        "joint": run.joint,
        "arrival": arrival,
        "prequential": {key: prequential[key] for key in ("cumulative", "last_1000", "scored")},
        "loss": run.config.loss,
        "head": run.config.head,
        "settings": {key: getattr(run.config, key) for key in OVERRIDABLE},
        "aa": metrics.aa,
        "forgetting": metrics.forgetting,
        "bwt": metrics.bwt,
        "matrix": matrix,
        "within_task_matrix": within_task,
        "within_task_aa": within_metrics.aa,
        "within_task_forgetting": within_metrics.forgetting,
        "examples_per_s": trained / train_s,
        "encoder_drift": encoder_drift(initial, encoder),
        "skipped_steps": learner.counters.skipped_steps,
        "wall_s": time.perf_counter() - began,
    }


def encoder_drift(initial: dict[str, torch.Tensor], encoder: torch.nn.Module) -> float:
    """How far the stream moved the encoder: the L2 norm of the change over the L2 norm of the start."""
    moved = sum(float((w.detach() - initial[n]).pow(2).sum()) for n, w in encoder.named_parameters())
    start = sum(float(w.pow(2).sum()) for w in initial.values())
    return (moved / start) ** 0.5


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=None, help="cl_stream directory")
    parser.add_argument("--order", default="order1", help="an order of the manifest, a list, or 'all'")
    parser.add_argument("--strategies", default=",".join([*strategy_names(), JOINT]))
    parser.add_argument("--loss", choices=["ce", "ace"], default=LearnerConfig.loss)
    parser.add_argument("--head", choices=["linear", "cosine"], default=LearnerConfig.head)
    parser.add_argument("--train-per-task", type=int, default=1000)
    parser.add_argument("--test-per-task", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-len", type=int, default=LearnerConfig.max_length)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=LearnerConfig.lr)
    parser.add_argument("--head-lr", type=float, default=LearnerConfig.head_lr)
    parser.add_argument("--quantile", type=float, default=LearnerConfig.quantile)
    parser.add_argument("--replay-size", type=int, default=LearnerConfig.replay_size)
    parser.add_argument("--replay-ratio", type=float, default=LearnerConfig.replay_ratio)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--quick", action="store_true", help="tiny model, a few examples: a smoke run")
    parser.add_argument("--plots", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--arrival", choices=ARRIVALS, default="batched", help="how feedback reaches the learner"
    )
    parser.add_argument(
        "--out", default=None, help="result file (default bench/results/cl_stream_{order}.json)"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the rows already in --out (same config) and run only the missing ones",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.train_per_task, args.test_per_task, args.max_len = 48, 16, 32

    root = args.data or data_dir()
    orders = task_orders(root)
    chosen = list(orders) if args.order == "all" else args.order.split(",")
    unknown = [name for name in chosen if name not in orders]
    if unknown:
        raise SystemExit(f"--order: {', '.join(unknown)} not in the manifest ({', '.join(orders)})")
    defaults = LearnerConfig(
        loss=args.loss,
        head=args.head,
        lr=args.lr,
        head_lr=args.head_lr,
        quantile=args.quantile,
        replay_size=args.replay_size,
        replay_ratio=args.replay_ratio,
        max_length=args.max_len,
        probe_fraction=0.0,
        seed=args.seed,
    )
    runs = [parse_run(spec, defaults) for spec in args.strategies.split(",")]

    def encoder_factory() -> Any:
        return tiny_bert(seed=args.seed) if args.quick else load_encoder(default_model_path())

    results = {}
    for order in chosen:
        tasks = load_tasks(orders[order], args.train_per_task, args.test_per_task, args.seed, root)
        print(f"{order}: {' -> '.join(orders[order])}", flush=True)
        suffix = "" if args.arrival == "batched" else f"_{args.arrival}"
        out = Path((args.out or f"bench/results/cl_stream_{{order}}{suffix}.json").format(order=order))
        out.parent.mkdir(parents=True, exist_ok=True)
        config = {
            "train_per_task": args.train_per_task,
            "test_per_task": args.test_per_task,
            "batch": args.batch,
            "max_len": args.max_len,
            "seed": args.seed,
            "model": "tiny" if args.quick else "all-MiniLM-L6-v2",
            # Named only when not batched, so that rows measured before arrivals existed still resume.
            **({} if args.arrival == "batched" else {"arrival": args.arrival}),
        }
        earlier = _rows_in(out, config) if args.resume else {}
        result = _result_file(order, orders[order], config, earlier, argv)
        for run in runs:
            if run.spec in earlier:
                print(f"{run.spec}: already in {out}, kept", flush=True)
                continue
            row = run_stream(
                run,
                tasks,
                encoder_factory,
                args.batch,
                args.seed,
                lambda x: print(x, flush=True),
                args.arrival,
            )
            row["run"] = run_metadata("bench.cl_stream", argv)
            result = _add_row(out, result, run.spec, row, args.resume)
        if args.plots:
            plot_cl_results(result, out.with_suffix(".png"))
        print_summary(result)
        results[order] = result
    return results


def _rows_in(path: Path, config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The rows of an earlier result file, when it was measured with the same config."""
    if not path.exists():
        return {}
    earlier = json.loads(path.read_text())
    return earlier["strategies"] if earlier.get("config") == config else {}


def _add_row(
    out: Path, result: dict[str, Any], spec: str, row: dict[str, Any], resume: bool
) -> dict[str, Any]:
    """Write `result` with `row` added, after every row: a long run that stops keeps what it finished.
    With `resume` the file is re-read first, so runs of other rows of the same order can share it."""
    rows = _rows_in(out, result["config"]) if resume else result["strategies"]
    result = {**result, "strategies": {**rows, spec: row}}
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def _result_file(
    order: str,
    tasks: list[str],
    config: dict[str, Any],
    rows: dict[str, dict[str, Any]],
    argv: list[str] | None,
) -> dict[str, Any]:
    return {
        **run_metadata("bench.cl_stream", argv),
        "order": order,
        "tasks": tasks,
        "model": config["model"],
        "config": config,
        "strategies": rows,
    }


def print_summary(result: dict[str, Any]) -> None:
    print(f"{result['order']} ({' -> '.join(result['tasks'])}):")
    print(f"  {'strategy':<28}{'AA':>7}{'forget':>8}{'BWT':>8}{'drift':>8}{'ex/s':>8}{'preq':>7}")
    for spec, row in result["strategies"].items():
        preq = (row.get("prequential") or {}).get("cumulative")
        print(
            f"  {spec:<28}{row['aa']:>7.3f}{row['forgetting']:>8.3f}{row['bwt']:>8.3f}"
            f"{row['encoder_drift']:>8.4f}{row['examples_per_s']:>8.1f}"
            f"{preq if preq is None else format(preq, '.3f'):>7}"
        )


if __name__ == "__main__":
    main()
