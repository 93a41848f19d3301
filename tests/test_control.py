"""Operator requests and heartbeats in Redis: what the API writes is what the learner reads back."""

from __future__ import annotations

import threading
import time

import redis

from bench.service import eventually
from streams.control import Control, learner_state
from streams.heartbeats import alive, beat, keep_beating
from streams.keys import StreamKeys


def keys_for(prefix: str) -> StreamKeys:
    return StreamKeys(prefix, "m")


def test_pause_and_resume_are_state_that_survives_any_reader(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    control = Control(redis_client, keys_for(key_prefix))
    assert control.state().paused is None
    assert control.resume() is False
    control.pause("paused by an operator")
    assert Control(redis_client, keys_for(key_prefix)).state().paused == "paused by an operator"
    assert control.resume() is True
    assert control.state().paused is None


def test_a_newer_rollback_request_is_not_cleared_by_finishing_an_older_one(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    control = Control(redis_client, keys_for(key_prefix))
    first = control.request_rollback("00000003-aaaaaaaaaaaa", replay=False)
    time.sleep(0.01)
    second = control.request_rollback("00000005-bbbbbbbbbbbb", replay=True)
    control.finish_rollback(first)
    assert control.state().rollback == second
    control.finish_rollback(second)
    assert control.state().rollback is None


def test_probe_changes_bump_the_revision_the_learner_watches(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    control = Control(redis_client, keys_for(key_prefix))
    before = control.state().probes_revision
    control.put_probe("golden", [("a cat", "animal"), ("a car", "vehicle")])
    assert control.state().probes_revision == before + 1
    assert control.probes() == {"golden": [("a cat", "animal"), ("a car", "vehicle")]}
    assert control.delete_probe("golden") is True
    assert control.state().probes_revision == before + 2
    assert control.delete_probe("golden") is False
    assert control.probes() == {}
    assert control.state().probes_revision == before + 2, "deleting nothing must change nothing"


def test_heartbeats_expire_and_a_stopped_beater_leaves(redis_client: redis.Redis, key_prefix: str) -> None:
    key = f"{key_prefix}:beats"
    beat(redis_client, key, "gone", {"state": "running"}, ttl_s=0.05)
    stop = threading.Event()
    thread = keep_beating(redis_client, key, "here", lambda: {"state": "standby"}, stop, every_s=0.05)
    eventually(lambda: "gone" not in alive(redis_client, key), 30, "the silent process's beat to expire")
    assert alive(redis_client, key) == {"here": {"state": "standby"}}
    assert redis_client.hexists(key, "gone") == 0
    stop.set()
    thread.join(timeout=5)
    assert alive(redis_client, key) == {}


def test_learner_state_combines_the_lease_and_the_heartbeats(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    keys = keys_for(key_prefix)
    assert learner_state(redis_client, keys) == "absent"
    beat(redis_client, keys.learners, "standby-1", {"state": "standby"}, ttl_s=30)
    assert learner_state(redis_client, keys) == "standby"
    redis_client.set(keys.lease, "active-1", px=30_000)
    assert learner_state(redis_client, keys) == "running"
    beat(redis_client, keys.learners, "active-1", {"state": "paused"}, ttl_s=30)
    assert learner_state(redis_client, keys) == "paused"
