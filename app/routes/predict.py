"""Predictions from the newest published weights, batched with concurrent requests."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import APIRouter, BackgroundTasks, Depends, Request

from app.auth import Scope, require
from app.deps import BatcherDep, LatenciesDep, LimitsDep, MetricsDep, ServedLogDep
from app.errors import ERRORS, ApiError
from app.rate_limits import rate_limit
from app.schemas import PredictRequest, PredictResponse
from streams.served import Served, ServedLog

T = TypeVar("T")
log = logging.getLogger("retentive.api")
router = APIRouter(responses=ERRORS)


@router.post(
    "/v1/predict",
    response_model=PredictResponse,
    dependencies=[Depends(require(Scope.PREDICT)), Depends(rate_limit("predict", "predict_rate_limit"))],
    summary="Classify texts with the newest published weights",
)
async def predict(
    request: Request,
    body: PredictRequest,
    batcher: BatcherDep,
    limits: LimitsDep,
    metrics: MetricsDep,
    latencies: LatenciesDep,
    served_log: ServedLogDep,
    background: BackgroundTasks,
) -> PredictResponse:
    limits.check_inputs(body.inputs)
    began = time.perf_counter()
    served, predictions = await _unless_the_client_leaves(request, batcher.submit(body.inputs, body.top_k))
    latencies.record(time.perf_counter() - began, len(body.inputs))
    metrics.predictions.inc(len(predictions))
    answered = [Served(served_log.new_id(), served.version, p.label, p.score) for p in predictions]
    # Remembered after the response is sent, so the answer waits for no Redis write.
    background.add_task(_remember, served_log, answered)
    return PredictResponse(
        model_version=served.version,
        snapshot_id=served.snapshot_id,
        predictions=[
            {
                "label": p.label,
                "score": p.score,
                "top": [{"label": s.label, "score": s.score} for s in p.top[: body.top_k]],
                "prediction_id": item.prediction_id,
            }
            for p, item in zip(predictions, answered, strict=True)
        ],
    )


def _remember(served_log: ServedLog, answered: list[Served]) -> None:
    """Keep the answers for the feedback that will name them; if that fails they are only not measured."""
    try:
        served_log.remember(answered)
    except Exception as err:
        log.warning(json.dumps({"event": "prediction_not_remembered", "error": repr(err)}))


async def _unless_the_client_leaves(request: Request, answer: Awaitable[T]) -> T:
    """`answer`, withdrawn from the queue (so it costs no forward pass) if the client disconnects first."""
    answering = asyncio.ensure_future(answer)
    leaving = asyncio.ensure_future(_disconnect(request))
    await asyncio.wait({answering, leaving}, return_when=asyncio.FIRST_COMPLETED)
    leaving.cancel()
    if not answering.done():
        answering.cancel()
        raise ApiError(503, "client_gone", "the client disconnected before its answer was ready")
    return answering.result()


async def _disconnect(request: Request) -> None:
    # The body is read: the next message on this connection is the client going away.
    while (await request.receive())["type"] != "http.disconnect":
        pass
