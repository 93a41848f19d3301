"""Reading the cl_stream benchmark data where it lies beside the checkout (never copied into it)."""

from __future__ import annotations

import json
import os
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cl_stream"


def data_dir() -> Path:
    return Path(os.environ.get("RETENTIVE_BENCH_DATA", DEFAULT_DATA))


def read_split(
    task: str, split: str, limit: int | None = None, root: Path | None = None
) -> list[dict[str, str]]:
    """The first `limit` records of `<task>/<split>.jsonl`: each {"text": ..., "label": ...}."""
    path = (root or data_dir()) / task / f"{split}.jsonl"
    with path.open(encoding="utf-8") as lines:
        records = []
        for line in lines:
            if limit is not None and len(records) >= limit:
                break
            records.append(json.loads(line))
    return records


def task_orders(root: Path | None = None) -> dict[str, list[str]]:
    manifest = json.loads(((root or data_dir()) / "manifest.json").read_text())
    return manifest["orders"]
