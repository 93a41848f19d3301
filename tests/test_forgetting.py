import json

import pytest
import redis

from learner.forgetting import Alarm, AlarmPolicy, ForgettingTracker, TaskMetrics, task_metrics
from learner.online import LearnerConfig
from learner.probes import MAX_NAME_LENGTH, ProbeRegistry, due_for_evaluation, evaluate, held_out
from streams.keys import StreamKeys
from streams.notify import record_evaluation

# task-based metrics


def test_task_metrics_on_a_hand_computed_matrix():
    # a[i][j]: accuracy on task j after training through task i.
    matrix = [
        [0.90, 0.10, 0.00],
        [0.95, 0.80, 0.20],
        [0.50, 0.70, 0.90],
    ]
    # aa = (0.5 + 0.7 + 0.9) / 3 = 0.7
    # forgetting: task 0: max(0.90, 0.95) - 0.5 = 0.45; task 1: max(0.10, 0.80) - 0.7 = 0.10; mean 0.275
    # bwt: task 0: 0.5 - 0.90 = -0.40; task 1: 0.7 - 0.80 = -0.10; mean -0.25
    metrics = task_metrics(matrix)
    assert metrics.aa == pytest.approx(0.7)
    assert metrics.forgetting == pytest.approx(0.275)
    assert metrics.bwt == pytest.approx(-0.25)


def test_task_metrics_with_positive_transfer():
    # Learning task 1 improved task 0: 0.6 -> 0.8; nothing was forgotten.
    # aa = (0.8 + 0.9) / 2 = 0.85; forgetting = max(0.6) - 0.8 = -0.2; bwt = 0.8 - 0.6 = 0.2
    metrics = task_metrics([[0.6, 0.3], [0.8, 0.9]])
    assert metrics == TaskMetrics(
        aa=pytest.approx(0.85), forgetting=pytest.approx(-0.2), bwt=pytest.approx(0.2)
    )


def test_task_metrics_single_task():
    assert task_metrics([[0.75]]) == TaskMetrics(aa=0.75, forgetting=0.0, bwt=0.0)


@pytest.mark.parametrize("matrix", [[], [[0.5, 0.5]], [[0.5, 0.5], [0.5]]])
def test_task_metrics_needs_a_square_matrix(matrix):
    with pytest.raises(ValueError, match="square"):
        task_metrics(matrix)


# tracker

PROBE_SIZE = 100


def _right(accuracies: dict[str, float]) -> dict[str, list[bool]]:
    """Outcomes with these accuracies on 100 examples, the first ones right: a higher accuracy keeps every
    example a lower one got right, as a model that only gains or only loses would."""
    return {
        name: [i < round(accuracy * PROBE_SIZE) for i in range(PROBE_SIZE)]
        for name, accuracy in accuracies.items()
    }


def _hand_sequence() -> ForgettingTracker:
    tracker = ForgettingTracker()
    tracker.record(10, 1, _right({"a": 0.5}), at="t1")
    tracker.record(20, 2, _right({"a": 0.8, "b": 0.6}), at="t2")
    tracker.record(30, 3, _right({"a": 0.7, "b": 0.9}), at="t3")
    tracker.record(40, 4, _right({"a": 0.4, "b": 0.8}), at="t4")
    return tracker


def probe(tracker: ForgettingTracker, name: str) -> dict | None:
    """One probe as the latest report (what the API serves) shows it, or None."""
    return next((p for p in tracker.report()["probes"] if p["name"] == name), None)


def test_per_probe_metrics_on_a_hand_sequence():
    tracker = _hand_sequence()
    # a: 0.5, 0.8, 0.7, 0.4 -> first 0.5, best 0.8, forgetting 0.8 - 0.4 = 0.4, bwt 0.4 - 0.5 = -0.1
    a = probe(tracker, "a")
    assert a is not None
    assert a["accuracy"] == 0.4
    assert a["first_accuracy"] == 0.5
    assert a["best_accuracy"] == 0.8
    assert a["forgetting"] == pytest.approx(0.4)
    assert a["bwt"] == pytest.approx(-0.1)
    assert [point["accuracy"] for point in a["history"]] == [0.5, 0.8, 0.7, 0.4]
    assert a["history"][0] == {"updates": 10, "model_version": 1, "accuracy": 0.5}
    # b appears at the second evaluation: 0.6, 0.9, 0.8 -> forgetting 0.1, bwt 0.2
    b = probe(tracker, "b")
    assert b is not None
    assert (b["first_accuracy"], b["best_accuracy"]) == (0.6, 0.9)
    assert b["forgetting"] == pytest.approx(0.1)
    assert b["bwt"] == pytest.approx(0.2)
    assert probe(tracker, "missing") is None


def test_summary_on_a_hand_sequence():
    summary = _hand_sequence().summary()
    # mean accuracy (0.4 + 0.8) / 2; forgetting (0.4 + 0.1) / 2, max 0.4; bwt (-0.1 + 0.2) / 2
    assert summary["mean_accuracy"] == pytest.approx(0.6)
    assert summary["mean_forgetting"] == pytest.approx(0.25)
    assert summary["max_forgetting"] == pytest.approx(0.4)
    assert summary["bwt"] == pytest.approx(0.05)


def test_a_probe_appearing_midway_has_history_from_then_on():
    tracker = _hand_sequence()
    a, b = probe(tracker, "a"), probe(tracker, "b")
    assert [(p["updates"], p["accuracy"]) for p in a["history"]] == [
        (10, 0.5),
        (20, 0.8),
        (30, 0.7),
        (40, 0.4),
    ]
    assert [(p["updates"], p["accuracy"]) for p in b["history"]] == [(20, 0.6), (30, 0.9), (40, 0.8)]


def test_empty_tracker_reports_nones_and_empty_lists():
    tracker = ForgettingTracker()
    assert tracker.summary() == {
        "mean_accuracy": None,
        "mean_forgetting": None,
        "max_forgetting": None,
        "bwt": None,
    }
    assert tracker.report() == {
        "model_version": None,
        "updates": None,
        "evaluated_at": None,
        "summary": tracker.summary(),
        "probes": [],
        "alarms": [],
    }
    assert tracker.active_alarms() == [] and tracker.alarm_log() == []


def test_report_shape():
    tracker = _hand_sequence()
    report = tracker.report(sizes={"a": 20}, sources={"a": "registered"}, history_limit=2)
    assert (report["model_version"], report["updates"], report["evaluated_at"]) == (4, 40, "t4")
    assert report["summary"] == tracker.summary()
    assert [probe["name"] for probe in report["probes"]] == ["a", "b"]
    a, b = report["probes"]
    assert (a["size"], a["source"], b["size"], b["source"]) == (20, "registered", None, None)
    assert [point["updates"] for point in a["history"]] == [30, 40]
    assert set(a) >= {"name", "accuracy", "best_accuracy", "forgetting", "history"}
    assert report["alarms"] == [tracker.active_alarms()[0].to_dict()]
    assert report["alarms"][0]["probe"] == "a"
    json.dumps(report)


def test_default_time_is_utc_iso():
    tracker = ForgettingTracker()
    tracker.record(1, 1, _right({"a": 1.0}))
    at = tracker.report()["evaluated_at"]
    assert at.endswith("+00:00")


def test_alarm_fires_once_clears_and_fires_again():
    tracker = ForgettingTracker(alarm_threshold=0.2)
    assert tracker.record(1, 1, _right({"p": 1.0})) == []
    assert tracker.record(2, 1, _right({"p": 0.85})) == []  # forgetting 0.15
    fired = tracker.record(3, 2, _right({"p": 0.7}), at="t3")  # 0.3: crosses
    assert fired == [
        Alarm(probe="p", forgetting=0.3, best_accuracy=1.0, accuracy=0.7, updates=3, model_version=2, at="t3")
    ]
    assert tracker.record(4, 2, _right({"p": 0.6})) == []  # 0.4: still above, no new alarm
    assert [alarm.probe for alarm in tracker.active_alarms()] == ["p"]
    assert tracker.record(5, 3, _right({"p": 0.8})) == []  # 0.2: not above any more, clears
    assert tracker.active_alarms() == []
    again = tracker.record(6, 3, _right({"p": 0.75}))  # 0.25: crosses again
    assert [(alarm.probe, alarm.updates) for alarm in again] == [("p", 6)]
    assert [alarm.updates for alarm in tracker.alarm_log()] == [3, 6]


def test_alarm_threshold_is_not_crossed_by_rounding():
    tracker = ForgettingTracker(alarm_threshold=0.2)
    tracker.record(1, 1, _right({"p": 0.9}))
    assert tracker.record(2, 1, _right({"p": 0.7})) == []
    assert probe(tracker, "p")["forgetting"] == 0.2


def test_an_alarm_stays_while_its_probe_waits_its_turn_and_clears_when_forgotten():
    tracker = ForgettingTracker(alarm_threshold=0.1, max_alarm_log=2)
    tracker.record(1, 1, _right({"p": 1.0, "q": 1.0}))
    assert len(tracker.record(2, 1, _right({"p": 0.5, "q": 0.5}))) == 2
    tracker.record(3, 1, _right({"q": 0.5}))
    assert [alarm.probe for alarm in tracker.active_alarms()] == ["p", "q"]
    column = tracker.column()
    assert column["alarms_active"] == 2 and column["scored"] == [["q", 0.5]]  # q scored, no alarm fired now
    tracker.forget("p")
    assert [alarm.probe for alarm in tracker.active_alarms()] == ["q"]
    tracker.record(4, 1, _right({"q": 1.0}))
    tracker.record(5, 1, _right({"q": 0.5}))
    assert [(alarm.probe, alarm.updates) for alarm in tracker.alarm_log()] == [("q", 2), ("q", 5)]


def test_forget_drops_a_probe_and_a_replacement_starts_fresh():
    tracker = _hand_sequence()
    assert tracker.forget("a") is True
    assert tracker.forget("a") is False
    assert probe(tracker, "a") is None
    assert tracker.active_alarms() == []
    assert [p["name"] for p in tracker.report()["probes"]] == ["b"]
    assert [point["accuracy"] for point in probe(tracker, "b")["history"]] == [0.6, 0.9, 0.8]
    tracker.record(50, 5, _right({"a": 0.3, "b": 0.8}))
    a = probe(tracker, "a")
    assert (a["first_accuracy"], a["best_accuracy"], a["forgetting"]) == (0.3, 0.3, 0.0)


def test_history_is_bounded_but_first_and_best_stay_exact():
    tracker = ForgettingTracker(max_history=3)
    tracker.record(1, 1, _right({"a": 0.9, "gone": 0.5}))
    for updates, accuracy in [(2, 0.6), (3, 0.5), (4, 0.7), (5, 0.4)]:
        tracker.record(updates, 1, _right({"a": accuracy}))
    a = probe(tracker, "a")
    assert [point["updates"] for point in a["history"]] == [3, 4, 5]
    assert (a["first_accuracy"], a["best_accuracy"]) == (0.9, 0.9)
    assert a["forgetting"] == pytest.approx(0.5)
    # A probe unscored for longer than the history keeps its figures, with no history left.
    gone = probe(tracker, "gone")
    assert (gone["accuracy"], gone["history"]) == (0.5, [])
    assert [point["accuracy"] for point in a["history"]] == [0.5, 0.7, 0.4]


def test_record_rejects_a_probe_without_outcomes():
    with pytest.raises(ValueError, match="must not be empty"):
        ForgettingTracker().record(1, 1, {"p": []})


def test_state_round_trip_is_exact():
    tracker = _hand_sequence()
    tracker.record(50, 5, _right({"a": 0.9, "b": 0.5}))
    state = tracker.state_dict()
    restored = ForgettingTracker()
    restored.load_state_dict(json.loads(json.dumps(state)))
    assert restored.state_dict() == state
    assert restored.report() == tracker.report()
    assert restored.alarm_log() == tracker.alarm_log()
    # Alarm state survives: b is still active, so the next evaluation above threshold does not re-fire it.
    assert [alarm.probe for alarm in restored.active_alarms()] == ["b"]
    assert restored.record(60, 6, _right({"a": 0.9, "b": 0.5})) == []


def test_malformed_state_is_refused():
    tracker = _hand_sequence()
    before = tracker.state_dict()
    state = tracker.state_dict()
    del state["probes"]["a"]
    with pytest.raises(ValueError, match="no state for probes"):
        tracker.load_state_dict(state)
    with pytest.raises(ValueError, match="malformed"):
        tracker.load_state_dict({"evaluations": []})
    assert tracker.state_dict() == before


def test_alarm_policy_values():
    assert [policy.value for policy in AlarmPolicy] == ["alert", "pause", "rollback"]
    assert AlarmPolicy("pause") is AlarmPolicy.PAUSE
    assert AlarmPolicy.ALERT == "alert"


@pytest.mark.parametrize("threshold", [-0.1, 1.0])
def test_threshold_is_validated(threshold):
    with pytest.raises(ValueError):
        ForgettingTracker(alarm_threshold=threshold)


def test_task_metrics_of_a_stream_where_a_task_comes_back():
    # Segments A, B, A again: A is first learned at evaluation 0, B at 1; the matrix is 3 x 2.
    metrics = task_metrics([[0.8, 0.0], [0.5, 0.9], [0.85, 0.7]], learned_at=[0, 1])
    assert metrics.aa == pytest.approx(0.775)
    assert metrics.forgetting == pytest.approx(((0.8 - 0.85) + (0.9 - 0.7)) / 2)
    assert metrics.bwt == pytest.approx(((0.85 - 0.8) + (0.7 - 0.9)) / 2)


def test_task_metrics_needs_one_accuracy_per_task_and_a_learned_at_inside_the_matrix():
    with pytest.raises(ValueError, match="one accuracy per task"):
        task_metrics([[0.8, 0.0, 0.1]], learned_at=[0, 0])
    with pytest.raises(ValueError, match="must index"):
        task_metrics([[0.8, 0.0]], learned_at=[0, 1])


# the signal on a stream, with the learner's defaults

LABELS = [f"label{i}" for i in range(5)]


def _frozen_model_stream(flip_label_from: int | None = None) -> tuple[list[list[Alarm]], ForgettingTracker]:
    """A 20,000-example stream over 5 labels through the real probe registry and tracker, evaluated as
    often and as much as the learner evaluates (every `eval_every` updates of 16 examples, the sets due
    within `eval_budget`), with a model whose
    predictions never change: each text right or wrong by its hash. From `flip_label_from` on, every
    text of the first label is predicted wrong. The alarms of each evaluation, and the tracker."""
    defaults = LearnerConfig()
    registry = ProbeRegistry(defaults.probe_size, defaults.probe_window, min_size=defaults.probe_min_size)
    tracker = ForgettingTracker(defaults.alarm_threshold)
    examples_per_evaluation = defaults.eval_every * 16
    flipped = False

    def predict(texts: list[str]) -> list[str]:
        labels = [text.split()[0] for text in texts]
        right = [held_out(f"right:{text}", 0.7) for text in texts]
        return [
            label if ok and not (flipped and label == LABELS[0]) else "other"
            for label, ok in zip(labels, right, strict=True)
        ]

    fired = []
    for position in range(20_000):
        label = LABELS[position % len(LABELS)]
        text = f"{label} example {position}"
        if held_out(text, defaults.probe_fraction, salt=b"stream"):
            registry.add_held_out(text, label, position, updates=position // 16)
        if (position + 1) % examples_per_evaluation == 0:
            flipped = flip_label_from is not None and position >= flip_label_from
            due = due_for_evaluation(registry.evaluable(), defaults.eval_budget, tracker.last_evaluated)
            fired.append(tracker.record(position // 16, 1, evaluate(due, predict)))
    return fired, tracker


def test_a_model_that_never_changes_raises_no_alarm_at_the_defaults():
    fired, tracker = _frozen_model_stream()
    assert len(fired) == 25 and not any(fired)
    assert len(tracker.report()["probes"]) >= 5
    assert tracker.summary()["max_forgetting"] < LearnerConfig().alarm_threshold


def test_a_label_gone_wrong_raises_an_alarm_within_two_evaluations():
    flip_at = 12_000
    fired, _ = _frozen_model_stream(flip_label_from=flip_at)
    first_after = flip_at // (LearnerConfig().eval_every * 16)
    alarmed = [i for i, alarms in enumerate(fired) if any(LABELS[0] in a.probe for a in alarms)]
    assert alarmed and alarmed[0] <= first_after + 1, alarmed
    assert all(LABELS[0] in alarm.probe for alarms in fired for alarm in alarms)


@pytest.mark.parametrize("texts_per_set", [1, 8])
def test_one_stored_evaluation_stays_under_64_kb_at_the_probe_and_name_caps(
    redis_client: redis.Redis, key_prefix: str, texts_per_set: int
) -> None:
    """The largest column one evaluation can write: registered sets at the count cap, each with a longest
    name, as many as the budget lets one evaluation score; with one text each (the most rows), or eight
    (the fewest that can raise an alarm, and every one does)."""
    defaults = LearnerConfig()
    registry = ProbeRegistry(defaults.probe_size, defaults.probe_window, min_size=defaults.probe_min_size)
    for number in range(registry.max_probes):
        examples = [(f"text {number} {i}", "x") for i in range(texts_per_set)]
        registry.register(f"{number:04d}".ljust(MAX_NAME_LENGTH, "n"), examples, updates=0)
    tracker = ForgettingTracker(defaults.alarm_threshold)
    due = due_for_evaluation(registry.evaluable(), defaults.eval_budget, tracker.last_evaluated)
    tracker.record(1, 1, evaluate(due, lambda texts: ["x"] * len(texts)))
    fired = tracker.record(2, 2, evaluate(due, lambda texts: ["y"] * len(texts)))
    assert len(due) == defaults.eval_budget // texts_per_set
    assert len(fired) == (len(due) if texts_per_set == 8 else 0)
    keys = StreamKeys(prefix=key_prefix, model="m")
    record_evaluation(redis_client, keys, tracker.column(), {})
    assert len(redis_client.lindex(keys.evals, 0)) <= 64 * 1024
