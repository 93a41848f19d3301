"""Per-key rate limits on feedback and predictions: 429 with Retry-After once a key used its minute.

The counts live in Redis (`streams.rate_limit`), so a key's budget is one budget over every replica. With
no API keys the service answers only its own machine, and nothing is limited.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials
from starlette.concurrency import run_in_threadpool

from app.auth import BEARER
from app.errors import ApiError
from app.settings import env_name


def rate_limit(bucket: str, setting: str) -> Callable[..., Awaitable[None]]:
    """Dependency: count the request against its key's budget of `setting` requests a minute."""

    async def check(
        request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]
    ) -> None:
        per_minute: int = getattr(request.app.state.settings, setting)
        if not per_minute or not request.app.state.api_keys or credentials is None:
            return
        limiter = request.app.state.rate_limiter
        wait = await run_in_threadpool(limiter.take, bucket, credentials.credentials, per_minute)
        if wait is not None:
            raise ApiError(
                429,
                "rate_limited",
                f"this API key made more than {per_minute} {bucket} requests this minute "
                f"({env_name(setting)}); retry in {wait} s",
                retry_after_s=wait,
            )

    return check
