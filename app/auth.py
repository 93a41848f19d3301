"""API keys with scopes, sent as `Authorization: Bearer KEY` and compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.errors import ApiError, is_json

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


LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
# Methods a cross-site HTML form can send; with JSON required they need a CORS preflight, which is refused.
_FORM_METHODS = {"POST", "PUT", "PATCH"}


def require(scope: Scope) -> Callable[..., Awaitable[None]]:
    """Dependency: 401 without a known key, 403 when the key lacks `scope`.

    With no key configured the API is open, so it answers only requests addressed to a loopback host (a web
    page that rebinds its own domain to 127.0.0.1 sends its own name as Host) and takes state-changing
    requests only as JSON (which no cross-site form can send).
    """

    # Async, though it waits for nothing: FastAPI runs a sync dependency in a worker thread, a hop that
    # costs more than the check itself on every request.
    async def check(
        request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]
    ) -> None:
        keys: dict[str, frozenset[Scope]] = request.app.state.api_keys
        if not keys:
            _check_loopback_request(request)
            return
        granted = find_scopes(keys, credentials.credentials) if credentials else None
        if granted is None:
            raise ApiError(401, "unauthorized", "send a valid API key as 'Authorization: Bearer KEY'")
        if scope not in granted:
            raise ApiError(403, "forbidden", f"this API key lacks the '{scope}' scope")

    return check


def _check_loopback_request(request: Request) -> None:
    host = urlsplit(f"//{request.headers.get('host', '')}").hostname or ""
    # Bound to another address with --insecure, the operator chose to serve other names without keys.
    if request.app.state.settings.host in LOOPBACK_HOSTS and host not in LOOPBACK_HOSTS:
        raise ApiError(
            403,
            "forbidden",
            "with no API keys this service answers only requests addressed to 127.0.0.1, localhost or "
            f"[::1], not {host or 'a missing Host'}; set RETENTIVE_API_KEYS to serve other names",
        )
    if request.method in _FORM_METHODS and not is_json(request.headers.get("content-type")):
        raise ApiError(
            415,
            "unsupported_media_type",
            "send 'Content-Type: application/json' (a body of {} when there is nothing to say): with no API "
            "keys, state-changing requests are taken only as JSON, which no other web page can send",
        )


def find_scopes(keys: dict[str, frozenset[Scope]], presented: str) -> frozenset[Scope] | None:
    """The scopes of the key presented, or None; every key is compared, each as a sha256 digest, so the time
    taken reveals neither which key matched, nor how much of one, nor how long the keys are."""
    offered = hashlib.sha256(presented.encode()).digest()
    found = None
    for key, scopes in keys.items():
        if hmac.compare_digest(hashlib.sha256(key.encode()).digest(), offered):
            found = scopes
    return found
