"""FastAPI application factory: predictions from the published weights, feedback into the stream, metrics out.

The API never trains. It serves the newest snapshot the learner published and swaps to a newer one as soon as
it is announced; feedback is written whole to the Redis stream or refused whole. Concurrent predict requests
are batched into shared forward passes, and the replica reports its load so the learner can back off. The
routes live in `app.routes`, one router per resource; what they share is built here and reached through
`app.deps`.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import version

import torch
from fastapi import FastAPI

from app.auth import parse_api_keys
from app.batching import PredictBatcher
from app.errors import ApiError, install_error_handlers
from app.headers import SecurityHeaders
from app.limits import BodySizeLimit, Limits
from app.metrics import ApiMetrics, RequestMetrics
from app.pressure import LatencyWindow, report_pressure
from app.routes import ROUTERS
from app.serving import ModelHolder, ServedModel
from app.settings import Settings
from learner.classifier import Prediction
from learner.devices import resolve_device
from learner.stores import open_snapshot_store
from streams.connection import connect
from streams.control import Control
from streams.rate_limit import RateLimiter


def create_app(settings: Settings) -> FastAPI:
    """The API for one model, sharing Redis and the snapshot directory with its learner."""
    keys = settings.stream_keys()
    holder = ModelHolder(
        settings.model,
        open_snapshot_store(settings.snapshot_dir),
        open_snapshot_store(settings.published_dir, keep=2),
        resolve_device(settings.serving_device()),
        quantize=settings.serve_quantize,
    )
    metrics = ApiMetrics()
    batcher = _batcher(holder, settings, metrics)
    latencies = LatencyWindow()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        torch.set_num_threads(settings.api_threads)
        app.state.redis = await asyncio.to_thread(connect, settings.redis_url, settings.data_dir)
        app.state.producer = settings.producer(app.state.redis)
        app.state.served_log = settings.served_log(app.state.redis)
        app.state.control = Control(app.state.redis, keys)
        app.state.rate_limiter = RateLimiter(app.state.redis, keys)
        await asyncio.to_thread(holder.refresh)
        stop = threading.Event()
        follower = threading.Thread(target=holder.follow, args=(app.state.redis, keys, stop), daemon=True)
        follower.start()
        reporter = asyncio.create_task(
            report_pressure(app.state.redis, keys, latencies, lambda: batcher.queue_depth)
        )
        yield
        reporter.cancel()
        await batcher.close()
        stop.set()
        # The follower reads from Redis; closing the connection under it would fail its last read.
        await asyncio.to_thread(follower.join, 5)
        app.state.redis.close()

    # /docs is served from local files (app/routes/docs.py); ReDoc would load from a CDN, so it is off.
    app = FastAPI(
        title="retentive", version=version("retentive"), lifespan=lifespan, docs_url=None, redoc_url=None
    )
    app.state.api_keys = parse_api_keys(settings.api_key_entries())
    app.state.settings = settings
    app.state.keys = keys
    app.state.holder = holder
    app.state.metrics = metrics
    app.state.batcher = batcher
    app.state.latencies = latencies
    app.state.limits = Limits(settings.max_inputs, settings.max_examples, settings.max_text_chars)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=metrics)
    app.add_middleware(SecurityHeaders)
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    return app


def _batcher(
    holder: ModelHolder, settings: Settings, metrics: ApiMetrics
) -> PredictBatcher[ServedModel, Prediction]:
    def classify(texts: list[str], top_k: int) -> tuple[ServedModel, list[Prediction]]:
        # The model is read once per batch, so every text of a batch is answered by the same version.
        served = holder.current
        if served is None or not served.classifier.labels:
            raise ApiError(409, "no_labels_yet", "no label has been learned yet: post feedback first")
        return served, served.predict(texts, top_k)

    return PredictBatcher(
        classify,
        max_batch=settings.predict_max_batch,
        max_wait_s=settings.predict_max_wait_ms / 1000,
        on_batch=metrics.observe_batch,
        max_queue=settings.predict_max_queue,
        timeout_s=settings.predict_timeout_s,
    )
