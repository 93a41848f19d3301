"""Operator routes: roll back to a snapshot, manage probe sets, pause and resume learning.

The API never touches the model itself: each route records what is wanted in Redis (`streams.control`)
and the active learner carries it out before its next micro-batch, so requests survive learner restarts.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from starlette.concurrency import run_in_threadpool

from app.auth import Scope, require
from app.errors import ApiError
from app.schemas import (
    ErrorBody,
    LearnerStatus,
    ProbeInfo,
    ProbeSetRequest,
    RollbackAccepted,
    RollbackOptions,
)
from learner.probes import validate_name
from learner.snapshots import SnapshotError, SnapshotNotFoundError, is_snapshot_id
from streams.control import Control, learner_state
from streams.notify import recent_evaluations
from streams.records import FeedbackRecord, MalformedRecord

ERRORS = {status: {"model": ErrorBody} for status in (401, 403, 404, 415, 422, 503)}

router = APIRouter(responses=ERRORS)
admin = [Depends(require(Scope.ADMIN))]


def _control(request: Request) -> Control:
    return request.app.state.control


@router.post(
    "/v1/snapshots/{snapshot_id}/rollback",
    status_code=202,
    response_model=RollbackAccepted,
    dependencies=admin,
    summary="Continue learning from an earlier snapshot; every replica then serves it",
)
async def rollback(
    snapshot_id: str, request: Request, options: RollbackOptions | None = None
) -> RollbackAccepted:
    if not is_snapshot_id(snapshot_id):
        raise ApiError(
            404, "snapshot_not_found", f"{snapshot_id!r} is not a snapshot id; see GET /v1/snapshots"
        )
    try:
        await run_in_threadpool(request.app.state.holder.store.load, snapshot_id, only=[])
    except SnapshotNotFoundError:
        raise ApiError(
            404, "snapshot_not_found", f"no snapshot {snapshot_id}; see GET /v1/snapshots"
        ) from None
    except SnapshotError as err:
        raise ApiError(409, "snapshot_unusable", str(err)) from None
    replay = options.replay if options else False
    wanted = await run_in_threadpool(_control(request).request_rollback, snapshot_id, replay)
    state = await run_in_threadpool(learner_state, request.app.state.redis, request.app.state.keys)
    return RollbackAccepted(
        snapshot_id=snapshot_id, replay=replay, requested_at=wanted.requested_at, learner=state
    )


@router.get(
    "/v1/probes",
    response_model=list[ProbeInfo],
    dependencies=[Depends(require(Scope.PREDICT))],
    summary="Registered and held-out probe sets, with their latest accuracy",
)
async def list_probes(request: Request) -> list[ProbeInfo]:
    client, keys = request.app.state.redis, request.app.state.keys
    registered = await run_in_threadpool(_control(request).probes)
    latest = await run_in_threadpool(recent_evaluations, client, keys, 1)
    evaluated = {probe["name"]: probe for probe in (latest[0]["probes"] if latest else [])}
    infos = [
        ProbeInfo(
            name=name,
            source="registered",
            size=len(examples),
            **_scores(evaluated.get(name)),
        )
        for name, examples in sorted(registered.items())
    ]
    infos += [
        ProbeInfo(name=name, source="held_out", size=probe.get("size") or 0, **_scores(probe))
        for name, probe in sorted(evaluated.items())
        if probe.get("source") == "held_out"
    ]
    return infos


def _scores(evaluated: dict | None) -> dict[str, float | None]:
    evaluated = evaluated or {}
    return {key: evaluated.get(key) for key in ("accuracy", "best_accuracy", "forgetting")}


@router.put(
    "/v1/probes/{name}",
    response_model=ProbeInfo,
    dependencies=admin,
    summary="Create or replace a probe set; it is never trained on and is evaluated from now on",
    responses={201: {"model": ProbeInfo, "description": "Created"}},
)
async def put_probe(name: str, body: ProbeSetRequest, request: Request, response: Response) -> ProbeInfo:
    _check_probe_name(name)
    most = request.app.state.settings.probe_size
    if len(body.examples) > most:
        message = f"at most {most} examples per probe set (RETENTIVE_PROBE_SIZE), got {len(body.examples)}"
        raise ApiError(
            422, "invalid_request", f"examples: {message}", [{"field": "examples", "message": message}]
        )
    limits = request.app.state.settings.record_limits()
    for index, example in enumerate(body.examples):
        try:
            FeedbackRecord(text=example.text, label=example.label).validate(limits)
        except MalformedRecord as err:
            raise err.at(index) from None
    control = _control(request)
    existing = await run_in_threadpool(control.probes)
    await run_in_threadpool(control.put_probe, name, [(e.text, e.label) for e in body.examples])
    response.status_code = 200 if name in existing else 201
    return ProbeInfo(
        name=name,
        source="registered",
        size=len(body.examples),
        accuracy=None,
        best_accuracy=None,
        forgetting=None,
    )


@router.delete(
    "/v1/probes/{name}",
    status_code=204,
    dependencies=admin,
    summary="Delete a registered probe set and its history",
)
async def delete_probe(name: str, request: Request) -> Response:
    _check_probe_name(name)
    if not await run_in_threadpool(_control(request).delete_probe, name):
        raise ApiError(404, "probe_not_found", f"no registered probe set {name!r}; see GET /v1/probes")
    return Response(status_code=204)


def _check_probe_name(name: str) -> None:
    try:
        validate_name(name)
    except ValueError as err:
        raise ApiError(
            422, "invalid_request", f"name: {err}", [{"field": "name", "message": str(err)}]
        ) from None


@router.post(
    "/v1/learner/pause",
    response_model=LearnerStatus,
    dependencies=admin,
    summary="Stop learning (feedback is still accepted and waits in the stream)",
)
async def pause(request: Request) -> LearnerStatus:
    await run_in_threadpool(_control(request).pause, "paused by an operator")
    return await _status(request)


@router.post(
    "/v1/learner/resume",
    response_model=LearnerStatus,
    dependencies=admin,
    summary="Go on learning after a pause, whether an operator or a forgetting alarm paused it",
)
async def resume(request: Request) -> LearnerStatus:
    await run_in_threadpool(_control(request).resume)
    return await _status(request)


async def _status(request: Request) -> LearnerStatus:
    client, keys = request.app.state.redis, request.app.state.keys
    wanted = await run_in_threadpool(_control(request).state)
    return LearnerStatus(
        learner=await run_in_threadpool(learner_state, client, keys), paused_reason=wanted.paused
    )
