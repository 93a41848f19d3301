"""Predictions from the newest published weights, batched with concurrent requests."""

from __future__ import annotations

import time
import uuid

from fastapi import APIRouter, Depends

from app.auth import Scope, require
from app.deps import BatcherDep, LatenciesDep, LimitsDep, MetricsDep
from app.errors import ERRORS
from app.schemas import PredictRequest, PredictResponse

router = APIRouter(responses=ERRORS)


@router.post(
    "/v1/predict",
    response_model=PredictResponse,
    dependencies=[Depends(require(Scope.PREDICT))],
    summary="Classify texts with the newest published weights",
)
async def predict(
    body: PredictRequest,
    batcher: BatcherDep,
    limits: LimitsDep,
    metrics: MetricsDep,
    latencies: LatenciesDep,
) -> PredictResponse:
    limits.check_inputs(body.inputs)
    began = time.perf_counter()
    served, predictions = await batcher.submit(body.inputs, body.top_k)
    latencies.record(time.perf_counter() - began)
    metrics.predictions.inc(len(predictions))
    return PredictResponse(
        model_version=served.version,
        snapshot_id=served.snapshot_id,
        predictions=[
            {
                "label": p.label,
                "score": p.score,
                "top": [{"label": s.label, "score": s.score} for s in p.top[: body.top_k]],
                "prediction_id": uuid.uuid4().hex,
            }
            for p in predictions
        ],
    )
