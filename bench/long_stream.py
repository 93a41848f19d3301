"""The `long` order: the cl_stream tasks cut into label groups, twelve segments in which topics come back.

Four tasks of one pass each is a short stream; a product's stream runs for months and returns to old topics.
Here DBpedia's 14 labels are split into three groups and AG News's 4 into two (which labels go together is
drawn once from `GROUP_SEED`, so every run sees the same stream), Amazon and Yelp stay whole (they share their
five ratings: moving between them is a shift of domain, not of labels), and `SCHEDULE` brings each early group
back after several others. A segment that returns trains on fresh examples of its group, drawn in order from
the group's training records after the run's seed shuffled them; every group is scored on its own labels'
records of the scoring split.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from bench.data import read_scoring, read_train

NAME = "long"
GROUP_SEED = 0
GROUPS_PER_TASK = {"dbpedia": 3, "agnews": 2, "amazon": 1, "yelp": 1}
SCHEDULE = (
    "dbpedia.1",
    "agnews.1",
    "amazon",
    "dbpedia.2",
    "yelp",
    "agnews.2",
    "dbpedia.3",
    "dbpedia.1",
    "amazon",
    "agnews.1",
    "dbpedia.2",
    "yelp",
)
# Records read per task for the pools; enough for every segment of its groups at 250 examples each.
POOL_PER_TASK = 3000


@dataclass(frozen=True)
class Group:
    """A task's share of labels, learned and scored as one topic of the stream."""

    name: str
    task: str
    labels: frozenset[str]


def label_groups(root: Path) -> list[Group]:
    """Every group of the stream, in the order it first appears."""
    groups = {}
    for task, count in GROUPS_PER_TASK.items():
        labels = sorted(json.loads((root / task / "labels.json").read_text()))
        random.Random(f"{GROUP_SEED}-{task}").shuffle(labels)
        for index in range(count):
            name = task if count == 1 else f"{task}.{index + 1}"
            groups[name] = Group(name, task, frozenset(labels[index::count]))
    return [groups[name] for name in dict.fromkeys(SCHEDULE)]


def segments(
    groups: list[Group], per_segment: int, seed: int, root: Path
) -> list[tuple[str, list[dict[str, str]]]]:
    """The stream: each scheduled group with `per_segment` training records none of its segments repeat."""
    pools: dict[str, list[dict[str, str]]] = {}
    for group in groups:
        records = [r for r in read_train(group.task, POOL_PER_TASK, root=root) if r["label"] in group.labels]
        random.Random(f"{seed}-{group.name}").shuffle(records)
        pools[group.name] = records
    taken = dict.fromkeys(pools, 0)
    stream = []
    for name in SCHEDULE:
        start = taken[name]
        if start + per_segment > len(pools[name]):
            raise ValueError(f"{name}: {len(pools[name])} training records, too few for its segments")
        stream.append((name, pools[name][start : start + per_segment]))
        taken[name] = start + per_segment
    return stream


def scoring_records(group: Group, split: str, limit: int, root: Path) -> list[dict[str, str]]:
    """The first `limit` records of the split whose label is in the group."""
    return [r for r in read_scoring(group.task, split, root=root) if r["label"] in group.labels][:limit]
