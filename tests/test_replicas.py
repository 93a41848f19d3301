"""Scale-out: one `retentive learn` and two `retentive serve --no-learner` replicas on one Redis and one data
directory. New versions and rollbacks reach both replicas."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from bench.service import QUICK_LEARNER, eventually, learner_and_replicas
from streams.connection import connect
from streams.keys import StreamKeys
from streams.notify import latest_version
from tests.conftest import TEST_REDIS_URL
from tests.test_api import ADMIN, LABELS, call, examples


@dataclass
class Cluster:
    replicas: list[str]
    client: redis.Redis
    keys: StreamKeys

    def served_versions(self) -> list[int | None]:
        return [call(base, "GET", "/v1/model").json()["model_version"] for base in self.replicas]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Cluster]:
    data_dir = tmp_path_factory.mktemp("cluster")
    name = f"rt-test-{uuid.uuid4().hex[:12]}"
    with learner_and_replicas(
        data_dir,
        2,
        model=tiny_model_dir,
        redis_url=TEST_REDIS_URL,
        key_prefix=name,
        model_name=name,
        api_keys=f"{ADMIN}:admin",
        **QUICK_LEARNER,
        snapshot_keep=50,
    ) as replicas:
        client = connect(TEST_REDIS_URL, data_dir)
        try:
            yield Cluster(replicas, client, StreamKeys(name, name))
        finally:
            client.close()


def both_reach_the_announced(cluster: Cluster) -> int:
    """Wait until both replicas serve the newest announced version, and return it. The announcement is read
    at each check: a snapshot whose write was in flight when the learner paused is announced a moment
    later, and replicas that poll the store may load it first."""
    began = time.monotonic()
    seen: list[tuple[int | None, list[int | None]]] = []

    def both_at_the_announced() -> bool:
        announced = latest_version(cluster.client, cluster.keys)
        seen.append((announced[0] if announced else None, cluster.served_versions()))
        return seen[-1][0] is not None and seen[-1][1] == [seen[-1][0]] * 2

    try:
        eventually(both_at_the_announced, 60, "both replicas at the announced version")
    except AssertionError as err:
        raise AssertionError(f"{err}; announced and served at the last check: {seen[-1]}") from None
    version = seen[-1][0]
    print(f"both replicas served version {version} within {time.monotonic() - began:.2f} s")
    return version


def test_both_replicas_serve_each_new_version_and_a_rollback(cluster: Cluster) -> None:
    first, second = cluster.replicas
    assert call(first, "POST", "/v1/feedback", json={"examples": examples(10)}).status_code == 202
    eventually(
        lambda: call(second, "POST", "/v1/predict", json={"inputs": ["x"]}).status_code == 200,
        60,
        "the second replica to serve a model fed through the first",
    )
    counters = lambda: call(first, "GET", "/v1/model").json()["counters"]  # noqa: E731
    eventually(
        lambda: counters().get("applied", 0) + counters().get("held_out", 0) == 30, 60, "every example"
    )

    paused = call(second, "POST", "/v1/learner/pause")
    assert paused.status_code == 200 and paused.json()["paused_reason"]
    eventually(
        lambda: call(first, "GET", "/v1/model").json()["learner"] == "paused", 30, "the learner to pause"
    )
    served = both_reach_the_announced(cluster)

    oldest = call(first, "GET", "/v1/snapshots").json()[-1]
    rollback = call(first, "POST", f"/v1/snapshots/{oldest['id']}/rollback", json={"replay": False})
    assert rollback.status_code == 202, rollback.text
    eventually(lambda: latest_version(cluster.client, cluster.keys)[0] > served, 30, "the rollback snapshot")
    rolled_back = both_reach_the_announced(cluster)
    query = {"inputs": list(LABELS.values()), "top_k": 3}
    answers = [call(base, "POST", "/v1/predict", json=query).json() for base in cluster.replicas]
    assert answers[0]["model_version"] == answers[1]["model_version"] == rolled_back
    assert [p["top"] for p in answers[0]["predictions"]] == [p["top"] for p in answers[1]["predictions"]]

    resumed = call(first, "POST", "/v1/learner/resume")
    assert resumed.status_code == 200 and resumed.json()["paused_reason"] is None


def test_a_rollback_to_an_unknown_snapshot_is_refused(cluster: Cluster) -> None:
    missing = call(cluster.replicas[0], "POST", "/v1/snapshots/00009999-aaaaaaaaaaaa/rollback")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "snapshot_not_found"
    garbage = call(cluster.replicas[0], "POST", "/v1/snapshots/not-an-id/rollback")
    assert garbage.status_code == 404
    assert httpx.get(f"{cluster.replicas[1]}/healthz").status_code == 200
