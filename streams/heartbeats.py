"""Heartbeats: processes say they are alive, and what state they are in, in a Redis hash.

Each field is a process name; its value is a JSON report with an expiry. A process that dies stops
beating and drops out once its last beat expires. Learners beat into `keys.learners` (their state), API
replicas into `keys.pressure` (their prediction queue and latency). Expiry uses each writer's wall clock,
so hosts sharing one Redis are assumed to keep their clocks in sync (NTP).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from streams.replies import as_text

log = logging.getLogger("retentive.heartbeats")


def beat(client: redis.Redis, key: str, name: str, report: dict[str, Any], ttl_s: float) -> None:
    """Record `report` for `name`, valid for `ttl_s` seconds."""
    client.hset(key, name, json.dumps({**report, "expires_at": time.time() + ttl_s}))


def alive(client: redis.Redis, key: str) -> dict[str, dict[str, Any]]:
    """The unexpired report of every process, by name; expired ones are removed on the way."""
    now = time.time()
    reports, expired = {}, []
    for raw_name, raw in client.hgetall(key).items():
        name = as_text(raw_name)
        try:
            report = json.loads(raw)
            fresh = float(report.pop("expires_at")) > now
        except (ValueError, KeyError, TypeError):
            fresh = False
        if fresh:
            reports[name] = report
        else:
            expired.append(name)
    if expired:
        client.hdel(key, *expired)
    return reports


def leave(client: redis.Redis, key: str, name: str) -> None:
    """Remove `name` at once, e.g. on a clean shutdown."""
    client.hdel(key, name)


def keep_beating(
    client: redis.Redis,
    key: str,
    name: str,
    report: Callable[[], dict[str, Any]],
    stop: threading.Event,
    every_s: float,
) -> threading.Thread:
    """Beat every `every_s` seconds (each beat valid for three periods) until `stop` is set, then leave."""

    def run() -> None:
        while not stop.is_set():
            try:
                beat(client, key, name, report(), ttl_s=3 * every_s)
            except redis.RedisError as err:
                log.warning("heartbeat of %s not written: %s", name, err)
            stop.wait(every_s)
        # If Redis is away the entry simply expires.
        with contextlib.suppress(redis.RedisError):
            leave(client, key, name)

    thread = threading.Thread(target=run, name=f"heartbeat-{name}", daemon=True)
    thread.start()
    return thread
