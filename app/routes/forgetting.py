"""Forgetting: the latest evaluation of every probe set, and the accuracy matrix of recent evaluations.

The learner writes the evaluations; the API only reads them back. The dashboard draws the same views.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from starlette.concurrency import run_in_threadpool

from app.auth import Scope, require
from app.deps import KeysDep, RedisDep
from app.errors import ERRORS
from app.schemas import AccuracyMatrix, AlarmReport, EvaluationColumn, ForgettingResponse
from streams.notify import read_prequential, recent_evaluations

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
    latest = await run_in_threadpool(recent_evaluations, client, keys, 1)
    prequential = await run_in_threadpool(read_prequential, client, keys)
    return {**(latest[0] if latest else EMPTY_FORGETTING), "prequential": prequential}


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

    An evaluation that repeats the previous one (the learner re-publishes its latest report when a probe set
    changes and nothing was left to evaluate) is one column, not two.
    """
    kept: list[dict[str, Any]] = []
    for evaluation in evaluations:
        at = evaluation.get("evaluated_at")
        if at is not None and (not kept or kept[-1]["evaluated_at"] != at):
            kept.append(evaluation)
    probes = sorted({probe["name"] for evaluation in kept for probe in evaluation["probes"]})
    row = {name: index for index, name in enumerate(probes)}
    accuracy: list[list[float | None]] = [[None] * len(kept) for _ in probes]
    for column, evaluation in enumerate(kept):
        for probe in evaluation["probes"]:
            accuracy[row[probe["name"]]][column] = probe["accuracy"]
    # An alarm stays in every evaluation while it is active; it fired at the one whose time it carries.
    times = {evaluation["evaluated_at"] for evaluation in kept}
    fired: dict[tuple[str, str], dict[str, Any]] = {}
    for evaluation in kept:
        for alarm in evaluation["alarms"]:
            if alarm["at"] in times:
                fired.setdefault((alarm["probe"], alarm["at"]), alarm)
    return AccuracyMatrix(
        probes=probes,
        evaluations=[
            EvaluationColumn(
                updates=e["updates"], model_version=e["model_version"], evaluated_at=e["evaluated_at"]
            )
            for e in kept
        ],
        accuracy=accuracy,
        alarms=[AlarmReport(**alarm) for alarm in fired.values()],
    )
