"""Reading the cl_stream benchmark data where it lies beside the checkout (never copied into it).

Three splits per task: `train` (the first records of `train.jsonl`), `dev` (its last `DEV_PER_TASK` records,
never trained on: every choice of settings is scored there) and `test` (`test.jsonl`, read only to report).
"""

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


DEV_PER_TASK = 1000
SPLITS = ("dev", "test")


def read_train(task: str, limit: int, root: Path | None = None) -> list[dict[str, str]]:
    """The first `limit` training records of a task, refused when they would reach into its dev split."""
    available = _count_lines((root or data_dir()) / task / "train.jsonl") - DEV_PER_TASK
    if limit > available:
        raise ValueError(f"{task} has {available} training records before its dev split, not {limit}")
    return read_split(task, "train", limit, root=root)


def read_scoring(
    task: str, split: str, limit: int | None = None, root: Path | None = None
) -> list[dict[str, str]]:
    """The first `limit` records a run is scored on: the task's dev split or its test split."""
    if split == "test":
        return read_split(task, "test", limit, root=root)
    if split != "dev":
        raise ValueError(f"unknown split {split!r}: one of {', '.join(SPLITS)}")
    train = read_split(task, "train", root=root)
    return train[len(train) - DEV_PER_TASK :][:limit]


def _count_lines(path: Path) -> int:
    with path.open(encoding="utf-8") as lines:
        return sum(1 for _ in lines)


def task_orders(root: Path | None = None) -> dict[str, list[str]]:
    manifest = json.loads(((root or data_dir()) / "manifest.json").read_text())
    return manifest["orders"]


def news_records(count: int, split: str = "train") -> list[dict[str, str]]:
    """News topics and encyclopedia categories, interleaved, so every micro-batch holds several labels."""
    half = -(-count // 2)
    pairs = zip(read_split("agnews", split, half), read_split("dbpedia", split, half), strict=True)
    return [record for pair in pairs for record in pair][:count]
