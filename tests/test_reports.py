"""The accuracy matrix read back from the learner's evaluations, as GET /v1/evaluations serves it."""

from __future__ import annotations

from typing import Any

from app.routes.forgetting import accuracy_matrix


def evaluation(updates: int, at: str, accuracies: dict[str, float], alarms: list[dict] | None = None) -> dict:
    """One evaluation as the learner records it (`ForgettingTracker.report`)."""
    return {
        "model_version": updates // 10,
        "updates": updates,
        "evaluated_at": at,
        "summary": {},
        "probes": [{"name": name, "accuracy": value} for name, value in accuracies.items()],
        "alarms": alarms or [],
    }


def alarm(probe: str, updates: int, at: str) -> dict[str, Any]:
    return {
        "probe": probe,
        "forgetting": 0.5,
        "best_accuracy": 0.9,
        "accuracy": 0.4,
        "updates": updates,
        "model_version": updates // 10,
        "at": at,
    }


def test_rows_are_probes_and_columns_evaluations_with_gaps_where_a_probe_was_missing() -> None:
    matrix = accuracy_matrix(
        [
            evaluation(10, "t1", {"b": 0.5}),
            evaluation(20, "t2", {"b": 0.75, "a": 1.0}),
            evaluation(30, "t3", {"a": 0.25}),
        ]
    )
    assert matrix.probes == ["a", "b"]
    assert [column.updates for column in matrix.evaluations] == [10, 20, 30]
    assert matrix.accuracy == [[None, 1.0, 0.25], [0.5, 0.75, None]]


def test_an_alarm_is_listed_once_at_the_evaluation_where_it_fired() -> None:
    early = alarm("a", 5, "t0")
    fired = alarm("a", 20, "t2")
    matrix = accuracy_matrix(
        [
            evaluation(10, "t1", {"a": 0.9}, [early]),
            evaluation(20, "t2", {"a": 0.4}, [fired]),
            evaluation(30, "t3", {"a": 0.4}, [fired]),
        ]
    )
    # The alarm from before the first kept evaluation fired outside the window the matrix shows.
    assert [(a.probe, a.updates) for a in matrix.alarms] == [("a", 20)]


def test_a_repeated_evaluation_is_one_column_and_an_empty_report_none() -> None:
    empty = {"model_version": None, "updates": None, "evaluated_at": None, "probes": [], "alarms": []}
    matrix = accuracy_matrix(
        [
            empty,
            evaluation(10, "t1", {"a": 0.5}),
            evaluation(10, "t1", {"a": 0.5}),
            evaluation(20, "t2", {"a": 1.0}),
        ]
    )
    assert [column.evaluated_at for column in matrix.evaluations] == ["t1", "t2"]
    assert matrix.accuracy == [[0.5, 1.0]]
    assert accuracy_matrix([]).probes == []
