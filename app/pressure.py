"""How busy this API replica is, reported to learners so they can back off while predictions suffer.

Latency alone is no sign of contention: a request of 64 texts is naturally slower than a request of one.
Each request's latency is compared with the fastest this replica has answered a request of about the same
size (its texts rounded up to a power of two): the replica's own unloaded figure. The report carries the 95th
percentile of that slowdown over the requests of the last `WINDOW_S` seconds, and the texts waiting now. A
window that no request reached reports no slowdown, so pressure ends as soon as the requests stop.
"""

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
    """Slowdowns of the predict requests of the last `WINDOW_S` seconds, against this replica's fastest."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._samples: deque[tuple[float, float]] = deque()
        self._fastest: dict[int, float] = {}

    def record(self, seconds: float, texts: int) -> None:
        size = max(texts - 1, 0).bit_length()
        fastest = min(self._fastest.get(size, seconds), seconds)
        self._fastest[size] = fastest
        self._samples.append((self._clock(), seconds / max(fastest, 1e-9)))

    def slowdown(self) -> float:
        """95th percentile of recent requests' latency over the fastest of their size; 1.0 with none."""
        cutoff = self._clock() - WINDOW_S
        while self._samples and self._samples[0][0] < cutoff:
            self._samples.popleft()
        if not self._samples:
            return 1.0
        ordered = sorted(slowdown for _, slowdown in self._samples)
        return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


async def report_pressure(
    client: redis.Redis, keys: StreamKeys, latencies: LatencyWindow, queue_depth: Callable[[], int]
) -> None:
    """Every second, until cancelled, write this replica's queue depth and recent slowdown."""
    name = f"{socket.gethostname()}-{os.getpid()}"
    while True:
        report = {"queue": queue_depth(), "slowdown": round(latencies.slowdown(), 2)}
        # Without a report the learner simply does not back off.
        with contextlib.suppress(redis.RedisError):
            await asyncio.to_thread(beat, client, keys.pressure, name, report, 3 * REPORT_EVERY_S)
        await asyncio.sleep(REPORT_EVERY_S)
