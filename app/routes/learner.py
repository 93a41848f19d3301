"""The learner as operators see it: what it is doing, and pausing or resuming it.

Pause and resume are recorded in Redis (`streams.control`) and carried out by the active learner before its
next micro-batch, so they survive learner restarts.
"""

from __future__ import annotations

import redis
from fastapi import APIRouter, Depends
from starlette.concurrency import run_in_threadpool

from app.auth import Scope, require
from app.deps import ControlDep, KeysDep, RedisDep, SettingsDep
from app.errors import ERRORS
from app.schemas import LayerKeepRate, LearnerReport, LearnerStatus
from streams.control import Control, learner_state
from streams.keys import StreamKeys
from streams.notify import read_counters, read_keep_rates

router = APIRouter(responses=ERRORS)


@router.get(
    "/v1/learner",
    response_model=LearnerReport,
    dependencies=[Depends(require(Scope.PREDICT))],
    summary="What the learner is doing: its state, speed and the MIGU keep-rate of every gated layer",
)
async def learner(
    settings: SettingsDep, client: RedisDep, keys: KeysDep, control: ControlDep
) -> LearnerReport:
    counters = await run_in_threadpool(read_counters, client, keys)
    rates = await run_in_threadpool(read_keep_rates, client, keys)
    wanted = await run_in_threadpool(control.state)
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


@router.post(
    "/v1/learner/pause",
    response_model=LearnerStatus,
    dependencies=[Depends(require(Scope.ADMIN))],
    summary="Stop learning (feedback is still accepted and waits in the stream)",
)
async def pause(control: ControlDep, client: RedisDep, keys: KeysDep) -> LearnerStatus:
    await run_in_threadpool(control.pause, "paused by an operator")
    return await _status(control, client, keys)


@router.post(
    "/v1/learner/resume",
    response_model=LearnerStatus,
    dependencies=[Depends(require(Scope.ADMIN))],
    summary="Go on learning after a pause, whether an operator or a forgetting alarm paused it",
)
async def resume(control: ControlDep, client: RedisDep, keys: KeysDep) -> LearnerStatus:
    await run_in_threadpool(control.resume)
    return await _status(control, client, keys)


async def _status(control: Control, client: redis.Redis, keys: StreamKeys) -> LearnerStatus:
    wanted = await run_in_threadpool(control.state)
    return LearnerStatus(
        learner=await run_in_threadpool(learner_state, client, keys), paused_reason=wanted.paused
    )
