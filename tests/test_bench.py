"""The benchmark commands' quick variants run end to end and write results a reader can trust."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from app.settings import Settings
from bench import (
    backoff,
    cl_stream,
    false_alarms,
    learner_memory,
    long_stream,
    memory,
    speed,
    step_speed,
    tables,
    tune,
    writes,
)
from bench.data import DEV_PER_TASK, read_scoring, read_train
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
    assert list(result["strategies"]) == specs.split(",") and result["config"]["split"] == "test"
    joint = result["strategies"].pop("joint")
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
    # The upper bound: full cross-entropy, epochs while dev accuracy rises, one row scored after them all.
    assert joint["joint"] and (joint["strategy"], joint["loss"]) == ("sgd", "ce")
    curve = joint["dev_aa_by_epoch"]
    assert joint["epochs"] == curve.index(max(curve)) + 1 and len(curve) <= 5
    assert len(curve) == 5 or curve[-1] <= max(curve[:-1]), "training stops once dev accuracy stops rising"
    assert len(joint["matrix"]) == 1 and joint["aa"] == pytest.approx(sum(joint["matrix"][0]) / 4)
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
        "default_vs_bare",
        "migu_vs_sgd_step",
        "predict_p50_ms",
        "predict_p50_vs_bare",
        "predict_p99_ms",
        "bare_forward_ms",
        "api_forward_mean_ms",
        "bare_forward_mean_ms",
        "throughput_vs_bare",
        "p99_learning_vs_paused",
        "ingest_vs_xadd",
        "freshness_s",
        "learner_rss_mb",
        "api_rss_mb",
        "eval_share",
        "quantized_vs_bare",
    ]
    for key in figures:
        assert math.isfinite(result[key]) and result[key] > 0, key
    assert 0 <= result["quantized_accuracy"] <= 1 and 0 <= result["float_accuracy"] <= 1
    difference = result["quantized_accuracy"] - result["float_accuracy"]
    assert result["quantized_accuracy_difference"] == pytest.approx(difference)
    assert result["commit"] and result["predict_p99_ms"] >= result["predict_p50_ms"]
    assert set(result["aims"]) == {*speed.AIMS, "predict_p50_ms"}
    p50_ratio = result["predict_p50_ms"] / result["bare_forward_ms"]
    assert result["predict_p50_vs_bare"] == pytest.approx(p50_ratio)
    assert result["devices"]["learner"].startswith("cpu") and result["devices"]["api"].startswith("cpu")
    assert result["precision"] in ("fp32", "bf16")
    assert result["allocator"] == speed.service_allocator()
    service = result["details"]["service"]
    assert service["requests_learning"] > 0 and service["requests_paused"] > 0
    learner = result["details"]["learner"]
    assert learner["default_strategy"] == Settings().strategy and learner["default_examples_per_s"] > 0
    evaluation = result["details"]["evaluation"]
    assert evaluation["sets_scored"] >= 1 and evaluation["eval_budget"] == Settings().eval_budget
    assert evaluation["promotion_budget"] == Settings().promotion_budget
    assert 0 <= result["promotion_share"] < 1 and evaluation["promotion_checks"] >= 0


def test_backoff_quick_records_the_learners_back_offs_while_large_batches_are_predicted(
    tmp_path: Path, cl_stream_dir: Path
) -> None:
    out = tmp_path / "backoff.json"
    backoff.main(["--quick", "--requests", "4", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["commit"] and result["model"] == "tiny"
    assert result["predict_requests"] == 4 and result["texts_per_request"] == 64
    assert result["phase_s"] > 0 and result["backoffs"] >= 0 and result["updates_before"] >= 1


def test_arrival_patterns_deliver_every_example_once_in_their_own_shape() -> None:
    portion = [Example(f"text {i}", label) for i, label in enumerate("abcab" * 40)]
    for arrival in cl_stream.ARRIVALS:
        calls = cl_stream.arrivals(portion, arrival, batch=16, window=128)
        assert sorted(e.text for call in calls for e in call) == sorted(e.text for e in portion), arrival
    assert all(len(call) == 1 for call in cl_stream.arrivals(portion, "trickle", 16, 128))
    assert [len(call) for call in cl_stream.arrivals(portion, "batched", 16, 128)] == [16] * 12 + [8]
    sorted_calls = cl_stream.arrivals(portion, "sorted", 16, 128)
    assert [len(call) for call in sorted_calls] == [128, 72]
    ordered = [e.label for call in sorted_calls for e in call]
    assert ordered == sorted(ordered)
    sizes = [len(call) for call in cl_stream.arrivals(portion, "bursty", 16, 128)]
    assert sizes[:1] == [64] and sizes[1:17] == [1] * 16 and sizes[17:18] == [64]
    assert [len(call) for call in cl_stream.arrivals(portion, "bursty", 16, 0)][:4] == [16] * 4
    assert [len(call) for call in cl_stream.arrivals(portion, "sorted", 16, 0)] == [16] * 12 + [8]


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


@pytest.mark.parametrize("table", sorted(tables.TABLES))
def test_the_readme_results_tables_are_rendered_from_the_result_files(table: str) -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert tables.TABLES[table]() in readme, f"regenerate with: python -m bench.tables {table}"


def test_a_difference_within_its_interval_is_called_noise_and_one_beyond_it_is_not() -> None:
    close = {"a": {0: 0.70, 1: 0.72, 2: 0.69}, "b": {0: 0.71, 1: 0.70, 2: 0.70}}
    assert tables.difference("a", "b", close).endswith("within the noise")
    apart = {"a": {0: 0.75, 1: 0.76, 2: 0.74}, "b": {0: 0.70, 1: 0.70, 2: 0.70}}
    assert "+5.0 ± 2.5 points" in tables.difference("a", "b", apart)
    assert tables.difference("a", "b", apart).endswith("ahead")


def test_the_dev_split_is_carved_from_train_and_never_trained_on(cl_stream_dir: Path) -> None:
    trainable = read_train("agnews", 4000 - DEV_PER_TASK, root=cl_stream_dir)
    dev = read_scoring("agnews", "dev", root=cl_stream_dir)
    assert len(dev) == DEV_PER_TASK and not {r["text"] for r in dev} & {r["text"] for r in trainable}
    with pytest.raises(ValueError, match="before its dev split"):
        read_train("agnews", 4000 - DEV_PER_TASK + 1, root=cl_stream_dir)
    test = read_scoring("agnews", "test", 10, root=cl_stream_dir)
    assert not {r["text"] for r in test} & {r["text"] for r in dev}


def test_the_long_stream_cuts_tasks_into_groups_that_come_back(cl_stream_dir: Path) -> None:
    groups = long_stream.label_groups(cl_stream_dir)
    names = [group.name for group in groups]
    assert names == list(dict.fromkeys(long_stream.SCHEDULE)) and len(long_stream.SCHEDULE) >= 10
    dbpedia = [group.labels for group in groups if group.task == "dbpedia"]
    assert len(dbpedia) == 3 and len(frozenset().union(*dbpedia)) == 14 == sum(map(len, dbpedia))
    assert len([group for group in groups if group.task == "agnews"]) == 2
    # Every early group returns after several others.
    assert all(long_stream.SCHEDULE.count(name) == 2 for name in ("dbpedia.1", "agnews.1", "amazon"))
    stream = long_stream.segments(groups, 30, seed=0, root=cl_stream_dir)
    texts = [r["text"] for _, records in stream for r in records]
    assert len(texts) == len(set(texts)) == 30 * len(long_stream.SCHEDULE), "a return brings fresh examples"
    labels = {group.name: group.labels for group in groups}
    assert all(r["label"] in labels[name] for name, records in stream for r in records)
    assert long_stream.label_groups(cl_stream_dir) == groups, "the same stream for every run"


def test_cl_stream_scores_the_long_stream_on_dev_with_one_column_per_group(
    tmp_path: Path, cl_stream_dir: Path
) -> None:
    out = tmp_path / "long.json"
    argv = ["--quick", "--data", str(cl_stream_dir), "--order", "long", "--split", "dev", "--no-plots"]
    [result] = cl_stream.main([*argv, "--strategies", "migu", "--out", str(out)]).values()
    assert result["config"]["split"] == "dev" and result["tasks"][:2] == ["dbpedia.1", "agnews.1"]
    row = result["strategies"]["migu"]
    assert len(row["matrix"]) == len(long_stream.SCHEDULE) and all(len(line) == 7 for line in row["matrix"])
    learned_at = [long_stream.SCHEDULE.index(name) for name in result["tasks"]]
    metrics = task_metrics(row["matrix"], learned_at)
    assert (row["aa"], row["forgetting"], row["bwt"]) == (metrics.aa, metrics.forgetting, metrics.bwt)


def test_tune_chooses_on_dev_records_its_grid_and_feeds_the_test_run(
    tmp_path: Path, cl_stream_dir: Path
) -> None:
    out = tmp_path / "tuning_{order}.json"
    grids = ["sgd:lr=1e-4,1e-3", "migu:lr=1e-4:quantile=0.5,0.7"]
    argv = ["--grid", grids[0], "--grid", grids[1], "--out", str(out)]
    argv += ["--quick", "--data", str(cl_stream_dir)]
    tuned = tune.main(argv)
    assert tuned["split"] == "dev" and tuned["grid"]["migu"] == [
        "migu@lr=1e-4@quantile=0.5",
        "migu@lr=1e-4@quantile=0.7",
    ]
    runs = json.loads((tmp_path / "tuning_order1_dev_seed0.json").read_text())
    assert runs["config"]["split"] == "dev"
    for name, specs in tuned["grid"].items():
        assert tuned["dev_aa"] == {spec: [runs["strategies"][spec]["aa"]] for spec in tuned["dev_aa"]}
        assert tuned["chosen"][name] == max(specs, key=lambda spec: tuned["dev_aa"][spec][0])
    report = tmp_path / "report.json"
    common = ["--quick", "--data", str(cl_stream_dir), "--no-plots", "--out", str(report)]
    [result] = cl_stream.main([*common, "--tuned", str(tmp_path / "tuning_order1.json")]).values()
    assert list(result["strategies"]) == list(tuned["chosen"].values())
    assert result["config"]["split"] == "test"
    with pytest.raises(SystemExit, match="sets --split"):
        tune.main([*argv, "--split", "test"])


def test_false_alarms_counts_none_for_a_frozen_model_and_catches_a_forgotten_label(tmp_path: Path) -> None:
    out = tmp_path / "false_alarms.json"
    result = false_alarms.main(["--streams", "2", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    scenarios = result["scenarios"]
    assert scenarios["frozen"]["paired"]["alarms"] == 0
    assert scenarios["frozen"]["before"]["alarms"] > 0
    assert scenarios["flip"]["paired"]["detected"] == 2 and scenarios["flip"]["paired"]["false_alarms"] == 0


def test_writes_measure_what_holds_training_up_against_what_did(tmp_path: Path, cl_stream_dir: Path) -> None:
    out = tmp_path / "writes.json"
    writes.main(["--quick", "--repeats", "2", "--out", str(out)])
    result = json.loads(out.read_text())
    for kind in ("snapshot", "publication"):
        figures = result[kind]
        assert 0 < figures["serialize_s"] < figures["held_before_s"], kind
        assert len(result["runs"][kind]["write_s"]) == 2
    assert result["snapshot"]["megabytes"] > result["publication"]["megabytes"] > 0


def test_memory_measures_each_allocator_in_a_process_of_its_own(tmp_path: Path, cl_stream_dir: Path) -> None:
    out = tmp_path / "memory.json"
    memory.main(["--quick", "--steps", "3", "--rounds", "1", "--pass-sizes", "0,4", "--out", str(out)])
    result = json.loads(out.read_text())
    variants = result["variants"]
    assert set(result["unavailable"]) | set(memory.available()) == set(memory.ALLOCATORS)
    assert set(variants) == {
        f"{name}{suffix}" for name in memory.available() for suffix in ("", "@pass_size=4")
    }
    assert variants["glibc"]["peak_vs_glibc"] == 1.0
    for figures in variants.values():
        assert figures["peak_rss_mb"] >= figures["end_rss_mb"] > 0 and figures["median_step_s"] > 0
        # What stays in use after the run and after loading lies below what a step reaches.
        assert 0 < figures["loaded_mb"] <= figures["step_peak_mb"] <= figures["peak_rss_mb"]
        assert 0 < figures["held_mb"] <= figures["step_peak_mb"]
        assert 0 < figures["snapshot_peak_mb"] <= figures["peak_rss_mb"]
    runs = result["runs"]
    assert not any(run["tcmalloc_loaded"] for run in runs["glibc"])
    assert all(run["tcmalloc_loaded"] for run in runs.get("tcmalloc", []))


def test_step_speed_times_strategies_and_passes_on_texts_as_a_stream_mixes_them(
    tmp_path: Path, cl_stream_dir: Path
) -> None:
    out = tmp_path / "step_speed.json"
    specs = ["sgd", "migu+replay@pass_size=4"]
    step_speed.main(["--quick", "--texts", "mixed", "--strategies", ",".join(specs), "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["texts"] == "mixed" and set(result["median_step_s"]) == set(specs)
    assert result["ratio_to_sgd"]["sgd"] == 1.0 and result["ratio_to_sgd"][specs[1]] > 0


def test_learner_memory_follows_the_learner_child_through_the_service(
    tmp_path: Path, cl_stream_dir: Path
) -> None:
    out = tmp_path / "learner_memory.json"
    result = learner_memory.main(["--quick", "--seconds", "0", "--backlog", "60", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    assert result["applied"] > 0 and result["updates"] > 0, "the learner learned the backlog it was sent"
    assert result["windows"], "the learner's memory was sampled"
    assert max(window["max_mb"] for window in result["windows"]) <= math.ceil(result["learner_peak_mb"])
    assert 0 < result["learner_end_mb"] <= result["learner_peak_mb"]
