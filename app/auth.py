"""API keys with scopes, sent as `Authorization: Bearer KEY` and compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.errors import ApiError

# Declared so the OpenAPI schema tells clients how to authenticate; the check itself is `require`'s.
BEARER = HTTPBearer(
    auto_error=False, description="An API key from RETENTIVE_API_KEYS, with the route's scope."
)


class Scope(StrEnum):
    PREDICT = "predict"
    FEEDBACK = "feedback"
    ADMIN = "admin"


def read_key_file(path: Path) -> str:
    """A key file's entries (one per line, `#` starts a comment), joined as `parse_api_keys` reads them."""
    try:
        lines = path.expanduser().read_text().splitlines()
    except OSError as err:
        raise ValueError(f"cannot read the key file {path}: {err.strerror}") from None
    return ";".join(line.partition("#")[0].strip() for line in lines)


def parse_api_keys(raw: str) -> dict[str, frozenset[Scope]]:
    """`KEY:SCOPE[,SCOPE...]` entries separated by `;`; `admin` implies every scope."""
    keys: dict[str, frozenset[Scope]] = {}
    for number, entry in enumerate(part.strip() for part in raw.split(";")):
        if not entry:
            continue
        key, sep, scopes = entry.partition(":")
        if not sep or not key.strip():
            raise ValueError(f"entry {number + 1} must look like KEY:SCOPE[,SCOPE...]")
        try:
            granted = frozenset(Scope(s.strip()) for s in scopes.split(",") if s.strip())
        except ValueError:
            raise ValueError(f"entry {number + 1}: scopes are {', '.join(Scope)}") from None
        if not granted:
            raise ValueError(f"entry {number + 1} names no scope")
        keys[key.strip()] = frozenset(Scope) if Scope.ADMIN in granted else granted
    return keys


def require(scope: Scope) -> Callable[..., Awaitable[None]]:
    """Dependency: 401 without a known key, 403 when the key lacks `scope`; open when no key is configured."""

    # Async, though it waits for nothing: FastAPI runs a sync dependency in a worker thread, a hop that
    # costs more than the check itself on every request.
    async def check(
        request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]
    ) -> None:
        keys: dict[str, frozenset[Scope]] = request.app.state.api_keys
        if not keys:
            return
        granted = find_scopes(keys, credentials.credentials) if credentials else None
        if granted is None:
            raise ApiError(401, "unauthorized", "send a valid API key as 'Authorization: Bearer KEY'")
        if scope not in granted:
            raise ApiError(403, "forbidden", f"this API key lacks the '{scope}' scope")

    return check


def find_scopes(keys: dict[str, frozenset[Scope]], presented: str) -> frozenset[Scope] | None:
    """The scopes of the key presented, or None; every key is compared, each as a sha256 digest, so the time
    taken reveals neither which key matched, nor how much of one, nor how long the keys are."""
    offered = hashlib.sha256(presented.encode()).digest()
    found = None
    for key, scopes in keys.items():
        if hmac.compare_digest(hashlib.sha256(key.encode()).digest(), offered):
            found = scopes
    return found
