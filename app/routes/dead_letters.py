"""The dead-letter stream for operators: what went there and why, and putting entries back on the stream."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from starlette.concurrency import run_in_threadpool

from app.auth import Scope, require
from app.deps import KeysDep, ProducerDep, RedisDep
from app.errors import ERRORS, ApiError
from app.schemas import DeadLetterInfo, RequeueReport, RequeueRequest
from streams.dead_letters import list_dead_letters, requeue

router = APIRouter(responses=ERRORS, dependencies=[Depends(require(Scope.ADMIN))])


@router.get(
    "/v1/dead-letters",
    response_model=list[DeadLetterInfo],
    summary="Entries the learner could not use, oldest first, each with the reason",
)
async def dead_letters(
    client: RedisDep, keys: KeysDep, limit: Annotated[int, Query(ge=1, le=10_000)] = 100
) -> list[DeadLetterInfo]:
    letters = await run_in_threadpool(list_dead_letters, client, keys, limit)
    return [
        DeadLetterInfo(
            dead_id=letter.dead_id,
            stream_id=letter.stream_id,
            reason=letter.reason,
            fields=letter.readable_fields(),
        )
        for letter in letters
    ]


@router.post(
    "/v1/dead-letters/requeue",
    response_model=RequeueReport,
    summary="Put dead letters back on the feedback stream, their ids' duplicate check cleared",
)
async def requeue_dead_letters(
    body: RequeueRequest, client: RedisDep, keys: KeysDep, producer: ProducerDep
) -> RequeueReport:
    if (body.ids is None) == (not body.all):
        raise ApiError(422, "invalid_request", "name the dead letters in 'ids', or send {\"all\": true}")
    outcome = await run_in_threadpool(requeue, client, keys, producer, None if body.all else body.ids)
    return RequeueReport(requeued=outcome.requeued, refused=outcome.refused)
