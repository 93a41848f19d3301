"""Choose each strategy's settings on the dev split, never on the texts that are reported.

    python -m bench.tune --order long --grid "sgd:lr=2.5e-5,5e-5,1e-4" --grid "joint:lr=5e-5,1e-4" \
        [--seeds 0] [--out bench/results/tuning/{order}.json] [cl_stream flags: --train-per-task ...]

Every point of every grid runs through `bench.cl_stream --split dev` (rows kept in `{out}_dev_seed{N}.json`,
so an interrupted search resumes), and each strategy's chosen spec is the one with the best mean dev AA over
the seeds. The result file holds the grid, every point's dev AA per seed, and the chosen specs, which
`bench.cl_stream --tuned FILE` then runs on the test split.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
from pathlib import Path
from typing import Any

from bench import cl_stream
from bench.meta import run_metadata


def grid_specs(grid: str) -> tuple[str, list[str]]:
    """`NAME:key=v1,v2[:key=v3,...]` as the strategy name and one spec per point of the product."""
    name, *axes = grid.split(":")
    if not axes:
        raise SystemExit(f"--grid {grid!r}: give at least one axis, as in sgd:lr=5e-5,1e-4")
    values = []
    for axis in axes:
        key, sep, listed = axis.partition("=")
        if not sep or not listed:
            raise SystemExit(f"--grid {grid!r}: {axis!r} is not key=value[,value...]")
        values.append([f"{key}={value}" for value in listed.split(",")])
    return name, ["@".join([name, *point]) for point in itertools.product(*values)]


def choose(scores: dict[str, list[float]], grids: dict[str, list[str]]) -> dict[str, str]:
    """Each strategy's spec with the best mean dev AA (the first listed wins a tie)."""
    return {name: max(specs, key=lambda spec: statistics.mean(scores[spec])) for name, specs in grids.items()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--order", default="order1", help="one order, as bench.cl_stream names it")
    parser.add_argument("--grid", action="append", required=True, help="NAME:key=v1,v2[:key=...]")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds each point runs with")
    parser.add_argument("--out", default="bench/results/tuning/{order}.json")
    args, passed_on = parser.parse_known_args(argv)
    if "--split" in passed_on or "--strategies" in passed_on or "--out" in passed_on:
        raise SystemExit("bench.tune sets --split, --strategies and --out of the runs itself")
    grids = dict(grid_specs(grid) for grid in args.grid)
    out = Path(args.out.format(order=args.order))
    out.parent.mkdir(parents=True, exist_ok=True)
    seeds = [int(seed) for seed in args.seeds.split(",")]
    specs = [spec for listed in grids.values() for spec in listed]
    scores: dict[str, list[float]] = {spec: [] for spec in specs}
    for seed in seeds:
        runs = out.with_name(f"{out.stem}_dev_seed{seed}.json")
        result = cl_stream.main(
            [
                *passed_on,
                "--order",
                args.order,
                "--seed",
                str(seed),
                "--split",
                "dev",
                "--strategies",
                ",".join(specs),
                "--out",
                str(runs),
                "--resume",
                "--no-plots",
            ]
        )[args.order]
        for spec in specs:
            scores[spec].append(result["strategies"][spec]["aa"])
    tuned = {
        **run_metadata("bench.tune", argv),
        "order": args.order,
        "split": "dev",
        "seeds": seeds,
        "grid": {name: listed for name, listed in grids.items()},
        "dev_aa": scores,
        "chosen": choose(scores, grids),
    }
    out.write_text(json.dumps(tuned, indent=2) + "\n")
    for name, spec in tuned["chosen"].items():
        print(f"{name}: {spec} (dev AA {statistics.mean(scores[spec]):.3f})")
    return tuned


if __name__ == "__main__":
    main()
