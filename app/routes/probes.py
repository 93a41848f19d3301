"""Probe sets: the held-out ones the learner carves from the stream and the ones operators register.

A registered set is recorded in Redis (`streams.control`); the active learner picks it up before its next
micro-batch and never trains on its texts.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from starlette.concurrency import run_in_threadpool

from app.auth import Scope, require
from app.deps import ControlDep, KeysDep, RedisDep, SettingsDep
from app.errors import ERRORS, ApiError
from app.schemas import ProbeInfo, ProbeSetRequest
from learner.probes import validate_name
from streams.notify import probe_figures
from streams.records import FeedbackRecord, MalformedRecord

router = APIRouter(responses=ERRORS)


@router.get(
    "/v1/probes",
    response_model=list[ProbeInfo],
    dependencies=[Depends(require(Scope.PREDICT))],
    summary="Registered and held-out probe sets, with their latest accuracy",
)
async def list_probes(client: RedisDep, keys: KeysDep, control: ControlDep) -> list[ProbeInfo]:
    registered = await run_in_threadpool(control.probes)
    evaluated = await run_in_threadpool(probe_figures, client, keys)
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
    dependencies=[Depends(require(Scope.ADMIN))],
    summary="Create or replace a probe set; it is never trained on and is evaluated from now on",
    responses={201: {"model": ProbeInfo, "description": "Created"}},
)
async def put_probe(
    name: str, body: ProbeSetRequest, response: Response, settings: SettingsDep, control: ControlDep
) -> ProbeInfo:
    _check_probe_name(name)
    most = settings.probe_size
    if len(body.examples) > most:
        message = f"at most {most} examples per probe set (RETENTIVE_PROBE_SIZE), got {len(body.examples)}"
        raise ApiError(
            422, "invalid_request", f"examples: {message}", [{"field": "examples", "message": message}]
        )
    limits = settings.record_limits()
    for index, example in enumerate(body.examples):
        try:
            FeedbackRecord(text=example.text, label=example.label).validate(limits)
        except MalformedRecord as err:
            raise err.at(index) from None
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
    dependencies=[Depends(require(Scope.ADMIN))],
    summary="Delete a registered probe set and its history",
)
async def delete_probe(name: str, control: ControlDep) -> Response:
    _check_probe_name(name)
    if not await run_in_threadpool(control.delete_probe, name):
        raise ApiError(404, "probe_not_found", f"no registered probe set {name!r}; see GET /v1/probes")
    return Response(status_code=204)


def _check_probe_name(name: str) -> None:
    try:
        validate_name(name)
    except ValueError as err:
        raise ApiError(
            422, "invalid_request", f"name: {err}", [{"field": "name", "message": str(err)}]
        ) from None
