"""Labelled examples into the learning stream, written whole or refused whole."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from starlette.concurrency import run_in_threadpool

from app.auth import Scope, require
from app.deps import LimitsDep, MetricsDep, ProducerDep
from app.errors import ERRORS
from app.rate_limits import rate_limit
from app.schemas import FeedbackRequest, FeedbackResponse
from streams.records import FeedbackRecord

router = APIRouter(responses=ERRORS)


@router.post(
    "/v1/feedback",
    status_code=202,
    response_model=FeedbackResponse,
    dependencies=[Depends(require(Scope.FEEDBACK)), Depends(rate_limit("feedback", "feedback_rate_limit"))],
    summary="Add labelled examples to the learning stream, all or nothing",
)
async def feedback(
    body: FeedbackRequest, producer: ProducerDep, limits: LimitsDep, metrics: MetricsDep
) -> FeedbackResponse:
    limits.check_examples(len(body.examples))
    records = [FeedbackRecord(**example.model_dump()) for example in body.examples]
    result = await run_in_threadpool(producer.add, records)
    metrics.feedback.labels("accepted").inc(result.accepted)
    metrics.feedback.labels("duplicate").inc(result.duplicates)
    return FeedbackResponse(
        accepted=result.accepted, duplicates=result.duplicates, stream_ids=result.stream_ids
    )
