"""Typed dependencies: what a route needs from the running app, each built once in `create_app`.

Async, though they wait for nothing: FastAPI runs a sync dependency in a worker thread, a hop that would
cost more than the lookup on every request.
"""

from __future__ import annotations

from typing import Annotated

import redis
from fastapi import Depends, Request

from app.batching import PredictBatcher
from app.limits import Limits
from app.metrics import ApiMetrics
from app.pressure import LatencyWindow
from app.serving import ModelHolder, ServedModel
from app.settings import Settings
from learner.classifier import Prediction
from streams.control import Control
from streams.keys import StreamKeys
from streams.producer import FeedbackProducer
from streams.served import ServedLog


async def _settings(request: Request) -> Settings:
    return request.app.state.settings


async def _redis(request: Request) -> redis.Redis:
    return request.app.state.redis


async def _keys(request: Request) -> StreamKeys:
    return request.app.state.keys


async def _control(request: Request) -> Control:
    return request.app.state.control


async def _producer(request: Request) -> FeedbackProducer:
    return request.app.state.producer


async def _served_log(request: Request) -> ServedLog:
    return request.app.state.served_log


async def _holder(request: Request) -> ModelHolder:
    return request.app.state.holder


async def _batcher(request: Request) -> PredictBatcher[ServedModel, Prediction]:
    return request.app.state.batcher


async def _metrics(request: Request) -> ApiMetrics:
    return request.app.state.metrics


async def _latencies(request: Request) -> LatencyWindow:
    return request.app.state.latencies


async def _limits(request: Request) -> Limits:
    return request.app.state.limits


SettingsDep = Annotated[Settings, Depends(_settings)]
RedisDep = Annotated[redis.Redis, Depends(_redis)]
KeysDep = Annotated[StreamKeys, Depends(_keys)]
ControlDep = Annotated[Control, Depends(_control)]
ProducerDep = Annotated[FeedbackProducer, Depends(_producer)]
ServedLogDep = Annotated[ServedLog, Depends(_served_log)]
HolderDep = Annotated[ModelHolder, Depends(_holder)]
BatcherDep = Annotated[PredictBatcher[ServedModel, Prediction], Depends(_batcher)]
MetricsDep = Annotated[ApiMetrics, Depends(_metrics)]
LatenciesDep = Annotated[LatencyWindow, Depends(_latencies)]
LimitsDep = Annotated[Limits, Depends(_limits)]
