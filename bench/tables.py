"""README tables rendered from the result files, so that no sentence can drift from its numbers.

    python -m bench.tables arrival     # the tables of the README's "Feedback as people send it"

Each table is printed as Markdown; tests/test_bench.py checks that the README holds exactly what this prints.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
ARRIVAL_DIR = RESULTS / "arrival"


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


def arrival_stream_table(files: list[Path]) -> str:
    """One row per arrival: AA, forgetting and prequential accuracy over seeds, and AA against `batched`."""
    by_arrival: dict[str, list[dict]] = {}
    for path in files:
        result = json.loads(path.read_text())
        for row in result["strategies"].values():
            by_arrival.setdefault(row["arrival"], []).append({**row, "seed": result["config"]["seed"]})
    batched = {row["seed"]: row["aa"] for row in by_arrival.get("batched", [])}
    rows = [
        "| arrival | seeds | AA | forgetting | prequential accuracy | AA / batched AA |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for arrival in ("batched", "trickle", "sorted", "bursty"):
        runs = sorted(by_arrival.get(arrival, []), key=lambda row: row["seed"])
        if not runs:
            continue
        ratios = [row["aa"] / batched[row["seed"]] for row in runs if row["seed"] in batched]
        rows.append(
            f"| {arrival} | {len(runs)} | {mean_sd([r['aa'] for r in runs])} "
            f"| {mean_sd([r['forgetting'] for r in runs])} "
            f"| {mean_sd([r['prequential']['cumulative'] for r in runs])} "
            f"| {mean_sd(ratios) if ratios else 'n/a'} |"
        )
    return "\n".join(rows)


def arrival() -> str:
    service = json.loads((RESULTS / "arrival_service.json").read_text())
    return arrival_service_table(service) + "\n\n" + arrival_stream_table(sorted(ARRIVAL_DIR.glob("*.json")))


TABLES = {"arrival": arrival}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("table", choices=sorted(TABLES))
    print(TABLES[parser.parse_args(argv).table]())


if __name__ == "__main__":
    main()
