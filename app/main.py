"""FastAPI application factory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis
import torch
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from app.settings import Settings
from learner.encoder import load_encoder
from streams.connection import connect


def create_app(settings: Settings) -> FastAPI:
    """The API, holding the encoder for inference and a Redis client for the stream."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        torch.set_num_threads(settings.api_threads)
        app.state.redis = await asyncio.to_thread(connect, settings.redis_url, settings.data_dir)
        app.state.tokenizer, app.state.encoder = await asyncio.to_thread(load_encoder, settings.model)
        app.state.encoder.eval()
        yield
        app.state.redis.close()

    app = FastAPI(title="retentive", version=_version(), lifespan=lifespan)

    @app.get("/healthz", summary="The process is up")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="The model is loaded and Redis answers")
    async def readyz() -> JSONResponse:
        try:
            await asyncio.to_thread(app.state.redis.ping)
        except redis.RedisError as err:
            return _error(503, "redis_unavailable", f"Redis does not answer: {err}")
        return JSONResponse({"status": "ready", "model": settings.model})

    return app


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, "details": None}}, status_code=status)


def _version() -> str:
    from importlib.metadata import version

    return version("retentive")
