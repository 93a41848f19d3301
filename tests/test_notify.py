import json
import time

import redis

from streams.keys import StreamKeys
from streams.notify import (
    latest_version,
    probe_figures,
    publish_version,
    read_counters,
    read_keep_rates,
    recent_evaluations,
    recent_versions,
    record_evaluation,
    set_counters,
    set_keep_rates,
    subscribe_versions,
)


def test_latest_version_round_trips(redis_client: redis.Redis, key_prefix: str) -> None:
    keys = StreamKeys(prefix=key_prefix, model="m")
    assert latest_version(redis_client, keys) is None
    publish_version(redis_client, keys, 3, "snap-0003")
    publish_version(redis_client, keys, 4, "snap-0004", kind="rollback")
    assert latest_version(redis_client, keys) == (4, "snap-0004")


def test_evaluations_are_bounded_and_newest_first(redis_client: redis.Redis, key_prefix: str) -> None:
    keys = StreamKeys(prefix=key_prefix, model="m")
    for step in range(5):
        figures = {f"p{index}": {"accuracy": step / 10} for index in range(5 - step)}
        record_evaluation(redis_client, keys, {"step": step, "accuracy": step / 10}, figures, keep=3)
    assert recent_evaluations(redis_client, keys) == [
        {"step": 4, "accuracy": 0.4},
        {"step": 3, "accuracy": 0.3},
        {"step": 2, "accuracy": 0.2},
    ]
    assert [e["step"] for e in recent_evaluations(redis_client, keys, limit=2)] == [4, 3]
    # The figures are replaced whole: a probe gone since the last evaluation is gone from them too.
    assert probe_figures(redis_client, keys) == {"p0": {"accuracy": 0.4}}
    assert probe_figures(redis_client, keys, ["p0", "p3"]) == {"p0": {"accuracy": 0.4}}
    assert probe_figures(redis_client, keys, []) == {}


def test_counters_round_trip_as_text(redis_client: redis.Redis, key_prefix: str) -> None:
    keys = StreamKeys(prefix=key_prefix, model="m")
    set_counters(redis_client, keys, {"applied": 12, "loss": 0.25, "state": "learning"})
    set_counters(redis_client, keys, {"applied": 13})
    set_counters(redis_client, keys, {})
    assert read_counters(redis_client, keys) == {"applied": "13", "loss": "0.25", "state": "learning"}


def test_subscriber_receives_the_published_version(redis_client: redis.Redis, key_prefix: str) -> None:
    keys = StreamKeys(prefix=key_prefix, model="m")
    pubsub = subscribe_versions(redis_client, keys)
    try:
        publish_version(redis_client, keys, 7, "snap-0007")
        message = None
        deadline = time.monotonic() + 5
        while message is None and time.monotonic() < deadline:
            message = pubsub.get_message(timeout=0.1)
        assert message is not None
        payload = json.loads(message["data"])
        assert (payload["version"], payload["snapshot_id"], payload["kind"]) == (7, "snap-0007", "snapshot")
    finally:
        pubsub.close()


def test_the_version_log_keeps_the_newest_announcements_with_their_rollbacks(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    keys = StreamKeys(prefix=key_prefix, model="m")
    assert recent_versions(redis_client, keys) == []
    for version in range(1, 5):
        publish_version(redis_client, keys, version, f"snap-{version}", keep=3)
    publish_version(redis_client, keys, 5, "snap-5", kind="weights", rolled_back_to="snap-2", keep=3)
    log = recent_versions(redis_client, keys)
    assert [(e["version"], e["kind"], e["rolled_back_to"]) for e in log] == [
        (5, "weights", "snap-2"),
        (4, "snapshot", None),
        (3, "snapshot", None),
    ]
    assert log[0]["published_at"] >= log[1]["published_at"]
    assert [e["version"] for e in recent_versions(redis_client, keys, limit=1)] == [5]


def test_keep_rates_keep_the_layer_order_and_are_replaced_whole(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    keys = StreamKeys(prefix=key_prefix, model="m")
    assert read_keep_rates(redis_client, keys) == {}
    layers = {f"layer.{i}.{part}": 0.3 + i / 100 for i in (10, 2, 1) for part in ("query", "key")}
    set_keep_rates(redis_client, keys, layers)
    assert list(read_keep_rates(redis_client, keys).items()) == list(layers.items())
    set_keep_rates(redis_client, keys, {"layer.0.query": 1.0})
    assert read_keep_rates(redis_client, keys) == {"layer.0.query": 1.0}
    set_keep_rates(redis_client, keys, {})
    assert read_keep_rates(redis_client, keys) == {}
