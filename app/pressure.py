"""How busy this API replica is, reported to learners so they can back off while predictions queue up."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections import deque
from collections.abc import Callable

import redis

from streams.heartbeats import beat
from streams.keys import StreamKeys

WINDOW_S = 5.0
REPORT_EVERY_S = 1.0


class LatencyWindow:
    """Predict latencies of the last `WINDOW_S` seconds."""

    def __init__(self) -> None:
        self._samples: deque[tuple[float, float]] = deque()

    def record(self, seconds: float) -> None:
        self._samples.append((time.monotonic(), seconds))

    def p95_ms(self) -> float:
        cutoff = time.monotonic() - WINDOW_S
        while self._samples and self._samples[0][0] < cutoff:
            self._samples.popleft()
        if not self._samples:
            return 0.0
        ordered = sorted(seconds for _, seconds in self._samples)
        return 1000 * ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


async def report_pressure(
    client: redis.Redis, keys: StreamKeys, latencies: LatencyWindow, queue_depth: Callable[[], int]
) -> None:
    """Every second, until cancelled, write this replica's queue depth and p95 predict latency."""
    name = f"{socket.gethostname()}-{os.getpid()}"
    while True:
        report = {"queue": queue_depth(), "p95_ms": round(latencies.p95_ms(), 1)}
        # Without a report the learner simply does not back off.
        with contextlib.suppress(redis.RedisError):
            await asyncio.to_thread(beat, client, keys.pressure, name, report, 3 * REPORT_EVERY_S)
        await asyncio.sleep(REPORT_EVERY_S)
