"""Shared fixtures: a tiny model, and Redis both embedded and at RETENTIVE_TEST_REDIS_URL."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from bench.data import data_dir
from bench.service import save_tiny_model
from learner.encoder import Encoder, tiny_bert
from streams.connection import connect, stop_embedded
from tests.learners import LearnerHarness, learner_harness

TEST_REDIS_URL = os.environ.get("RETENTIVE_TEST_REDIS_URL", "")


@dataclass(frozen=True)
class RedisTarget:
    """Where a test's Redis lives: `url` empty means the embedded server under `data_dir`."""

    name: str
    url: str
    data_dir: Path


@pytest.fixture(scope="session")
def tiny_encoder() -> Encoder:
    return tiny_bert(seed=0)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model saved as a model directory, for processes started by a test."""
    directory = tmp_path_factory.mktemp("tiny-model")
    save_tiny_model(directory)
    return directory


@pytest.fixture(scope="session")
def embedded_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    data_dir = tmp_path_factory.mktemp("embedded")
    yield data_dir
    stop_embedded(data_dir)


@pytest.fixture(params=["embedded", "url"])
def redis_target(request: pytest.FixtureRequest, embedded_data_dir: Path) -> RedisTarget:
    if request.param == "url":
        if not TEST_REDIS_URL:
            pytest.skip("RETENTIVE_TEST_REDIS_URL is not set")
        return RedisTarget("url", TEST_REDIS_URL, embedded_data_dir)
    return RedisTarget("embedded", "", embedded_data_dir)


@pytest.fixture
def key_prefix() -> str:
    """A prefix of this test's own, since the Redis server may be shared."""
    return f"rt-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def redis_client(redis_target: RedisTarget, key_prefix: str) -> Iterator[redis.Redis]:
    client = connect(redis_target.url, redis_target.data_dir)
    yield client
    for key in client.scan_iter(match=f"{key_prefix}*", count=500):
        client.delete(key)
    client.close()


@pytest.fixture(scope="session")
def cl_stream_dir() -> Path:
    """The benchmark data (RETENTIVE_BENCH_DATA): missing, it fails the run under CI and skips elsewhere."""
    where = data_dir()
    if not (where / "manifest.json").is_file():
        message = f"benchmark data not found: expected {where}/manifest.json; set RETENTIVE_BENCH_DATA"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return where


@pytest.fixture
def harness(
    redis_target: RedisTarget,
    redis_client: redis.Redis,
    key_prefix: str,
    tmp_path: Path,
    tiny_model_dir: Path,
) -> LearnerHarness:
    """`retentive learn` processes of a model of this test's own (see tests/learners.py)."""
    return learner_harness(redis_target, redis_client, key_prefix, tmp_path, tiny_model_dir)
