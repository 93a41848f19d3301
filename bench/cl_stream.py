"""Forgetting on a task-free stream: the cl_stream tasks in one concatenated stream, no task ids.

    python -m bench.cl_stream [--order order1[,order2,long...]|all]
                              [--strategies sgd,migu,replay,migu+replay,joint | --tuned FILE]
                              [--loss ace] [--head linear] [--split test|dev]
                              [--train-per-task 1000] [--test-per-task 300] [--seed 0]
                              [--max-len 128] [--lr 1e-4] [--quantile 0.7] [--joint-epochs 5] [--quick]
                              [--arrival batched|trickle|sorted|bursty]
                              [--out bench/results/cl_stream_{order}.json] [--resume]

Each strategy learns the stream from scratch through the same `OnlineLearner` the service runs, one pass,
in micro-batches, with every label in one open head (amazon and yelp share their five ratings). After each
segment of the stream it is evaluated on every task's scoring records, predicting over all labels it knows:
that is the accuracy matrix, matrix[i][j] = accuracy on task j after the stream went through segment i.
The manifest's orders have one segment per task; `long` (see `bench.long_stream`) cuts the tasks into seven
label groups over twelve segments in which groups come back, and its matrix is 12 x 7.

`--split` names what a run is scored on: `test` (`test.jsonl`, for reporting) or `dev` (the last records of
`train.jsonl`, never trained on, for choosing settings: `bench.tune` runs there). Each file records its split.
Beside it, `within_task_matrix` holds the same accuracy with each prediction restricted to the task's own
labels, as if the task were named: where it stays up while the matrix falls, the encoder still tells the
old task's classes apart and the forgetting is in the head, where new labels outscore old ones.
A task none of whose labels the head holds yet scores 0.0 without being run.

`joint` is the upper bound, not a continual method: plain fine-tuning with full cross-entropy on the shuffled
union of the whole stream, for as many epochs as its mean dev accuracy keeps rising (at most
`--joint-epochs`; the weights of its best epoch are kept). Its row records the dev accuracy after each epoch
and one matrix row: the scoring split after training.

`--arrival` is how the feedback reaches the learner, as people send it: `batched` in shuffled micro-batches of
`--batch`, `trickle` one example per call (one correction at a time), `sorted` each task's examples sorted by
label and posted at once (a nightly file), `bursty` in bursts of four micro-batches between runs of single
examples. Each call hands the learner what the service's learner reads in one go, what arrived together up
to `--window` examples (RETENTIVE_MIX_WINDOW), which it learns in shuffled micro-batches of `--batch`
(`OnlineLearner.learn_window`); `--window 0`, the default as in the service, learns in the order given.
Each row records its arrival and its prequential accuracy (each incoming example scored before it
is learned from: `cumulative` and `last_1000`), the figure that shows how fast the learner adapts, beside
the accuracy matrix that shows what it kept. Rows of another arrival than `batched` go to
`cl_stream_{order}_{arrival}.json` unless `--out` says otherwise.

A strategy may carry its own settings, each after an `@`: `migu@loss=ce@lr=3e-4@quantile=0.5`; the global
flags are the defaults. The spec as written names the row in the result file, which also lists each row's
strategy, loss, head and settings; `--tuned FILE` runs the specs a `bench.tune` file chose on dev. One
JSON file per order, with a heatmap per row and a bar chart of AA and forgetting beside it (`.png`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from app.learner_loop import LoopConfig
from bench import long_stream
from bench.data import SPLITS, data_dir, read_scoring, read_train, task_orders
from bench.meta import run_metadata
from bench.plots import plot_cl_results
from learner.encoder import default_model_path, load_encoder, tiny_bert
from learner.forgetting import TaskMetrics, task_metrics
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
    "recent_size": int,
    "recent_ratio": float,
    "weight_decay": float,
    "precision": str,
    "pass_size": int,
}


@dataclass(frozen=True)
class Run:
    """One row of the results: a strategy and the learner settings it runs with."""

    spec: str
    joint: bool
    config: LearnerConfig


@dataclass(frozen=True)
class Task:
    """What the stream is scored on: a task (or a label group of the long stream) and its records."""

    name: str
    labels: frozenset[str]
    test: list[dict[str, str]]
    dev: list[dict[str, str]]


@dataclass(frozen=True)
class Stream:
    """The segments the learner goes through, in order, and the tasks scored after each of them."""

    tasks: list[Task]
    segments: list[tuple[str, list[Example]]]

    def learned_at(self) -> list[int]:
        """For each task, the segment after which it was first learned."""
        names = [name for name, _ in self.segments]
        return [names.index(task.name) for task in self.tasks]


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
    if name == JOINT:
        settings = {"strategy": "sgd", "loss": "ce", **overrides}
        return Run(spec, True, dataclasses.replace(defaults, **settings))
    return Run(spec, False, dataclasses.replace(defaults, strategy=name, **overrides))


def tuned_specs(path: Path) -> str:
    """The specs a `bench.tune` result chose on dev, one per strategy, as a `--strategies` list."""
    return ",".join(json.loads(path.read_text())["chosen"].values())


def load_stream(
    order: str, tasks: list[str], train: int, scored: int, split: str, seed: int, root: Path
) -> Stream:
    """A manifest order (each task's first `train` records, shuffled by `seed`) or the long stream."""
    if order == long_stream.NAME:
        return _load_long_stream(train, scored, split, seed, root)
    stream_tasks, stream = [], []
    for name in tasks:
        records = read_train(name, train, root=root)
        random.Random(f"{seed}-{name}").shuffle(records)
        labels = frozenset(json.loads((root / name / "labels.json").read_text()))
        dev = read_scoring(name, "dev", scored, root=root)
        stream_tasks.append(Task(name, labels, read_scoring(name, split, scored, root=root), dev))
        stream.append((name, [Example(r["text"], r["label"]) for r in records]))
    return Stream(stream_tasks, stream)


def _load_long_stream(per_segment: int, scored: int, split: str, seed: int, root: Path) -> Stream:
    groups = long_stream.label_groups(root)
    tasks = [
        Task(
            group.name,
            group.labels,
            long_stream.scoring_records(group, split, scored, root),
            long_stream.scoring_records(group, "dev", scored, root),
        )
        for group in groups
    ]
    segments = [
        (name, [Example(r["text"], r["label"]) for r in records])
        for name, records in long_stream.segments(groups, per_segment, seed, root)
    ]
    return Stream(tasks, segments)


def accuracies(learner: OnlineLearner, task: Task, records: list[dict[str, str]]) -> tuple[float, float]:
    """Accuracy over every label the head knows, and within the task's own labels (as if the task were
    named): the gap between the two is forgetting in the head's competition between tasks, not in what
    the encoder still tells apart."""
    if not task.labels & set(learner.model.labels):
        return 0.0, 0.0
    predictions = learner.predict([r["text"] for r in records], top_k=len(learner.model.labels))
    hits = within = 0
    for prediction, record in zip(predictions, records, strict=True):
        hits += prediction.label == record["label"]
        own = next(scored.label for scored in prediction.top if scored.label in task.labels)
        within += own == record["label"]
    return hits / len(records), within / len(records)


def arrivals(portion: list[Example], arrival: str, batch: int, window: int) -> list[list[Example]]:
    """The calls to `learn_window` that deliver `portion` the way `arrival` says, as the service's learner
    reads them: what arrived together, up to `window` examples (RETENTIVE_MIX_WINDOW), is one call."""
    window = max(window, batch)
    if arrival == "trickle":
        return [[example] for example in portion]
    if arrival == "sorted":
        portion = sorted(portion, key=lambda example: example.label)
        return [portion[start : start + window] for start in range(0, len(portion), window)]
    if arrival == "batched":
        return [portion[start : start + batch] for start in range(0, len(portion), batch)]
    calls, start, burst = [], 0, True
    while start < len(portion):
        if burst:
            end = start + BURST_BATCHES * batch
            calls += [portion[i : min(i + window, end)] for i in range(start, min(end, len(portion)), window)]
        else:
            end = start + batch
            calls += [[example] for example in portion[start:end]]
        start, burst = end, not burst
    return calls


def run_stream(
    run: Run,
    stream: Stream,
    encoder_factory: Any,
    batch: int,
    log: Any,
    arrival: str = "batched",
    joint_epochs: int = 5,
    window: int = LoopConfig.mix_window,
) -> dict[str, Any]:
    tokenizer, encoder = encoder_factory()
    initial = {name: weight.detach().clone() for name, weight in encoder.named_parameters()}
    learner = OnlineLearner(tokenizer, encoder, run.config)
    began = time.perf_counter()
    if run.joint:
        trained, extra = _train_joint(run, learner, stream, batch, joint_epochs, log)
        measured = [accuracies(learner, task, task.test) for task in stream.tasks]
        matrix, within_task = [[a for a, _ in measured]], [[w for _, w in measured]]
        # An upper bound learns everything at once: nothing to forget, no transfer to measure.
        metrics = within_metrics = TaskMetrics(aa=statistics.mean(matrix[0]), forgetting=0.0, bwt=0.0)
        log(f"  {run.spec:<28} after {extra['epochs']} epochs " + " ".join(f"{a:.3f}" for a in matrix[0]))
    else:
        matrix, within_task, trained = [], [], 0.0
        for name, portion in stream.segments:
            started = time.perf_counter()
            for examples in arrivals(portion, arrival, batch, window):
                learner.learn_window(examples, batch)
            trained += time.perf_counter() - started
            measured = [accuracies(learner, task, task.test) for task in stream.tasks]
            matrix.append([overall for overall, _ in measured])
            within_task.append([own for _, own in measured])
            log(f"  {run.spec:<28} after {name:<10} " + " ".join(f"{a:.3f}" for a in matrix[-1]))
        learned_at = stream.learned_at()
        metrics, within_metrics = task_metrics(matrix, learned_at), task_metrics(within_task, learned_at)
        extra = {}
    prequential = learner.prequential.report()
    return {
        "strategy": run.config.strategy,
        "joint": run.joint,
        "arrival": arrival,
        "prequential": {key: prequential[key] for key in ("cumulative", "last_1000", "scored")},
        "loss": run.config.loss,
        "head": run.config.head,
        "settings": {key: getattr(run.config, key) for key in OVERRIDABLE},
        "precision": learner.precision,
        "aa": metrics.aa,
        "forgetting": metrics.forgetting,
        "bwt": metrics.bwt,
        "matrix": matrix,
        "within_task_matrix": within_task,
        "within_task_aa": within_metrics.aa,
        "within_task_forgetting": within_metrics.forgetting,
        **extra,
        "examples_per_s": learner.counters.examples_trained / trained,
        "encoder_drift": encoder_drift(initial, encoder),
        "skipped_steps": learner.counters.skipped_steps,
        "wall_s": time.perf_counter() - began,
    }


def _train_joint(
    run: Run, learner: OnlineLearner, stream: Stream, batch: int, max_epochs: int, log: Any
) -> tuple[float, dict[str, Any]]:
    """Epochs over the shuffled union while the mean dev accuracy rises; the best epoch's weights stay."""
    union = [example for _, portion in stream.segments for example in portion]
    dev_aa: list[float] = []
    best: dict[str, torch.Tensor] | None = None
    train_s = 0.0
    for epoch in range(max_epochs):
        random.Random(f"{run.config.seed}-joint-{epoch}").shuffle(union)
        started = time.perf_counter()
        for start in range(0, len(union), batch):
            learner.learn(union[start : start + batch])
        train_s += time.perf_counter() - started
        dev_aa.append(statistics.mean(accuracies(learner, task, task.dev)[0] for task in stream.tasks))
        log(f"  {run.spec:<28} epoch {epoch + 1}: dev accuracy {dev_aa[-1]:.3f}")
        if dev_aa[-1] <= max(dev_aa[:-1], default=-1.0):
            break
        best = {name: value.detach().clone() for name, value in learner.model.state_dict().items()}
    assert best is not None
    learner.model.load_state_dict(best)
    epochs = dev_aa.index(max(dev_aa)) + 1
    return train_s, {"epochs": epochs, "dev_aa_by_epoch": dev_aa}


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
    parser.add_argument(
        "--order", default="order1", help=f"a manifest order or '{long_stream.NAME}', a list, or 'all'"
    )
    parser.add_argument("--strategies", default=",".join([*strategy_names(), JOINT]))
    parser.add_argument("--tuned", type=Path, default=None, help="run the specs a bench.tune file chose")
    parser.add_argument("--split", choices=SPLITS, default="test", help="what the runs are scored on")
    parser.add_argument("--joint-epochs", type=int, default=5, help="most epochs joint may train")
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
        "--window",
        type=int,
        default=LoopConfig.mix_window,
        help="examples that arrive together are learned shuffled, up to this many (RETENTIVE_MIX_WINDOW; "
        "0: in the order given)",
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
    orders = {**task_orders(root), long_stream.NAME: [group.name for group in long_stream.label_groups(root)]}
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
    specs = tuned_specs(args.tuned) if args.tuned else args.strategies
    runs = [parse_run(spec, defaults) for spec in specs.split(",")]

    def encoder_factory() -> Any:
        return tiny_bert(seed=args.seed) if args.quick else load_encoder(default_model_path())

    results = {}
    for order in chosen:
        stream = load_stream(
            order, orders[order], args.train_per_task, args.test_per_task, args.split, args.seed, root
        )
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
            "split": args.split,
            "model": "tiny" if args.quick else "all-MiniLM-L6-v2",
            # Named only when not batched, so that rows measured before arrivals existed still resume.
            **({} if args.arrival == "batched" else {"arrival": args.arrival, "window": args.window}),
        }
        earlier = _rows_in(out, config) if args.resume else {}
        result = _result_file(order, orders[order], config, earlier, argv)
        for run in runs:
            if run.spec in earlier:
                print(f"{run.spec}: already in {out}, kept", flush=True)
                continue
            row = run_stream(
                run,
                stream,
                encoder_factory,
                args.batch,
                lambda x: print(x, flush=True),
                args.arrival,
                args.joint_epochs,
                args.window,
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
