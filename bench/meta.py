"""What every result file records about the run that produced it."""

from __future__ import annotations

import platform
import subprocess
import sys
from datetime import UTC, datetime
from typing import Any

import torch


def run_metadata(module: str, argv: list[str] | None = None) -> dict[str, Any]:
    """`module` is the benchmark's dotted name, so the recorded command can be pasted back into a shell."""
    return {
        "command": " ".join(["python", "-m", module, *(sys.argv[1:] if argv is None else argv)]),
        "commit": _git_commit(),
        "machine": f"{platform.machine()} {platform.processor() or platform.node()}, {_cpu_count()} cpus",
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _git_commit() -> str:
    result = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    )
    return result.stdout.strip() or "unknown"


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0))
