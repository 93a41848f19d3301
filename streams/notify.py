"""What the learner tells the rest of the system: new model versions, evaluations and counters.

A version is announced on a pub/sub channel and also kept in the counters hash, because pub/sub delivers
only to subscribers connected at that moment: a replica that was down or reconnecting checks
`latest_version` instead. The newest announcements are also kept in a bounded list, the model's version log.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import redis
import redis.client

from streams.keys import StreamKeys
from streams.replies import as_text


def publish_version(
    client: redis.Redis,
    keys: StreamKeys,
    version: int,
    snapshot_id: str,
    kind: str = "snapshot",
    rolled_back_to: str | None = None,
    keep: int = 500,
) -> None:
    """Record `version` as the latest, log it and announce it to subscribers of `keys.versions`.

    `rolled_back_to` names the snapshot this version's weights were rolled back to, if they were.
    """
    message = json.dumps(
        {
            "version": version,
            "snapshot_id": snapshot_id,
            "kind": kind,
            "published_at": time.time(),
            "rolled_back_to": rolled_back_to,
        }
    )
    # The hash and the log are written first, so a subscriber that reacts to the message by reading the
    # latest version never sees an older one; the message goes after, as Redis Cluster runs no PUBLISH
    # inside a transaction.
    pipe = client.pipeline(transaction=True)
    pipe.hset(keys.counters, mapping={"version": version, "snapshot_id": snapshot_id})
    pipe.lpush(keys.version_log, message)
    pipe.ltrim(keys.version_log, 0, keep - 1)
    pipe.execute()
    client.publish(keys.versions, message)


def recent_versions(client: redis.Redis, keys: StreamKeys, limit: int = 100) -> list[dict[str, Any]]:
    """Up to `limit` version announcements, newest first, as `publish_version` wrote them."""
    if limit < 1:
        return []
    return [json.loads(item) for item in client.lrange(keys.version_log, 0, limit - 1)]


def latest_version(client: redis.Redis, keys: StreamKeys) -> tuple[int, str] | None:
    """The last published (version, snapshot_id), or None if nothing was published yet."""
    version, snapshot_id = client.hmget(keys.counters, ["version", "snapshot_id"])
    if version is None or snapshot_id is None:
        return None
    return int(version), as_text(snapshot_id)


def record_evaluation(
    client: redis.Redis,
    keys: StreamKeys,
    evaluation: Mapping[str, Any],
    figures: Mapping[str, Mapping[str, Any]],
    keep: int = 200,
) -> None:
    """Add one evaluation (a compact JSON-serialisable column; none when empty), keeping the newest
    `keep`, and replace every probe's current `figures` (by probe name) in the same transaction.

    The two are kept apart so that an evaluation stays small however many probes exist: the list holds
    what each evaluation scored, the hash what is known of each probe now.
    """
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    pipe = client.pipeline(transaction=True)
    if evaluation:
        pipe.lpush(keys.evals, json.dumps(evaluation, separators=(",", ":")))
        pipe.ltrim(keys.evals, 0, keep - 1)
    pipe.delete(keys.probe_figures)
    if figures:
        pipe.hset(keys.probe_figures, mapping={name: json.dumps(item) for name, item in figures.items()})
    pipe.execute()


def recent_evaluations(client: redis.Redis, keys: StreamKeys, limit: int = 50) -> list[dict[str, Any]]:
    """Up to `limit` evaluations, newest first."""
    if limit < 1:
        return []
    return [json.loads(item) for item in client.lrange(keys.evals, 0, limit - 1)]


def probe_figures(
    client: redis.Redis, keys: StreamKeys, names: list[str] | None = None
) -> dict[str, dict[str, Any]]:
    """The current figures of the named probes that have them (of every probe when `names` is None)."""
    if names is None:
        stored = client.hgetall(keys.probe_figures).items()
    elif names:
        stored = zip(names, client.hmget(keys.probe_figures, names), strict=True)
    else:
        return {}
    return {as_text(name): json.loads(raw) for name, raw in stored if raw is not None}


def set_counters(client: redis.Redis, keys: StreamKeys, values: Mapping[str, int | float | str]) -> None:
    """Overwrite the given fields of the counters hash; other fields are left alone."""
    if values:
        client.hset(keys.counters, mapping=dict(values))


def read_counters(client: redis.Redis, keys: StreamKeys) -> dict[str, str]:
    """Every field of the counters hash, as text."""
    return {as_text(field): as_text(value) for field, value in client.hgetall(keys.counters).items()}


def set_keep_rates(client: redis.Redis, keys: StreamKeys, rates: Mapping[str, float]) -> None:
    """Replace the per-layer keep-rates with `rates` (layer name to share of rows kept); empty clears them.

    They are kept as one JSON list of [layer, rate] pairs, so the layers keep the model's order.
    """
    if rates:
        client.set(keys.keep_rates, json.dumps(list(rates.items())))
    else:
        client.delete(keys.keep_rates)


def read_keep_rates(client: redis.Redis, keys: StreamKeys) -> dict[str, float]:
    """The keep-rate of every gated layer at the learner's last published step, in model order."""
    stored = client.get(keys.keep_rates)
    return {} if stored is None else {layer: float(rate) for layer, rate in json.loads(stored)}


def set_prequential(client: redis.Redis, keys: StreamKeys, report: Mapping[str, Any]) -> None:
    """Replace the learner's prequential accuracy report."""
    client.set(keys.prequential, json.dumps(report))


def read_prequential(client: redis.Redis, keys: StreamKeys) -> dict[str, Any] | None:
    """The learner's last prequential accuracy report, or None before it wrote one."""
    stored = client.get(keys.prequential)
    return None if stored is None else json.loads(stored)


def set_held_back(client: redis.Redis, keys: StreamKeys, status: Mapping[str, Any] | None) -> None:
    """Say why the newest weights failed their promotion check, or (None) that they passed."""
    if status is None:
        client.delete(keys.held_back)
    else:
        client.set(keys.held_back, json.dumps(status))


def read_held_back(client: redis.Redis, keys: StreamKeys) -> dict[str, Any] | None:
    """Why the newest weights are held back from serving, or None when they are not."""
    stored = client.get(keys.held_back)
    return None if stored is None else json.loads(stored)


def subscribe_versions(client: redis.Redis, keys: StreamKeys) -> redis.client.PubSub:
    """A PubSub subscribed to version announcements; each message's data is the JSON from `publish_version`.

    Subscription confirmations are filtered out, so `get_message()` yields only announcements. Close it
    when done.
    """
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(keys.versions)
    return pubsub
