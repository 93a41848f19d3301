"""README tables rendered from the result files, so that no sentence can drift from its numbers.

    python -m bench.tables arrival     # the tables of the README's "Feedback as people send it"
    python -m bench.tables long        # "The long stream": settings chosen on dev, three seeds on test
    python -m bench.tables orders      # "The four-task orders": the long stream's choices, three seeds
    python -m bench.tables precision   # "Training in bfloat16": bf16 against fp32 on the orders' seeds
    python -m bench.tables alarms      # "Forgetting alarms": false alarms and detection
    python -m bench.tables speed       # "Speed against the limits": bench.speed and what is measured alone
    python -m bench.tables batch       # "Micro-batch size": AA and examples/s per step size, on dev

Each table is printed as Markdown; tests/test_bench.py checks that the README holds exactly what this prints.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from statistics import mean
from typing import Any

from bench import long_stream
from bench.memory import variant_name

RESULTS = Path(__file__).parent / "results"
ARRIVAL_DIR = RESULTS / "arrival"
DEFAULT_ARRIVAL_DIR = RESULTS / "arrival_default"
LONG_DIR = RESULTS / "long"
ORDERS_DIR = RESULTS / "orders"
PRECISION_DIR = RESULTS / "precision"
BATCH_DIR = RESULTS / "batch_size"
PASSES_DIR = RESULTS / "passes"
NEW_LABELS_DIR = RESULTS / "new_labels"
# Each subfolder of NEW_LABELS_DIR holds the runs of one version of the code, named by how it steps.
NEW_LABEL_STEPS = {"before": "one pass", "after": "passes of 12"}
ORDERS = ("order1", "order2", "order3")
TUNING_DIR = RESULTS / "tuning"
# Student's t at 97.5% for 1 to 9 degrees of freedom: a 95% interval of a mean over 2 to 10 seeds.
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262)
GATED = ("migu", "migu+replay")


def mean_sd(values: list[float], digits: int = 3) -> str:
    """`mean ± sd` over seeds (the sample standard deviation), or the one value."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def arrival_service_table(result: dict) -> str:
    rows = ["| posted | test accuracy | updates | prequential accuracy |", "|---|---:|---:|---:|"]
    labels = {"batched": "16 per request", "trickle": f"one per request, {result['gap_s']:g} s apart"}
    for way, runs in result["runs"].items():
        prequential = [r["prequential"]["cumulative"] for r in runs if r.get("prequential")]
        rows.append(
            f"| {labels[way]} | {mean_sd([r['accuracy'] for r in runs])} "
            f"| {mean_sd([float(r['updates']) for r in runs], digits=1)} "
            f"| {mean_sd(prequential) if prequential else 'n/a'} |"
        )
    ratio, sd = result["trickle_vs_batched"], result["trickle_vs_batched_sd"]
    rows.append(
        f"\nTrickle / batched test accuracy: {ratio:.3f}" + (f" ± {sd:.3f}" if sd is not None else "")
    )
    return "\n".join(rows)


def recent_competition(row: dict) -> tuple[int, float]:
    """The run's RETENTIVE_RECENT_SIZE and RETENTIVE_RECENT_RATIO (0 and 0 when off). Runs made before the
    size existed had none; runs made before the ratio existed drew as many as they replayed."""
    settings = row["settings"]
    size = settings.get("recent_size", 0)
    return (size, settings.get("recent_ratio", settings["replay_ratio"])) if size else (0, 0.0)


def drawn_columns(size: int, ratio: float) -> str:
    """The recent examples kept and drawn per incoming example, as two table cells."""
    if size < 0:
        return "n/a | n/a"
    return f"{size} | {ratio:g}" if size else "0 | n/a"


def recent_name(size: int, ratio: float) -> str:
    return f"{size}, {ratio:g} per example" if size else "0"


def arrival_stream_table(files: list[Path]) -> str:
    """One row per order, arrival, mixing window and recent competition (examples kept, drawn per
    incoming one): AA, forgetting and prequential accuracy over seeds, and AA against `batched` on the same
    order with the same seed. A batched stream has no step of one label, so the recent examples play no part
    in it (shown as n/a)."""
    by_arrival: dict[tuple[str, str, int, tuple[int, float]], list[dict]] = {}
    for path in files:
        result = json.loads(path.read_text())
        window = result["config"].get("window", 0)
        for row in result["strategies"].values():
            recent = (-1, 0.0) if row["arrival"] == "batched" else recent_competition(row)
            runs = by_arrival.setdefault((result["order"], row["arrival"], window, recent), [])
            runs.append({**row, "seed": result["config"]["seed"]})
    batched = {
        (order, row["seed"]): row["aa"]
        for (order, arrival, *_), runs in by_arrival.items()
        if arrival == "batched"
        for row in runs
    }
    rows = [
        "| order | arrival | mixing window | recent examples | drawn per example | seeds | AA | forgetting "
        "| prequential accuracy | AA / batched AA |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    arrivals = ("batched", "trickle", "sorted", "bursty")
    for key in sorted(by_arrival, key=lambda k: (k[0], arrivals.index(k[1]), k[2], k[3])):
        order, arrival, window, recent = key
        runs = sorted(by_arrival[key], key=lambda row: row["seed"])
        ratios = [row["aa"] / batched[order, row["seed"]] for row in runs if (order, row["seed"]) in batched]
        rows.append(
            f"| {order} | {arrival} | {window or 'none'} | {drawn_columns(*recent)} | {len(runs)} "
            f"| {mean_sd([r['aa'] for r in runs])} "
            f"| {mean_sd([r['forgetting'] for r in runs])} "
            f"| {mean_sd([r['prequential']['cumulative'] for r in runs])} "
            f"| {mean_sd(ratios) if ratios else 'n/a'} |"
        )
    return "\n".join(rows)


def interval(values: list[float]) -> float:
    """Half the width of the 95% interval of the mean of `values` (one per seed)."""
    return T_975[len(values) - 2] * statistics.stdev(values) / len(values) ** 0.5


def difference(name: str, other: str, by_seed: dict[str, dict[Any, float]]) -> str:
    """The paired difference of AA between two strategies over the seeds both ran, and what it means."""
    seeds = sorted(by_seed[name].keys() & by_seed[other].keys())
    gaps = [100 * (by_seed[name][seed] - by_seed[other][seed]) for seed in seeds]
    if len(gaps) < 2:
        return f"`{name}` against `{other}`: {mean(gaps):+.1f} points of AA (one seed: no interval)"
    gap, half = mean(gaps), interval(gaps)
    verdict = "within the noise" if abs(gap) <= half else ("ahead" if gap > 0 else "behind")
    return (
        f"`{name}` against `{other}`: {gap:+.1f} ± {half:.1f} points of AA "
        f"(paired over {len(seeds)} seeds, 95% interval): {verdict}"
    )


def tuning_table(tuned: dict) -> str:
    """Every point of the grid with its dev AA, the chosen one of each strategy in bold, and what the gate
    adds to plain fine-tuning at each learning rate both were run at."""
    rows = [
        f"| strategy | spec | dev AA (seed {', '.join(map(str, tuned['seeds']))}) |",
        "|---|---|---:|",
    ]
    for name, specs in tuned["grid"].items():
        for spec in specs:
            aa = f"{statistics.mean(tuned['dev_aa'][spec]):.3f}"
            mark = "**" if spec == tuned["chosen"][name] else ""
            rows.append(f"| {name} | {mark}`{spec}`{mark} | {aa} |")
    gains = _gate_gains(tuned)
    if gains:
        rows.append(f"\nDev AA of `migu` minus `sgd` at the same learning rate, in points: {gains}.")
    return "\n".join(rows)


def _gate_gains(tuned: dict) -> str:
    """`lr: gain` for each learning rate the grid ran both `sgd` and `migu` at."""
    plain = {spec.partition("@")[2]: spec for spec in tuned["grid"].get("sgd", [])}
    gains = []
    for gated in tuned["grid"].get("migu", []):
        setting = gated.partition("@")[2]
        if setting in plain:
            # Rounded first, then + 0.0: a difference of zero prints as +0.0, not -0.0.
            gain = 100 * (mean(tuned["dev_aa"][gated]) - mean(tuned["dev_aa"][plain[setting]]))
            gain = round(gain, 1) + 0.0
            gains.append(f"{setting.removeprefix('lr=')}: {gain:+.1f}")
    return ", ".join(gains)


def _long_row(name: str, spec: str, runs: list[dict], joint: dict[int, float]) -> str:
    cells = [name, f"`{spec}`", str(len(runs)), mean_sd([r["aa"] for r in runs])]
    if runs[0]["joint"]:
        epochs = ", ".join(str(r["epochs"]) for r in runs)
        cells += ["n/a", "n/a", f"n/a (epochs: {epochs})", "1"]
    else:
        ratios = [r["aa"] / joint[r["seed"]] for r in runs if r["seed"] in joint]
        cells += [
            mean_sd([r["forgetting"] for r in runs]),
            mean_sd([r["bwt"] for r in runs]),
            mean_sd([r["prequential"]["cumulative"] for r in runs]),
            mean_sd(ratios) if ratios else "n/a",
        ]
    return "| " + " | ".join(cells) + " |"


def long_table(files: list[Path], tuned: dict) -> str:
    """Each chosen spec over seeds on the test split, its AA against joint's, and what the gate changes."""
    rows_by_spec = _seed_rows(files)
    runs = {
        name: sorted(rows_by_spec.get(spec, []), key=lambda r: r["seed"])
        for name, spec in tuned["chosen"].items()
    }
    runs = {name: listed for name, listed in runs.items() if listed}
    aa = {name: {row["seed"]: row["aa"] for row in listed} for name, listed in runs.items()}
    joint = aa.get("joint", {})
    rows = [
        "| strategy | spec | seeds | AA | forgetting | BWT | prequential accuracy | AA / joint AA |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
        *(_long_row(name, tuned["chosen"][name], listed, joint) for name, listed in runs.items()),
    ]
    continual = [name for name, listed in runs.items() if not listed[0]["joint"]]

    def best(names: list[str]) -> str:
        return max(names, key=lambda name: statistics.mean(aa[name].values()))

    gated, ungated = (
        best([n for n in continual if n in GATED]),
        best([n for n in continual if n not in GATED]),
    )
    pairs = [("migu", "sgd"), ("replay", "sgd"), ("migu+replay", "replay"), (gated, ungated)]
    pairs += [("joint", best(continual))] if joint else []
    lines = [f"Best continual strategy by mean AA: `{best(continual)}`; best gated: `{gated}`."]
    lines += [f"- {difference(a, b, aa)}" for a, b in dict.fromkeys(pairs)]
    return "\n".join(rows) + "\n\n" + "\n".join(lines)


def returns_table(files: list[Path], tuned: dict) -> str:
    """For the groups that come back: accuracy just before their second segment and just after it."""
    rows = [
        "| strategy | accuracy on a returning group just before it returns | just after |",
        "|---|---:|---:|",
    ]
    for name, spec in tuned["chosen"].items():
        before, after = [], []
        for path in files:
            result = json.loads(path.read_text())
            row = result["strategies"].get(spec)
            if row is None or row["joint"]:
                continue
            for column, group in enumerate(result["tasks"]):
                seen = [i for i, segment in enumerate(long_stream.SCHEDULE) if segment == group]
                if len(seen) > 1:
                    before.append(row["matrix"][seen[1] - 1][column])
                    after.append(row["matrix"][seen[1]][column])
        if before:
            rows.append(f"| {name} | {mean(before):.3f} | {mean(after):.3f} |")
    return "\n".join(rows)


def _seed_rows(files: list[Path]) -> dict[str, list[dict]]:
    """Every row of `files` keyed by spec, each tagged with the seed of its file."""
    rows_by_spec: dict[str, list[dict]] = {}
    for path in files:
        result = json.loads(path.read_text())
        for spec, row in result["strategies"].items():
            rows_by_spec.setdefault(spec, []).append({**row, "seed": result["config"]["seed"]})
    return rows_by_spec


def within_task_table(files: list[Path], tuned: dict) -> str:
    """Each continual strategy's AA and forgetting over all labels beside the same scored within each task's
    own labels, over every order and seed in `files`: where the gap is, the head forgets, not the encoder."""
    rows_by_spec = _seed_rows(files)
    rows = [
        "| strategy | runs | AA, all labels | AA, within task | forgetting, all labels "
        "| forgetting, within task | encoder drift |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, spec in tuned["chosen"].items():
        runs = rows_by_spec.get(spec, [])
        if not runs or runs[0]["joint"]:
            continue
        cells = [
            mean_sd([r[key] for r in runs])
            for key in ("aa", "within_task_aa", "forgetting", "within_task_forgetting")
        ]
        drifts = [100 * r["encoder_drift"] for r in runs]
        drift = f"{min(drifts):.1f}% to {max(drifts):.1f}%"
        rows.append(f"| {name} | {len(runs)} | " + " | ".join(cells) + f" | {drift} |")
    return "\n".join(rows)


def long() -> str:
    tuned = json.loads((TUNING_DIR / "long.json").read_text())
    files = sorted(LONG_DIR.glob("seed*.json"))
    return "\n\n".join([tuning_table(tuned), long_table(files, tuned), returns_table(files, tuned)])


def orders() -> str:
    """The long stream's chosen specs on each four-task order over seeds on test, and where forgetting is."""
    tuned = json.loads((TUNING_DIR / "long.json").read_text())
    parts, every_file = [], []
    for order in ORDERS:
        files = sorted(ORDERS_DIR.glob(f"{order}_seed*.json"))
        if files:
            tasks = " → ".join(json.loads(files[0].read_text())["tasks"])
            parts.append(f"**{order}** ({tasks})\n\n" + long_table(files, tuned))
            every_file += files
    return "\n\n".join([*parts, within_task_table(every_file, tuned)])


def _default_rows(files: list[Path], spec: str) -> dict[str, dict[int, dict]]:
    """The rows of `spec` in `files`, by order and seed."""
    rows: dict[str, dict[int, dict]] = {}
    for path in files:
        result = json.loads(path.read_text())
        if spec in result["strategies"]:
            rows.setdefault(result["order"], {})[result["config"]["seed"]] = result["strategies"][spec]
    return rows


def precision() -> str:
    """The default strategy with its encoder forward in bf16 against fp32, on the same orders and seeds."""
    spec = json.loads((TUNING_DIR / "long.json").read_text())["chosen"]["migu+replay"]
    fp32 = _default_rows(sorted(ORDERS_DIR.glob("*.json")), spec)
    bf16 = _default_rows(sorted(PRECISION_DIR.glob("*.json")), f"{spec}@precision=bf16")
    rows = [
        "| order | seeds | AA, fp32 | AA, bf16 | prequential accuracy, fp32 | prequential accuracy, bf16 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines, every = [], {"fp32": {}, "bf16": {}}
    for order in ORDERS:
        seeds = sorted(fp32.get(order, {}).keys() & bf16.get(order, {}).keys())
        if not seeds:
            continue
        pair = {"fp32": fp32[order], "bf16": bf16[order]}
        cells = [mean_sd([pair[name][seed]["aa"] for seed in seeds]) for name in pair]
        cells += [mean_sd([pair[name][seed]["prequential"]["cumulative"] for seed in seeds]) for name in pair]
        rows.append(f"| {order} | {len(seeds)} | " + " | ".join(cells) + " |")
        by_seed = {name: {seed: pair[name][seed]["aa"] for seed in seeds} for name in pair}
        lines.append(f"- {order}: {difference('bf16', 'fp32', by_seed)}")
        for name in pair:
            every[name].update({(order, seed): by_seed[name][seed] for seed in seeds})
    lines.append(f"- every order: {difference('bf16', 'fp32', every)}")
    return _precision_on_dev(spec) + "\n\n" + "\n".join(rows) + "\n\n" + "\n".join(lines)


def _precision_on_dev(spec: str) -> str:
    """The comparison the default was chosen by: both precisions on the long stream's dev split."""
    result = json.loads((TUNING_DIR / "precision_dev_seed0.json").read_text())
    aa = {
        precision: result["strategies"][f"{spec}@precision={precision}"]["aa"]
        for precision in ("fp32", "bf16")
    }
    return (
        f"Dev AA on the long stream (seed {result['config']['seed']}, `{spec}`): fp32 {aa['fp32']:.3f}, "
        f"bf16 {aa['bf16']:.3f}."
    )


def arrival() -> str:
    service = json.loads((RESULTS / "arrival_service.json").read_text())
    streams = [sorted(folder.glob("*.json")) for folder in (DEFAULT_ARRIVAL_DIR, ARRIVAL_DIR)]
    tables = [arrival_service_table(service), *map(arrival_stream_table, streams)]
    return "\n\n".join([*tables, arrival_differences(streams[0]), recent_competition_on_dev()])


def recent_competition_on_dev() -> str:
    """The dev AA RETENTIVE_RECENT_SIZE and RETENTIVE_RECENT_RATIO were chosen by, per arrival searched."""
    searches = [
        ("recent_sorted", "recent examples kept"),
        ("recent_trickle", "recent examples kept"),
        ("recent_ratio_sorted", "recent examples per incoming one"),
        ("recent_ratio_trickle", "recent examples per incoming one"),
    ]
    lines = []
    for stem, searched in searches:
        tuned = json.loads((TUNING_DIR / f"{stem}.json").read_text())
        points = ", ".join(
            f"{spec.rsplit('=', 1)[1]}: {statistics.mean(scores):.3f}"
            for spec, scores in tuned["dev_aa"].items()
        )
        seeds = ("seed " if len(tuned["seeds"]) == 1 else "seeds ") + ", ".join(map(str, tuned["seeds"]))
        arrival = stem.rsplit("_", 1)[1]
        lines.append(f"- dev AA by {searched}, {tuned['order']} {arrival} ({seeds}): {points}")
    return "\n".join(lines)


def arrival_differences(files: list[Path]) -> str:
    """On each order, a stream learned with a mixing window or recent examples against the same arrival
    learned with neither, and recent examples drawn at another ratio against the ratio first shipped
    (as many as replayed, 0.5)."""
    by_seed: dict[str, dict[int, float]] = {}
    baselines: dict[str, list[str]] = {}
    for path in files:
        result = json.loads(path.read_text())
        window = result["config"].get("window", 0)
        for row in result["strategies"].values():
            if row["arrival"] == "batched":
                continue
            name, recent = f"{result['order']} {row['arrival']}", recent_competition(row)
            labelled = f"{name}, window {window or 'none'}, recent {recent_name(*recent)}"
            by_seed.setdefault(labelled, {})[result["config"]["seed"]] = row["aa"]
            baselines[labelled] = [f"{name}, window none, recent 0"]
            if recent[0] and not window:
                baselines[labelled].append(f"{name}, window none, recent {recent_name(recent[0], 0.5)}")
    lines = [
        f"- {difference(name, baseline, by_seed)}"
        for name in sorted(by_seed)
        for baseline in baselines[name]
        if name != baseline and baseline in by_seed
    ]
    return "\n".join(lines)


def _aim(result: dict, key: str) -> tuple[str, str]:
    """The aim a `bench.speed` run checked a figure against, and whether it was met."""
    checked = result["aims"].get(key)
    if checked is None:
        return "", ""
    return checked["aim"].replace(">=", "≥").replace("<=", "≤"), "yes" if checked["met"] else "no"


def speed_figures(result: dict) -> list[tuple[str, str, str, str]]:
    """(figure, measured, reference, aim key) for each figure a full `bench.speed` run holds; a run made
    before a figure existed lacks its row."""
    details = result["details"]
    learner, service, step = details["learner"], details["service"], details["step_s"]
    p50_ratio = service["predict_p50_ms"] / service["bare_forward_ms"]
    figures = [
        (
            "learner loop from Redis, examples/s",
            f"{learner['loop_examples_per_s']:.1f} ({learner['ratio']:.2f}x)",
            f"bare AdamW loop over in-memory tensors, same update: {learner['bare_examples_per_s']:.1f}",
            "learner_vs_bare",
        ),
        (
            "the default strategy, examples/s",
            f"{learner['default_examples_per_s']:.1f} ({learner['default_vs_bare']:.2f}x, "
            f"`{learner['default_strategy']}`)",
            "the same bare loop",
            "default_vs_bare",
        ),
        (
            "MIGU step time",
            f"{step['migu']:.3f} s ({result['migu_vs_sgd_step']:.2f}x)",
            f"plain AdamW step: {step['sgd']:.3f} s",
            "migu_vs_sgd_step",
        ),
        (
            "`/v1/predict` p50, one text",
            f"{service['predict_p50_ms']:.1f} ms ({p50_ratio:.2f}x)",
            f"bare `head(encoder(**batch))`: {service['bare_forward_ms']:.1f} ms",
            "predict_p50_vs_bare",
        ),
        *_forward_rows(service),
        ("`/v1/predict` p99, one text", f"{service['predict_p99_ms']:.1f} ms", "", ""),
        (
            f"texts/s, {service['clients']} concurrent clients",
            f"{service['served_texts_per_s']:.1f} ({service['throughput_vs_bare']:.2f}x)",
            f"bare batched forward passes of 16: {service['bare_batched_texts_per_s']:.1f}",
            "throughput_vs_bare",
        ),
        (
            "p99 while the learner trains flat out",
            f"{service['p99_learning_ms']:.1f} ms ({service['p99_learning_vs_paused']:.2f}x)",
            f"learner paused: {service['p99_paused_ms']:.1f} ms",
            "p99_learning_vs_paused",
        ),
        (
            "feedback examples/s, batches of 100",
            f"{service['ingest_examples_per_s']:,.0f} ({service['ingest_vs_xadd']:.2f}x)",
            f"pipelined XADD from redis-py: {service['xadd_examples_per_s']:,.0f}",
            "ingest_vs_xadd",
        ),
        (
            "freshness: feedback POST to a prediction from weights that applied it",
            f"{service['freshness_s']:.1f} s (median of {len(service['freshness_trials_s'])})",
            "",
            "",
        ),
        (
            "peak RSS, learner / API replica",
            f"{service['learner_rss_mb']:,.0f} MB / {service['api_rss_mb']:,.0f} MB",
            "",
            "learner_rss_mb",
        ),
    ]
    if "evaluation" in details:
        share = details["evaluation"]
        figures += [
            (
                "probe evaluation, share of the learner's time",
                f"{share['eval_share']:.3f}: {share['eval_s']:.1f} s",
                f"training: {share['train_s']:.1f} s",
                "eval_share",
            ),
            (
                "promotion check, share of the learner's time",
                f"{share['promotion_share']:.3f}: {share['promotion_checks']} checks",
                "the same training",
                "promotion_share",
            ),
        ]
    if "quantized" in details:
        int8 = details["quantized"]
        figures.append(
            (
                "int8 served copy, one text per forward pass; accuracy",
                f"{int8['quantized_forward_ms']:.1f} ms ({int8['quantized_vs_bare']:.2f}x); "
                f"{int8['quantized_accuracy']:.3f} ({100 * int8['quantized_accuracy_difference']:+.1f} "
                f"± {100 * int8['quantized_accuracy_difference_95']:.1f} points)",
                f"float copy: {int8['float_forward_ms']:.1f} ms; {int8['float_accuracy']:.3f}",
                "quantized_vs_bare",
            )
        )
    return figures


def _forward_rows(service: dict) -> list[tuple[str, str, str, str]]:
    """How much of a one-text answer the API spends in its forward pass; runs before that figure lack it."""
    if "api_forward_mean_ms" not in service:
        return []
    return [
        (
            "forward pass inside the API, mean, one text",
            f"{service['api_forward_mean_ms']:.1f} ms",
            f"bare forward pass, mean: {service['bare_forward_mean_ms']:.1f} ms",
            "",
        )
    ]


def speed_table(result: dict, before: dict) -> str:
    """The full `bench.speed` run: each figure beside its reference from the same run, the figure of the
    run `before` it, and its aim; then the devices and precision the run used."""
    earlier = {figure: measured for figure, measured, _, _ in speed_figures(before)}
    rows = [
        f"| figure | measured | reference | before ({before['commit']}) | aim | met |",
        "|---|---:|---|---:|---|---|",
    ]
    for figure, measured, reference, key in speed_figures(result):
        then, aim = earlier.get(figure, "not measured"), " | ".join(_aim(result, key))
        rows.append(f"| {figure} | {measured} | {reference} | {then} | {aim} |")
    devices = ", ".join(f"{role} on {device}" for role, device in result["devices"].items())
    rows.append("")
    allocators = {"tcmalloc": "tcmalloc", "glibc": "glibc's malloc"}
    malloc = (
        f"; the service's processes on {allocators[result['allocator']]}" if "allocator" in result else ""
    )
    rows.append(f"Devices: {devices}; the learner's training forward in {result['precision']}{malloc}.")
    return "\n".join(rows)


def measured_alone_table() -> str:
    """The figures `bench.speed --only ...`, `bench.step_speed` and `bench.backoff` measure on their own."""
    step, bf16 = _result("step_speed"), _result("step_speed_bf16")
    default = next(iter(bf16["median_step_s"]))
    share = _result("eval_share")["details"]["evaluation"]
    quantized = _result("quantized")["details"]["quantized"]
    after, before = _result("backoff"), _result("backoff_before")
    batching = _result("predict_batching")
    writes = _result("writes")
    figures = [
        (
            "`migu` step, batch 16 at 128 tokens",
            f"{step['median_step_s']['migu']:.3f} s ({step['ratio_to_sgd']['migu']:.2f}x)",
            f"plain AdamW step: {step['median_step_s']['sgd']:.3f} s ({_threads(step)})",
            "step_speed",
        ),
        (
            f"`{default}` step, encoder forward in bf16",
            f"{bf16['median_step_s'][default + '@precision=bf16']:.3f} s "
            f"({bf16['ratio_to_' + default][default + '@precision=bf16']:.2f}x)",
            f"fp32 step: {bf16['median_step_s'][default]:.3f} s ({_threads(bf16)})",
            "step_speed_bf16",
        ),
        (
            "probe evaluation, share of the learner's time",
            f"{share['eval_share']:.3f}: {share['eval_s']:.1f} s",
            f"training: {share['train_s']:.1f} s",
            "eval_share",
        ),
        (
            "promotion check, share of the learner's time",
            f"{share['promotion_share']:.3f}: {share['promotion_checks']} checks, "
            f"{share['promotion_s'] / share['promotion_checks']:.1f} s each",
            "the same training",
            "eval_share",
        ),
        (
            "int8 served copy, one text per forward pass",
            f"{quantized['quantized_forward_ms']:.1f} ms ({quantized['quantized_vs_bare']:.2f}x)",
            f"float copy: {quantized['float_forward_ms']:.1f} ms",
            "quantized",
        ),
        (
            "int8 served copy, accuracy",
            f"{quantized['quantized_accuracy']:.3f} "
            f"({100 * quantized['quantized_accuracy_difference']:+.1f} "
            f"± {100 * quantized['quantized_accuracy_difference_95']:.1f} points, same label on "
            f"{100 * quantized['same_label']:.0f}%)",
            f"float copy: {quantized['float_accuracy']:.3f}",
            "quantized",
        ),
        (
            f"learner during {after['predict_requests']} requests of {after['texts_per_request']} texts",
            f"{after['updates']} updates, {after['backoffs']} back-offs in {after['phase_s']:.1f} s",
            f"back-off on p95 latency: {before['updates']} updates, {before['backoffs']} back-offs "
            f"in {before['phase_s']:.1f} s",
            "backoff",
        ),
        (
            f"dynamic batcher, {batching['clients']} clients, texts/s",
            f"{batching['texts_per_s']['batcher']:.1f} ({batching['ratio_batcher_to_sequential']:.2f}x)",
            f"one text per forward pass: {batching['texts_per_s']['sequential']:.1f}; "
            f"forward passes of {batching['max_batch']}: {batching['texts_per_s']['chunked']:.1f}",
            "predict_batching",
        ),
        *(
            _passes_figure(name)
            for name in ("step_speed_passes", "step_speed_passes_long", "step_speed_passes_news")
        ),
        *_memory_figures(_result("memory")),
        *(_learner_memory_figure(name) for name in ("learner_memory", "learner_memory_fp32")),
        *(
            (
                f"training held up by a {kind} ({writes[kind]['megabytes']:.0f} MB)",
                f"{writes[kind]['serialize_s']:.2f} s: serializing; {writes[kind]['write_s']:.2f} s "
                "written on the writer thread",
                f"serialized and written on the training thread: {writes[kind]['held_before_s']:.2f} s",
                "writes",
            )
            for kind in ("snapshot", "publication")
        ),
    ]
    rows = ["| figure | measured | reference | file |", "|---|---:|---|---|"]
    for figure, measured, reference, name in figures:
        rows.append(f"| {figure} | {measured} | {reference} | `{name}.json` |")
    return "\n".join(rows)


def _passes_figure(name: str) -> tuple[str, str, str, str]:
    """A step in passes against the same step in one pass, from a `bench.step_speed` run of the two."""
    result = _result(name)
    one, passes = result["median_step_s"]
    ratio = result[f"ratio_to_{one}"][passes]
    kind = {
        "mixed": "texts of mixed lengths",
        "long": "every text at the token limit",
        "news": "news and encyclopedia texts",
    }[result["texts"]]
    precision = "bf16" if "precision=bf16" in one else "fp32"
    size = passes.rpartition("pass_size=")[2]
    return (
        f"`{one.partition('@')[0]}` step in passes of {size}, {kind}, {precision}",
        f"{result['median_step_s'][passes]:.3f} s ({ratio:.2f}x)",
        f"one pass: {result['median_step_s'][one]:.3f} s ({_threads(result)})",
        name,
    )


def _memory_figures(memory: dict) -> list[tuple[str, str, str, str]]:
    """The learner's peak per allocator in one pass and in passes, and what it holds, from `bench.memory`."""
    variants = memory["variants"]
    glibc, tcmalloc = variants["glibc"], variants["tcmalloc"]
    size = max(memory["pass_sizes"])
    in_passes = {name: variants[variant_name(name, size)] for name in ("glibc", "tcmalloc")}
    steps = f"`{memory['strategy']}`, {memory['steps']} steps of long texts and a snapshot"
    held = in_passes["tcmalloc"]
    return [
        (
            f"learner's peak memory, {steps}, one pass each",
            f"tcmalloc: {tcmalloc['peak_rss_mb']:,.0f} MB ({tcmalloc['peak_vs_glibc']:.2f}x), "
            f"step time {tcmalloc['step_vs_glibc']:.2f}x",
            f"glibc malloc: {glibc['peak_rss_mb']:,.0f} MB",
            "memory",
        ),
        (
            f"learner's peak memory, {steps}, passes of {size}",
            "; ".join(
                f"{name}: {figures['peak_rss_mb']:,.0f} MB ({figures['peak_vs_glibc']:.2f}x), "
                f"step time {figures['step_vs_glibc']:.2f}x"
                for name, figures in in_passes.items()
            ),
            f"glibc malloc, one pass: {glibc['peak_rss_mb']:,.0f} MB",
            "memory",
        ),
        (
            f"what the learner holds, tcmalloc, passes of {size}",
            f"{held['loaded_mb']:,.0f} MB loaded; {held['held_mb']:,.0f} MB between steps; "
            f"{held['step_peak_mb']:,.0f} MB at a step's peak, {held['snapshot_peak_mb']:,.0f} MB while "
            "saving a snapshot",
            f"one pass: {tcmalloc['step_peak_mb']:,.0f} MB at a step's peak",
            "memory",
        ),
    ]


def _learner_memory_figure(name: str) -> tuple[str, str, str, str]:
    """The learner child's peak through the service, and what it kept once learned, against the same
    `bench.learner_memory` run on the code before (`<name>_before.json`)."""
    after, before = _result(name), _result(f"{name}_before")

    def held(run: dict) -> str:
        return f"{run['learner_peak_mb']:,.0f} MB; {run['learner_end_mb']:,.0f} MB once learned"

    return (
        f"learner's peak memory through `retentive serve`, {after['backlog']:,} news examples "
        f"({after['updates']} updates), {after['precision']}",
        held(after),
        f"before ({before['commit']}): {held(before)}",
        name,
    )


def _threads(result: dict) -> str:
    count = result["torch_threads"]
    return f"{count} thread" + ("s" if count != 1 else "")


def _result(name: str) -> dict:
    return json.loads((RESULTS / f"{name}.json").read_text())


def speed() -> str:
    return speed_table(_result("speed"), _result("speed_before")) + "\n\n" + measured_alone_table()


def alarms() -> str:
    """False alarms per rule where nothing is forgotten, and how soon a forgotten label is caught."""
    result = json.loads((RESULTS / "false_alarms.json").read_text())
    scenarios = result["scenarios"]
    streams = result["streams"]
    lines = [
        "| rule | frozen model | churning model | forgotten label caught | evaluations to its alarm "
        "| false alarms in those streams |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for rule in ("paired", "max", "before"):
        cells = [
            f"{scenarios[name][rule]['per_1000']:.1f} ({scenarios[name][rule]['streams_with_alarm']})"
            for name in ("frozen", "churn")
        ]
        flip = scenarios["flip"][rule]
        delay = mean(flip["evaluations_to_alarm"]) if flip["evaluations_to_alarm"] else float("nan")
        lines.append(
            f"| {rule} | {cells[0]} | {cells[1]} | {flip['detected']} of {streams} | {delay:.1f} "
            f"| {flip['false_alarms']} |"
        )
    return "\n".join(lines)


def batch() -> str:
    """The default strategy learning the same stream in steps of each size: dev AA, prequential accuracy and
    examples/s over seeds, and each size against the default size, paired by seed."""
    runs: dict[int, dict[int, dict]] = {}
    for path in sorted(BATCH_DIR.glob("*.json")):
        result = json.loads(path.read_text())
        (row,) = result["strategies"].values()
        runs.setdefault(result["config"]["batch"], {})[result["config"]["seed"]] = row
    smallest = min(runs)
    lines = [
        "| examples per step | dev AA | prequential accuracy | examples/s | examples/s against "
        f"{smallest} (paired) |",
        "|---:|---:|---:|---:|---:|",
    ]
    lines += _setting_rows(runs, smallest)
    aa = {
        f"steps of {size}": {seed: row["aa"] for seed, row in by_seed.items()}
        for size, by_seed in runs.items()
    }
    versus = [
        f"- {difference(name, f'steps of {smallest}', aa)}" for name in aa if name != f"steps of {smallest}"
    ]
    return "\n".join([*lines, "", *versus])


def _setting_rows(runs: dict[Any, dict[int, dict]], reference: Any) -> list[str]:
    """A row per setting: AA, prequential accuracy and examples/s over seeds, and examples/s against the
    `reference` setting's, paired by seed."""
    lines = []
    for name, by_seed in sorted(runs.items()):
        rows = [by_seed[seed] for seed in sorted(by_seed)]
        speedups = [
            row["examples_per_s"] / runs[reference][seed]["examples_per_s"] for seed, row in by_seed.items()
        ]
        lines.append(
            f"| {name} | {mean_sd([r['aa'] for r in rows])} "
            f"| {mean_sd([r['prequential']['cumulative'] for r in rows])} "
            f"| {mean_sd([r['examples_per_s'] for r in rows], 1)} | {mean_sd(speedups, 2)}x |"
        )
    return lines


def passes() -> str:
    """The default strategy learning the same stream with each step in one pass and in passes, order by
    order and seed by seed: AA, prequential accuracy and examples/s, and passes against one pass, paired by
    seed."""
    by_order: dict[str, dict[str, dict[int, dict]]] = {}
    for path in sorted(PASSES_DIR.glob("*.json")):
        result = json.loads(path.read_text())
        runs = by_order.setdefault(result["order"], {})
        for row in result["strategies"].values():
            size = row["settings"]["pass_size"]
            runs.setdefault(f"passes of {size}" if size else "one pass", {})[result["config"]["seed"]] = row
    return _order_comparison(by_order, "each step in")


def new_labels() -> str:
    """The default strategy learning the same stream on the code before and after steps that bring new
    labels ran in passes, order by order and seed by seed, as `passes` compares them."""
    by_order: dict[str, dict[str, dict[int, dict]]] = {}
    for folder, name in NEW_LABEL_STEPS.items():
        for path in sorted((NEW_LABELS_DIR / folder).glob("*.json")):
            result = json.loads(path.read_text())
            (row,) = result["strategies"].values()
            by_order.setdefault(result["order"], {}).setdefault(name, {})[result["config"]["seed"]] = row
    return _order_comparison(by_order, "a step with new labels in")


def _order_comparison(by_order: dict[str, dict[str, dict[int, dict]]], column: str) -> str:
    """Per order, a row per way of stepping (`column` names them) and each against one pass, paired by
    seed."""
    lines = [
        f"| order | {column} | AA | prequential accuracy | examples/s "
        "| examples/s against one pass (paired) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    versus = []
    for order, runs in sorted(by_order.items()):
        lines += [f"| {order} {row}" for row in _setting_rows(runs, "one pass")]
        aa = {name: {seed: row["aa"] for seed, row in by_seed.items()} for name, by_seed in runs.items()}
        versus += [
            f"- {order}: {difference(name, 'one pass', aa)}" for name in sorted(aa) if name != "one pass"
        ]
    return "\n".join([*lines, "", *versus])


TABLES = {
    "alarms": alarms,
    "arrival": arrival,
    "batch": batch,
    "long": long,
    "new_labels": new_labels,
    "orders": orders,
    "passes": passes,
    "precision": precision,
    "speed": speed,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("table", choices=sorted(TABLES))
    print(TABLES[parser.parse_args(argv).table]())


if __name__ == "__main__":
    main()
