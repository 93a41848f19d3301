"""The accuracy matrix read back from the learner's evaluations, as GET /v1/evaluations serves it."""

from __future__ import annotations

from typing import Any

from app.routes.forgetting import accuracy_matrix


def evaluation(
    updates: int, at: str, accuracies: dict[str, float], fired: dict[str, list[float]] | None = None
) -> dict[str, Any]:
    """One evaluation as the learner records it (`ForgettingTracker.column`): `fired` gives the
    forgetting and best accuracy of each probe an alarm fired on then."""
    fired = fired or {}
    return {
        "model_version": updates // 10,
        "updates": updates,
        "evaluated_at": at,
        "summary": {},
        "alarms_active": len(fired),
        "scored": [[name, value, *fired.get(name, [])] for name, value in accuracies.items()],
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
    matrix = accuracy_matrix(
        [
            evaluation(10, "t1", {"a": 0.9}),
            evaluation(20, "t2", {"a": 0.4}, {"a": [0.5, 0.9]}),
            evaluation(30, "t3", {"a": 0.4}),
        ]
    )
    assert [(a.probe, a.updates, a.at, a.forgetting, a.best_accuracy, a.accuracy) for a in matrix.alarms] == [
        ("a", 20, "t2", 0.5, 0.9, 0.4)
    ]


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
