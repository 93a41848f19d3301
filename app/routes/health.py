"""Liveness and readiness, for load balancers and orchestrators; no key needed."""

from __future__ import annotations

import asyncio
import logging

import redis
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.deps import HolderDep, RedisDep, SettingsDep
from app.errors import error_response

router = APIRouter()
log = logging.getLogger("retentive.api")


@router.get("/healthz", summary="The process is up")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Redis answers and the served version is not too far behind the newest (the model may still be "
    "waiting for its first snapshot)",
)
async def readyz(client: RedisDep, holder: HolderDep, settings: SettingsDep) -> JSONResponse:
    try:
        await asyncio.to_thread(client.ping)
    except redis.RedisError:
        # The driver's message can name hosts and users; it goes to the log, not to unauthenticated callers.
        log.warning("readyz: redis unavailable", exc_info=True)
        return error_response(503, "redis_unavailable", "redis unavailable")
    stale = holder.staleness(settings.replica_max_lag_versions, settings.replica_max_lag_s)
    if stale is not None:
        return error_response(503, "stale", f"this replica is {stale}; see its log for why it cannot load it")
    served = holder.current
    return JSONResponse({"status": "ready", "model_version": served.version if served else None})
