"""PNG plots of benchmark results, drawn with matplotlib off screen."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def plot_cl_results(result: dict[str, Any], path: Path) -> None:
    """One accuracy-matrix heatmap per strategy and a bar chart of AA and forgetting, in one figure."""
    rows = result["strategies"]
    tasks = result["tasks"]
    figure, axes = plt.subplots(1, len(rows) + 1, figsize=(3.4 * (len(rows) + 1) + 1, 3.8), squeeze=False)
    for axis, (spec, row) in zip(axes[0], rows.items(), strict=False):
        _heatmap(axis, row["matrix"], tasks, row, spec)
    _bars(axes[0][-1], rows)
    figure.suptitle(f"cl_stream {result['order']}: {' → '.join(tasks)} ({result['model']})")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _heatmap(axis: Any, matrix: list[list[float]], tasks: list[str], row: dict[str, Any], spec: str) -> None:
    axis.imshow(matrix, vmin=0.0, vmax=1.0, cmap="viridis")
    for i, line in enumerate(matrix):
        for j, value in enumerate(line):
            axis.text(j, i, f"{value:.2f}", ha="center", va="center", color="white" if value < 0.6 else "k")
    axis.set_xticks(range(len(tasks)), tasks, rotation=45, ha="right", fontsize=8)
    stages = [f"q{i + 1}" for i in range(len(matrix))] if row["joint"] else tasks
    axis.set_yticks(range(len(matrix)), [f"after {s}" for s in stages], fontsize=8)
    axis.set_title(f"{spec}\n{row['loss']}, {row['head']}: AA {row['aa']:.3f}", fontsize=9)


def _bars(axis: Any, rows: dict[str, dict[str, Any]]) -> None:
    names = list(rows)
    positions = range(len(names))
    axis.bar([p - 0.2 for p in positions], [rows[n]["aa"] for n in names], 0.4, label="AA")
    axis.bar([p + 0.2 for p in positions], [rows[n]["forgetting"] for n in names], 0.4, label="forgetting")
    axis.set_xticks(list(positions), names, rotation=45, ha="right", fontsize=8)
    axis.set_ylim(0, 1)
    axis.legend(fontsize=8)
    axis.set_title("average accuracy and forgetting", fontsize=9)
