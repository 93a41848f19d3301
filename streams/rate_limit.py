"""Request budgets per client, shared by every replica: a count per one-minute window, kept in Redis."""

from __future__ import annotations

import math
import time

import redis

from streams.keys import StreamKeys

WINDOW_S = 60


class RateLimiter:
    """Counts requests per (bucket, client) in fixed one-minute windows; each window's key expires."""

    def __init__(self, client: redis.Redis, keys: StreamKeys) -> None:
        self.client = client
        self.keys = keys

    def take(self, bucket: str, who: str, per_minute: int, now: float | None = None) -> int | None:
        """Count one request of `who` in `bucket`: None while within `per_minute`, else the seconds until
        the window ends and requests are taken again."""
        now = time.time() if now is None else now
        window = int(now // WINDOW_S)
        key = self.keys.rate(bucket, who, window)
        pipe = self.client.pipeline(transaction=False)
        pipe.incr(key)
        pipe.expire(key, 2 * WINDOW_S)
        count, _ = pipe.execute()
        if count <= per_minute:
            return None
        return max(1, math.ceil((window + 1) * WINDOW_S - now))
