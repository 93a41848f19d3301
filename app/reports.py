"""What the learner reported, read back from Redis: the accuracy matrix, the version log and the gate.

These are the views the dashboard draws, and plain JSON for anyone else. The learner writes them (evaluations,
version announcements, counters and per-layer keep-rates); the API only reads.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from starlette.concurrency import run_in_threadpool

from app.auth import Scope, require
from app.schemas import (
    AccuracyMatrix,
    AlarmReport,
    ErrorBody,
    EvaluationColumn,
    LayerKeepRate,
    LearnerReport,
    VersionEvent,
)
from streams.control import learner_state
from streams.notify import read_counters, read_keep_rates, recent_evaluations, recent_versions

ERRORS = {status: {"model": ErrorBody} for status in (401, 403, 422, 503)}
MAX_EVALUATIONS = 200  # as many as the learner keeps (streams.notify.record_evaluation)
MAX_VERSIONS = 500  # as many as the version log keeps (streams.notify.publish_version)

router = APIRouter(responses=ERRORS, dependencies=[Depends(require(Scope.PREDICT))])


@router.get(
    "/v1/evaluations",
    response_model=AccuracyMatrix,
    summary="Accuracy of every probe at each recent evaluation (probes x evaluations) and the alarms fired",
)
async def evaluations(
    request: Request,
    limit: Annotated[
        int, Query(ge=1, le=MAX_EVALUATIONS, description="Newest evaluations to include.")
    ] = 100,
) -> AccuracyMatrix:
    newest_first = await run_in_threadpool(
        recent_evaluations, request.app.state.redis, request.app.state.keys, limit
    )
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


@router.get(
    "/v1/versions",
    response_model=list[VersionEvent],
    summary="The model's versions as they were published, newest first, with the rollbacks among them",
)
async def versions(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=MAX_VERSIONS, description="Newest versions to include.")] = 100,
) -> list[VersionEvent]:
    log = await run_in_threadpool(recent_versions, request.app.state.redis, request.app.state.keys, limit)
    return [
        VersionEvent(
            version=event["version"],
            snapshot_id=event["snapshot_id"],
            kind=event["kind"],
            published_at=datetime.fromtimestamp(event["published_at"], UTC).isoformat(),
            rolled_back_to=event.get("rolled_back_to"),
        )
        for event in log
    ]


@router.get(
    "/v1/learner",
    response_model=LearnerReport,
    summary="What the learner is doing: its state, speed and the MIGU keep-rate of every gated layer",
)
async def learner(request: Request) -> LearnerReport:
    client, keys, settings = request.app.state.redis, request.app.state.keys, request.app.state.settings
    counters = await run_in_threadpool(read_counters, client, keys)
    rates = await run_in_threadpool(read_keep_rates, client, keys)
    wanted = await run_in_threadpool(request.app.state.control.state)
    return LearnerReport(
        learner=await run_in_threadpool(learner_state, client, keys),
        paused_reason=wanted.paused,
        strategy=settings.strategy,
        quantile=settings.quantile,
        updates=_number(counters, "updates", int),
        updates_per_s=_number(counters, "updates_per_s", float),
        examples_per_s=_number(counters, "examples_per_s", float),
        keep_rate=_number(counters, "keep_rate", float) if rates else None,
        layers=[LayerKeepRate(layer=layer, keep_rate=rate) for layer, rate in rates.items()],
    )


def _number(counters: dict[str, str], name: str, kind: type[int] | type[float]) -> int | float | None:
    value = counters.get(name)
    return None if value is None else kind(float(value))
