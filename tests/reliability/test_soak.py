"""`python -m bench.soak --quick`: the soak command itself, on the tiny model for a few seconds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.reliability


def test_a_quick_soak_has_no_errors_loses_nothing_and_the_learner_trains(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench.soak", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=400,  # it stops by itself well before
        check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["stopped_by"] == "time" and 10 <= result["load_seconds"] < 20
    assert result["server_errors"] == 0 and result["transport_errors"] == 0
    assert result["statuses"] == {
        "predict": {"200": result["latency"]["predict"]["count"]},
        "feedback": {"202": result["latency"]["feedback"]["count"]},
    }
    examples = result["feedback_examples"]
    assert examples["accepted"] > 0 and examples["lost"] == 0 and examples["applied_twice"] == 0
    assert examples["applied"] + examples["in_stream_not_applied"] == examples["accepted"]
    assert result["learner_during_load"]["updates"] > 0
    for kind in ("predict", "feedback"):
        latency = result["latency"][kind]
        assert latency["p50_ms"] <= latency["p95_ms"] <= latency["p99_ms"] <= latency["max_ms"]
