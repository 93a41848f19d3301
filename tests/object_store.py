"""A real S3 API on loopback: moto's server mode in a process of its own, spoken to over HTTP."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx

from bench.service import eventually, free_port

BUCKET = "retentive-snapshots"


def s3_environment(endpoint: str) -> dict[str, str]:
    """What a process needs to reach the S3 API at `endpoint` through s3fs (botocore reads each)."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def _answers(endpoint: str) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(endpoint, timeout=2).status_code < 500
    return False


@contextlib.contextmanager
def s3_server(log: Path) -> Iterator[str]:
    """moto's S3 server with the bucket `BUCKET` made; its endpoint URL until the block ends."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["moto_server", "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        eventually(lambda: _answers(endpoint), 60, "the S3 API to answer")
        assert httpx.put(f"{endpoint}/{BUCKET}").status_code == 200
        yield endpoint
    finally:
        process.kill()
        process.wait(timeout=10)
