"""The one error shape of the API: `{"error": {"code", "message", "details"}}`, the statuses every route
documents with it, and the handlers that render every failure that way."""

from __future__ import annotations

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.batching import PredictTimeout, QueueFull
from app.schemas import ErrorBody
from streams.producer import BacklogFull
from streams.records import MalformedRecord

# What any route may answer besides its success: one table, documented on every router.
ERRORS = {status: {"model": ErrorBody} for status in (401, 403, 404, 409, 413, 415, 422, 429, 503)}


class ApiError(Exception):
    """An error a client caused or can act on; raised anywhere, rendered by one handler."""

    def __init__(
        self, status: int, code: str, message: str, details: object = None, retry_after_s: int | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details
        self.retry_after_s = retry_after_s


def error_response(
    status: int, code: str, message: str, details: object = None, retry_after_s: int | None = None
) -> JSONResponse:
    headers = {"Retry-After": str(retry_after_s)} if retry_after_s is not None else None
    body = {"error": {"code": code, "message": message, "details": details}}
    return JSONResponse(body, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Render every failure, expected or not, in the one error shape."""

    @app.exception_handler(ApiError)
    async def api_error(_: Request, err: ApiError) -> JSONResponse:
        return error_response(err.status, err.code, err.message, err.details, err.retry_after_s)

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
        if about_body and not is_json(request.headers.get("content-type")):
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

    async def busy(_: Request, err: Exception) -> JSONResponse:
        full = isinstance(err, QueueFull)
        setting = "RETENTIVE_PREDICT_MAX_QUEUE" if full else "RETENTIVE_PREDICT_TIMEOUT_S"
        return error_response(503, "busy", f"the service is busy: {err} ({setting})", retry_after_s=1)

    app.add_exception_handler(QueueFull, busy)
    app.add_exception_handler(PredictTimeout, busy)

    @app.exception_handler(BacklogFull)
    async def backlog_full(_: Request, err: BacklogFull) -> JSONResponse:
        message = f"the learner is {err.backlog} entries behind (limit {err.limit}); retry later"
        if err.unit == "bytes":
            message = (
                f"the feedback stream holds {err.backlog} bytes (limit {err.limit}, "
                "RETENTIVE_MAX_STREAM_BYTES); retry once the learner has caught up"
            )
        return error_response(503, "backlog_full", message, retry_after_s=err.retry_after_s)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, err: Exception) -> JSONResponse:
        # The traceback goes to the log (Starlette re-raises after this); the client gets the error shape.
        return error_response(500, "internal_error", "the service failed on this request; see its log")

    @app.exception_handler(redis.RedisError)
    async def redis_down(_: Request, err: redis.RedisError) -> JSONResponse:
        response = error_response(503, "redis_unavailable", f"the feedback stream is unavailable: {err}")
        response.headers["Retry-After"] = "5"
        return response


def is_json(content_type: str | None) -> bool:
    """Whether a Content-Type header names JSON (application/json or application/*+json)."""
    media = (content_type or "").partition(";")[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def _location(loc: tuple) -> str:
    parts = [str(p) for p in loc if p != "body"]
    text = ""
    for part in parts:
        text += f"[{part}]" if part.isdigit() else (f".{part}" if text else part)
    return text or "body"
