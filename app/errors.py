"""The one error shape of the API: `{"error": {"code", "message", "details"}}`."""

from __future__ import annotations

from fastapi.responses import JSONResponse


class ApiError(Exception):
    """An error a client caused or can act on; raised anywhere, rendered by one handler."""

    def __init__(self, status: int, code: str, message: str, details: object = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details


def error_response(status: int, code: str, message: str, details: object = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, "details": details}}, status_code=status)
