"""PNG plots of benchmark results, drawn with matplotlib off screen."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench import long_stream


def plot_cl_results(result: dict[str, Any], path: Path) -> None:
    """One accuracy-matrix heatmap per strategy and a bar chart of AA and forgetting, in one figure."""
    rows = result["strategies"]
    tasks = result["tasks"]
    panels = len(rows) + 1
    columns = min(3, panels)
    lines = -(-panels // columns)
    figure, axes = plt.subplots(lines, columns, figsize=(4.4 * columns, 4.2 * lines), squeeze=False)
    cells = list(axes.flat)
    # The long stream's rows are its segments; a manifest order's rows are its tasks.
    segments = list(long_stream.SCHEDULE) if result["order"] == long_stream.NAME else tasks
    for axis, (spec, row) in zip(cells, rows.items(), strict=False):
        _heatmap(axis, row["matrix"], tasks, segments, row, spec)
    _bars(cells[len(rows)], rows)
    for axis in cells[panels:]:
        axis.set_visible(False)
    figure.suptitle(f"cl_stream {result['order']}: {' → '.join(tasks)} ({result['model']})")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _heatmap(
    axis: Any,
    matrix: list[list[float]],
    tasks: list[str],
    segments: list[str],
    row: dict[str, Any],
    spec: str,
) -> None:
    axis.imshow(matrix, vmin=0.0, vmax=1.0, cmap="viridis")
    for i, line in enumerate(matrix):
        for j, value in enumerate(line):
            colour = "white" if value < 0.6 else "k"
            axis.text(j, i, f"{value:.2f}", ha="center", va="center", color=colour, fontsize=8)
    axis.set_xticks(range(len(tasks)), tasks, rotation=45, ha="right", fontsize=8)
    epochs = row.get("epochs", 1)
    stages = [f"{epochs} epoch{'' if epochs == 1 else 's'}"] if row["joint"] else segments
    axis.set_yticks(range(len(matrix)), [f"after {s}" for s in stages], fontsize=8)
    axis.set_title(f"{spec}\n{row['loss']}, {row['head']}: AA {row['aa']:.3f}", fontsize=9)


def _bars(axis: Any, rows: dict[str, dict[str, Any]]) -> None:
    names = list(rows)
    positions = range(len(names))
    aa = axis.bar([p - 0.2 for p in positions], [rows[n]["aa"] for n in names], 0.4, label="AA")
    forgetting = [rows[n]["forgetting"] for n in names]
    lost = axis.bar([p + 0.2 for p in positions], forgetting, 0.4, label="forgetting")
    axis.bar_label(aa, fmt="%.2f", fontsize=7)
    axis.bar_label(lost, fmt="%.2f", fontsize=7)
    # A spec's settings one per line, so long specs stay readable under their bars.
    axis.set_xticks(list(positions), [n.replace("@", "\n") for n in names], fontsize=7)
    axis.set_ylim(min(0.0, *forgetting) - 0.02, 1)
    axis.axhline(0.0, color="k", linewidth=0.5)
    axis.legend(fontsize=8)
    axis.set_title("average accuracy and forgetting", fontsize=9)
