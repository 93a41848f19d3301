"""The benchmark commands' quick variants run end to end and write results a reader can trust."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from app.settings import Settings
from bench import cl_stream, speed, tables
from learner.forgetting import task_metrics
from learner.online import Example


@pytest.fixture(autouse=True)
def torch_threads() -> Iterator[None]:
    """The commands set torch's thread count for the process; later tests get theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_cl_stream_quick_writes_a_matrix_and_metrics_per_strategy(
    tmp_path: Path, cl_stream_dir: Path
) -> None:
    out = tmp_path / "cl_{order}.json"
    specs = "sgd,migu@quantile=0.5@lr=2e-4,replay,joint"
    cl_stream.main(["--quick", "--data", str(cl_stream_dir), "--strategies", specs, "--out", str(out)])
    result = json.loads((tmp_path / "cl_order1.json").read_text())
    assert result["order"] == "order1" and result["tasks"] == ["dbpedia", "amazon", "agnews", "yelp"]
    assert list(result["strategies"]) == specs.split(",")
    for spec, row in result["strategies"].items():
        assert len(row["matrix"]) == 4 and all(len(line) == 4 for line in row["matrix"]), spec
        assert all(0.0 <= value <= 1.0 for line in row["matrix"] for value in line)
        # Naming the task can only remove wrong answers.
        for overall, within in zip(row["matrix"], row["within_task_matrix"], strict=True):
            assert all(a <= b <= 1.0 for a, b in zip(overall, within, strict=True)), spec
        metrics = task_metrics(row["matrix"])
        assert (row["aa"], row["forgetting"], row["bwt"]) == (metrics.aa, metrics.forgetting, metrics.bwt)
        assert (
            row["examples_per_s"] > 0 and row["loss"] in ("ce", "ace") and row["head"] in ("linear", "cosine")
        )
        assert row["encoder_drift"] > 0, f"{spec}: the stream trained the encoder"
    settings = result["strategies"]["migu@quantile=0.5@lr=2e-4"]["settings"]
    assert (settings["quantile"], settings["lr"]) == (0.5, 2e-4)
    assert result["strategies"]["joint"]["joint"] and result["strategies"]["joint"]["strategy"] == "sgd"
    # Before the stream reaches a task whose labels are new, that task cannot score.
    assert [line[2] for line in result["strategies"]["sgd"]["matrix"][:2]] == [0.0, 0.0]
    assert (tmp_path / "cl_order1.png").stat().st_size > 10_000


def test_cl_stream_resume_keeps_finished_rows_and_adds_the_missing_ones(
    tmp_path: Path, cl_stream_dir: Path
) -> None:
    out = tmp_path / "cl_{order}.json"
    common = ["--quick", "--data", str(cl_stream_dir), "--out", str(out), "--no-plots"]
    cl_stream.main([*common, "--strategies", "sgd"])
    first = json.loads((tmp_path / "cl_order1.json").read_text())["strategies"]["sgd"]
    cl_stream.main([*common, "--strategies", "sgd,migu", "--resume"])
    rows = json.loads((tmp_path / "cl_order1.json").read_text())["strategies"]
    assert list(rows) == ["sgd", "migu"]
    assert rows["sgd"] == first, "a finished row is kept, not measured again"
    assert "--resume" in rows["migu"]["run"]["command"] and "--resume" not in rows["sgd"]["run"]["command"]
    cl_stream.main([*common, "--strategies", "migu", "--seed", "1", "--resume"])
    rows = json.loads((tmp_path / "cl_order1.json").read_text())["strategies"]
    assert list(rows) == ["migu"], "rows measured with another config are not mixed in"


def test_cl_stream_refuses_an_unknown_setting(cl_stream_dir: Path) -> None:
    with pytest.raises(SystemExit, match="settable are"):
        cl_stream.main(["--quick", "--data", str(cl_stream_dir), "--strategies", "migu@colour=red"])


def test_speed_quick_measures_every_figure_against_its_reference(tmp_path: Path, cl_stream_dir: Path) -> None:
    out = tmp_path / "speed.json"
    speed.main(["--quick", "--out", str(out)])
    result = json.loads(out.read_text())
    figures = [
        "learner_vs_bare",
        "migu_vs_sgd_step",
        "predict_p50_ms",
        "predict_p99_ms",
        "bare_forward_ms",
        "throughput_vs_bare",
        "p99_learning_vs_paused",
        "ingest_vs_xadd",
        "freshness_s",
        "learner_rss_mb",
        "api_rss_mb",
    ]
    for key in figures:
        assert math.isfinite(result[key]) and result[key] > 0, key
    assert result["commit"] and result["predict_p99_ms"] >= result["predict_p50_ms"]
    assert set(result["aims"]) == {*speed.AIMS, "predict_p50_ms"}
    service = result["details"]["service"]
    assert service["requests_learning"] > 0 and service["requests_paused"] > 0
    learner = result["details"]["learner"]
    assert learner["default_strategy"] == Settings().strategy and learner["default_examples_per_s"] > 0


def test_arrival_patterns_deliver_every_example_once_in_their_own_shape() -> None:
    portion = [Example(f"text {i}", label) for i, label in enumerate("abcab" * 40)]
    for arrival in cl_stream.ARRIVALS:
        calls = cl_stream.arrivals(portion, arrival, batch=16)
        assert sorted(e.text for call in calls for e in call) == sorted(e.text for e in portion), arrival
    assert all(len(call) == 1 for call in cl_stream.arrivals(portion, "trickle", 16))
    ordered = [e.label for call in cl_stream.arrivals(portion, "sorted", 16) for e in call]
    assert ordered == sorted(ordered)
    sizes = [len(call) for call in cl_stream.arrivals(portion, "bursty", 16)]
    assert sizes[:4] == [16] * 4 and sizes[4:20] == [1] * 16 and sizes[20:24] == [16] * 4


def test_cl_stream_rows_record_arrival_and_prequential_accuracy(tmp_path: Path, cl_stream_dir: Path) -> None:
    out = tmp_path / "cl_{order}.json"
    argv = [
        "--quick",
        "--data",
        str(cl_stream_dir),
        "--strategies",
        "replay",
        "--out",
        str(out),
        "--no-plots",
    ]
    [result] = cl_stream.main([*argv, "--arrival", "trickle"]).values()
    row = result["strategies"]["replay"]
    assert row["arrival"] == "trickle" and result["config"]["arrival"] == "trickle"
    assert 0.0 <= row["prequential"]["cumulative"] <= 1.0 and row["prequential"]["scored"] > 0


def test_the_readme_arrival_tables_are_rendered_from_the_result_files() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert tables.arrival() in readme, "regenerate with: python -m bench.tables arrival"
