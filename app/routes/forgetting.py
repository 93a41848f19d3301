"""Forgetting: the latest figures of every probe set, and the accuracy matrix of recent evaluations.

The learner writes both: each evaluation as a compact column (what it scored), and every probe's current
figures in a hash; the API only reads them back. The dashboard draws the same views.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from redis import Redis
from starlette.concurrency import run_in_threadpool

from app.auth import Scope, require
from app.deps import KeysDep, RedisDep
from app.errors import ERRORS
from app.schemas import AccuracyMatrix, AlarmReport, EvaluationColumn, ForgettingResponse
from streams.keys import StreamKeys
from streams.notify import probe_figures, read_prequential, recent_evaluations
from streams.served import served_report

MAX_EVALUATIONS = 200  # as many as the learner keeps (streams.notify.record_evaluation)
EMPTY_FORGETTING = {
    "model_version": None,
    "updates": None,
    "evaluated_at": None,
    "summary": {"mean_accuracy": None, "mean_forgetting": None, "max_forgetting": None, "bwt": None},
    "probes": [],
    "alarms": [],
}

router = APIRouter(responses=ERRORS, dependencies=[Depends(require(Scope.PREDICT))])


@router.get(
    "/v1/forgetting", response_model=ForgettingResponse, summary="The latest evaluation of every probe set"
)
async def forgetting(client: RedisDep, keys: KeysDep) -> dict:
    report = await run_in_threadpool(current_forgetting, client, keys)
    prequential = await run_in_threadpool(read_prequential, client, keys)
    served = await run_in_threadpool(served_report, client, keys)
    return {**report, "prequential": prequential, "served": served}


def current_forgetting(client: Redis, keys: StreamKeys) -> dict[str, Any]:
    """The latest evaluation's header and summary, every probe's current figures, and the active alarms."""
    latest = recent_evaluations(client, keys, 1)
    if not latest:
        return EMPTY_FORGETTING
    figures = [figure for _, figure in sorted(probe_figures(client, keys).items())]
    return {
        **{field: latest[0][field] for field in ("model_version", "updates", "evaluated_at", "summary")},
        "probes": [{key: value for key, value in figure.items() if key != "alarm"} for figure in figures],
        "alarms": [figure["alarm"] for figure in figures if figure.get("alarm")],
    }


@router.get(
    "/v1/evaluations",
    response_model=AccuracyMatrix,
    summary="Accuracy of every probe at each recent evaluation (probes x evaluations) and the alarms fired",
)
async def evaluations(
    client: RedisDep,
    keys: KeysDep,
    limit: Annotated[
        int, Query(ge=1, le=MAX_EVALUATIONS, description="Newest evaluations to include.")
    ] = 100,
) -> AccuracyMatrix:
    newest_first = await run_in_threadpool(recent_evaluations, client, keys, limit)
    return accuracy_matrix(list(reversed(newest_first)))


def accuracy_matrix(evaluations: list[dict[str, Any]]) -> AccuracyMatrix:
    """The matrix of evaluations as the learner recorded them, oldest first.

    An evaluation scores the probe sets due then, so a probe's cell is empty where it was not scored. An
    evaluation that repeats the previous one (the learner re-publishes its latest one when a probe set
    changes and nothing was left to evaluate) is one column, not two.
    """
    kept: list[dict[str, Any]] = []
    for evaluation in evaluations:
        at = evaluation.get("evaluated_at")
        if at is not None and "scored" in evaluation and (not kept or kept[-1]["evaluated_at"] != at):
            kept.append(evaluation)
    probes = sorted({row[0] for evaluation in kept for row in evaluation["scored"]})
    index = {name: number for number, name in enumerate(probes)}
    accuracy: list[list[float | None]] = [[None] * len(kept) for _ in probes]
    fired = []
    for column, evaluation in enumerate(kept):
        for name, value, *alarm in evaluation["scored"]:
            accuracy[index[name]][column] = value
            if alarm:
                fired.append(
                    AlarmReport(
                        probe=name,
                        forgetting=alarm[0],
                        best_accuracy=alarm[1],
                        accuracy=value,
                        updates=evaluation["updates"],
                        model_version=evaluation["model_version"],
                        at=evaluation["evaluated_at"],
                    )
                )
    return AccuracyMatrix(
        probes=probes,
        evaluations=[
            EvaluationColumn(
                updates=e["updates"], model_version=e["model_version"], evaluated_at=e["evaluated_at"]
            )
            for e in kept
        ],
        accuracy=accuracy,
        alarms=fired,
    )
