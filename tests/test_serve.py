"""`retentive serve` as a real uvicorn process on the default model and the embedded Redis."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.services import serving


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    with serving(tmp_path) as (base, _):
        yield base


def test_serve_starts_with_embedded_redis_and_reports_ready(served: str, tmp_path: Path) -> None:
    assert httpx.get(f"{served}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{served}/readyz").json()
    assert ready["status"] == "ready"
    assert (tmp_path / "redis" / "appendonly.aof").exists()
