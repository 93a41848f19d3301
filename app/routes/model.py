"""What is served and what the learner has done: the model, its labels and counters, and its versions."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from starlette.concurrency import run_in_threadpool

from app.auth import Scope, require
from app.deps import ControlDep, HolderDep, KeysDep, ProducerDep, RedisDep, SettingsDep
from app.errors import ERRORS
from app.schemas import HeldBack, ModelResponse, VersionEvent
from streams.control import learner_state
from streams.notify import read_counters, read_held_back, recent_versions

MAX_VERSIONS = 500  # as many as the version log keeps (streams.notify.publish_version)

router = APIRouter(responses=ERRORS, dependencies=[Depends(require(Scope.PREDICT))])


@router.get("/v1/model", response_model=ModelResponse, summary="What is served and what the learner has done")
async def model(
    settings: SettingsDep,
    client: RedisDep,
    keys: KeysDep,
    control: ControlDep,
    producer: ProducerDep,
    holder: HolderDep,
) -> ModelResponse:
    counters = await run_in_threadpool(read_counters, client, keys)
    state = await run_in_threadpool(learner_state, client, keys)
    wanted = await run_in_threadpool(control.state)
    newest = await run_in_threadpool(holder.store.latest)
    held_back = await run_in_threadpool(read_held_back, client, keys)
    served = holder.current
    return ModelResponse(
        model_version=served.version if served else None,
        snapshot_id=served.snapshot_id if served else None,
        base_model=settings.model,
        strategy=settings.strategy,
        labels=served.classifier.labels if served else [],
        counters={name: int(value) for name, value in counters.items() if value.isdigit()},
        stream_lag=await run_in_threadpool(producer.backlog),
        learner=state,
        paused_reason=wanted.paused,
        last_snapshot_at=newest.created_at if newest else None,
        held_back=_held_back(held_back),
    )


def _held_back(status: dict | None) -> HeldBack | None:
    if status is None:
        return None
    at = datetime.fromtimestamp(status["held_back_at"], UTC).isoformat()
    return HeldBack(updates=status["updates"], reason=status["reason"], held_back_at=at)


@router.get(
    "/v1/versions",
    response_model=list[VersionEvent],
    summary="The model's versions as they were published, newest first, with the rollbacks among them",
)
async def versions(
    client: RedisDep,
    keys: KeysDep,
    limit: Annotated[int, Query(ge=1, le=MAX_VERSIONS, description="Newest versions to include.")] = 100,
) -> list[VersionEvent]:
    log = await run_in_threadpool(recent_versions, client, keys, limit)
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
