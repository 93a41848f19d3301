"""Request limits from the settings: body size (413), and counts and lengths (422 naming the field).

Counts and lengths are checked here rather than in the schemas, because the schemas are fixed at import
time and the limits are settings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import NoReturn

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import ApiError
from streams.records import text_characters_problem


@dataclass(frozen=True)
class Limits:
    max_inputs: int
    max_examples: int
    max_text_chars: int

    def check_inputs(self, inputs: list[str]) -> None:
        """Refuse a predict request with too many texts, or a text too long or holding unusable characters."""
        _check_count("inputs", len(inputs), self.max_inputs, "RETENTIVE_MAX_INPUTS")
        for index, text in enumerate(inputs):
            field = f"inputs[{index}]"
            if len(text) > self.max_text_chars:
                _refuse(field, f"at most {self.max_text_chars} characters, got {len(text)}")
            problem = text_characters_problem(text)
            if problem:
                _refuse(field, problem)

    def check_examples(self, count: int) -> None:
        _check_count("examples", count, self.max_examples, "RETENTIVE_MAX_EXAMPLES")


def _check_count(field: str, count: int, most: int, setting: str) -> None:
    if count > most:
        split = "split them into several requests"
        _refuse(field, f"at most {most} per request ({setting}), got {count}: {split}")


def _refuse(field: str, message: str) -> NoReturn:
    raise ApiError(422, "invalid_request", f"{field}: {message}", [{"field": field, "message": message}])


class _BodyTooLargeError(Exception):
    """Raised from inside `receive` to abandon a body that passed the limit."""


class BodySizeLimit:
    """ASGI middleware: a body over `max_bytes` is refused with 413 before any route sees it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        received = 0
        too_large = refused = False

        async def counting_receive() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    too_large = True
                    raise _BodyTooLargeError
            return message

        async def guarded_send(message: Message) -> None:
            # The route's body parser may turn our exception into its own error response; once the body
            # is known to be too large, that response is replaced by the 413.
            nonlocal refused
            if not too_large:
                await send(message)
            elif not refused:
                refused = True
                await self._refuse(send)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except _BodyTooLargeError:
            if not refused:
                await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps(
            {
                "error": {
                    "code": "body_too_large",
                    "message": f"the request body is over {self.max_bytes} bytes (RETENTIVE_MAX_BODY_BYTES)",
                    "details": {"max_bytes": self.max_bytes},
                }
            }
        ).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})
