"""FastAPI application factory: predictions from the published weights, feedback into the stream, metrics out.

The API never trains. It serves the newest snapshot the learner published and swaps to a newer one as soon as
it is announced; feedback is written whole to the Redis stream or refused whole. Concurrent predict requests
are batched into shared forward passes, and the replica reports its load so the learner can back off.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import version

import redis
import torch
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.admin import router as admin_router
from app.auth import Scope, parse_api_keys, require
from app.batching import PredictBatcher
from app.dashboard import router as dashboard_router
from app.errors import ApiError, error_response
from app.limits import BodySizeLimit, Limits
from app.metrics import ApiMetrics, RequestMetrics
from app.pressure import LatencyWindow, report_pressure
from app.reports import router as reports_router
from app.schemas import (
    ErrorBody,
    FeedbackRequest,
    FeedbackResponse,
    ForgettingResponse,
    ModelResponse,
    PredictRequest,
    PredictResponse,
    SnapshotInfo,
)
from app.serving import ModelHolder, ServedModel
from app.settings import Settings
from learner.classifier import Prediction
from learner.snapshots import open_snapshot_store
from streams.connection import connect
from streams.control import Control, learner_state
from streams.notify import read_counters, recent_evaluations
from streams.producer import BacklogFull, FeedbackProducer
from streams.records import FeedbackRecord, MalformedRecord

ERRORS = {status: {"model": ErrorBody} for status in (401, 403, 409, 413, 415, 422, 503)}
EMPTY_FORGETTING = {
    "model_version": None,
    "updates": None,
    "evaluated_at": None,
    "summary": {"mean_accuracy": None, "mean_forgetting": None, "max_forgetting": None, "bwt": None},
    "probes": [],
    "alarms": [],
}


def create_app(settings: Settings) -> FastAPI:
    """The API for one model, sharing Redis and the snapshot directory with its learner."""
    keys = settings.stream_keys()
    holder = ModelHolder(
        settings.model,
        open_snapshot_store(settings.snapshot_dir),
        open_snapshot_store(settings.published_dir, keep=2),
    )
    limits = Limits(settings.max_inputs, settings.max_examples, settings.max_text_chars)
    metrics = ApiMetrics()
    latencies = LatencyWindow()

    def classify(texts: list[str], top_k: int) -> tuple[ServedModel, list[Prediction]]:
        # The model is read once per batch, so every text of a batch is answered by the same version.
        served = holder.current
        if served is None or not served.classifier.labels:
            raise ApiError(409, "no_labels_yet", "no label has been learned yet: post feedback first")
        return served, served.predict(texts, top_k)

    batcher: PredictBatcher[ServedModel, Prediction] = PredictBatcher(
        classify,
        max_batch=settings.predict_max_batch,
        max_wait_s=settings.predict_max_wait_ms / 1000,
        on_batch=lambda size, _: metrics.batch_size.observe(size),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        torch.set_num_threads(settings.api_threads)
        app.state.redis = await asyncio.to_thread(connect, settings.redis_url, settings.data_dir)
        app.state.producer = FeedbackProducer(
            app.state.redis, keys, max_backlog=settings.max_backlog, limits=settings.record_limits()
        )
        app.state.control = Control(app.state.redis, keys)
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

    app = FastAPI(title="retentive", version=version("retentive"), lifespan=lifespan)
    app.state.api_keys = parse_api_keys(settings.api_key_entries())
    app.state.settings = settings
    app.state.keys = keys
    app.state.holder = holder
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=metrics)
    _install_error_handlers(app)
    app.include_router(admin_router)
    app.include_router(reports_router)
    app.include_router(dashboard_router)

    @app.get("/healthz", summary="The process is up")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Redis answers (the model may still be waiting for its first snapshot)")
    async def readyz(request: Request) -> JSONResponse:
        try:
            await asyncio.to_thread(request.app.state.redis.ping)
        except redis.RedisError as err:
            return error_response(503, "redis_unavailable", f"Redis does not answer: {err}")
        served = holder.current
        return JSONResponse({"status": "ready", "model_version": served.version if served else None})

    @app.post(
        "/v1/predict",
        response_model=PredictResponse,
        responses=ERRORS,
        dependencies=[Depends(require(Scope.PREDICT))],
        summary="Classify texts with the newest published weights",
    )
    async def predict(body: PredictRequest) -> PredictResponse:
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

    @app.post(
        "/v1/feedback",
        status_code=202,
        response_model=FeedbackResponse,
        responses=ERRORS,
        dependencies=[Depends(require(Scope.FEEDBACK))],
        summary="Add labelled examples to the learning stream, all or nothing",
    )
    async def feedback(body: FeedbackRequest, request: Request) -> FeedbackResponse:
        limits.check_examples(len(body.examples))
        records = [FeedbackRecord(**example.model_dump()) for example in body.examples]
        result = await run_in_threadpool(request.app.state.producer.add, records)
        metrics.feedback.labels("accepted").inc(result.accepted)
        metrics.feedback.labels("duplicate").inc(result.duplicates)
        return FeedbackResponse(
            accepted=result.accepted, duplicates=result.duplicates, stream_ids=result.stream_ids
        )

    @app.get(
        "/v1/forgetting",
        response_model=ForgettingResponse,
        responses=ERRORS,
        dependencies=[Depends(require(Scope.PREDICT))],
        summary="The latest evaluation of every probe set",
    )
    async def forgetting(request: Request) -> dict:
        latest = await run_in_threadpool(recent_evaluations, request.app.state.redis, keys, 1)
        return latest[0] if latest else EMPTY_FORGETTING

    @app.get(
        "/v1/model",
        response_model=ModelResponse,
        responses=ERRORS,
        dependencies=[Depends(require(Scope.PREDICT))],
        summary="What is served and what the learner has done",
    )
    async def model(request: Request) -> ModelResponse:
        client = request.app.state.redis
        counters = await run_in_threadpool(read_counters, client, keys)
        state = await run_in_threadpool(learner_state, client, keys)
        wanted = await run_in_threadpool(request.app.state.control.state)
        newest = await run_in_threadpool(holder.store.latest)
        served = holder.current
        return ModelResponse(
            model_version=served.version if served else None,
            snapshot_id=served.snapshot_id if served else None,
            base_model=settings.model,
            strategy=settings.strategy,
            labels=served.classifier.labels if served else [],
            counters={name: int(value) for name, value in counters.items() if value.isdigit()},
            stream_lag=await run_in_threadpool(request.app.state.producer.backlog),
            learner=state,
            paused_reason=wanted.paused,
            last_snapshot_at=newest.created_at if newest else None,
        )

    @app.get(
        "/v1/snapshots",
        response_model=list[SnapshotInfo],
        responses=ERRORS,
        dependencies=[Depends(require(Scope.PREDICT))],
        summary="Snapshots on disk, newest first",
    )
    async def snapshots() -> list[SnapshotInfo]:
        manifests = await run_in_threadpool(holder.store.list)
        return [
            SnapshotInfo(
                id=m.id,
                version=m.version,
                parent=m.parent,
                created_at=m.created_at,
                pinned=m.pinned,
                updates=m.info.get("updates"),
                mean_accuracy=m.info.get("mean_accuracy"),
                alarms=m.info.get("alarms"),
            )
            for m in manifests
        ]

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    async def prometheus(request: Request) -> Response:
        client = request.app.state.redis
        served = holder.current
        metrics.model_version.set(served.version if served else 0)
        try:
            metrics.stream_lag.set(await run_in_threadpool(request.app.state.producer.backlog))
            counters = await run_in_threadpool(read_counters, client, keys)
            metrics.observe_counters(counters)
            latest = await run_in_threadpool(recent_evaluations, client, keys, 1)
            metrics.observe_evaluation(latest[0] if latest else {})
        except redis.RedisError:
            pass  # serve what is known; the stream gauges keep their last values
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, err: ApiError) -> JSONResponse:
        return error_response(err.status, err.code, err.message, err.details)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, err: StarletteHTTPException) -> JSONResponse:
        if err.status_code == 400:
            # FastAPI's one 400: a body its JSON parser gave up on before any syntax error, i.e. invalid
            # UTF-8, nesting past the parser's recursion limit, or an integer of thousands of digits.
            message = (
                "body: the request body is not JSON this service can read (it must be UTF-8, nested "
                "less than a thousand levels deep, with no number of thousands of digits)"
            )
            return error_response(422, "invalid_request", message, [{"field": "body", "message": message}])
        return error_response(err.status_code, f"http_{err.status_code}", str(err.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, err: RequestValidationError) -> JSONResponse:
        about_body = any(e["loc"][:1] == ("body",) for e in err.errors())
        if about_body and not _is_json(request.headers.get("content-type")):
            message = "send the request body as JSON, with 'Content-Type: application/json'"
            return error_response(415, "unsupported_media_type", message)
        problems = [{"field": _location(e["loc"]), "message": e["msg"]} for e in err.errors()]
        message = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
        return error_response(422, "invalid_request", message, problems)

    @app.exception_handler(MalformedRecord)
    async def malformed(_: Request, err: MalformedRecord) -> JSONResponse:
        field = f"examples[{err.index}].{err.field}" if err.index is not None else str(err.field)
        return error_response(
            422, "invalid_request", f"{field}: {err.reason}", [{"field": field, "message": err.reason}]
        )

    @app.exception_handler(BacklogFull)
    async def backlog_full(_: Request, err: BacklogFull) -> JSONResponse:
        message = f"the learner is {err.backlog} entries behind (limit {err.limit}); retry later"
        response = error_response(503, "backlog_full", message)
        response.headers["Retry-After"] = str(err.retry_after_s)
        return response

    @app.exception_handler(Exception)
    async def unexpected(_: Request, err: Exception) -> JSONResponse:
        # The traceback goes to the log (Starlette re-raises after this); the client gets the error shape.
        return error_response(500, "internal_error", "the service failed on this request; see its log")

    @app.exception_handler(redis.RedisError)
    async def redis_down(_: Request, err: redis.RedisError) -> JSONResponse:
        response = error_response(503, "redis_unavailable", f"the feedback stream is unavailable: {err}")
        response.headers["Retry-After"] = "5"
        return response


def _is_json(content_type: str | None) -> bool:
    """Whether a Content-Type header names JSON (application/json or application/*+json)."""
    media = (content_type or "").partition(";")[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def _location(loc: tuple) -> str:
    parts = [str(p) for p in loc if p != "body"]
    text = ""
    for part in parts:
        text += f"[{part}]" if part.isdigit() else (f".{part}" if text else part)
    return text or "body"
