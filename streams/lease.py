"""A lease in Redis that lets one learner at a time consume a model's feedback.

The lease is a key holding the holder's name with a time to live. Whoever holds it renews it well before it
expires; a standby polls until the key is gone and takes it. Expiry alone cannot stop a holder that was
paused (GC, swap, a stopped container) from waking up and writing after another process took over, so
fencing is the caller's job: immediately before making any effect durable (writing a snapshot, publishing a
version) it calls `renew()` and stops without writing if that returns False.

Holder names must be unique per process (host, pid and a random suffix, say): two processes sharing a
name would both believe they hold the lease.
"""

from __future__ import annotations

import logging
import threading
import time

import redis

from streams.replies import as_text

log = logging.getLogger(__name__)

# Extend the expiry only while the key still names this holder, so a late renewal cannot steal the lease back.
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""

_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
end
return 0
"""

_TRANSIENT = (redis.ConnectionError, redis.TimeoutError)


class Lease:
    """The right to learn for one model, held by `holder` under `key` for `ttl_ms` at a time."""

    def __init__(self, client: redis.Redis, key: str, holder: str, ttl_ms: int = 10_000) -> None:
        if ttl_ms <= 0:
            raise ValueError(f"lease ttl must be positive, got {ttl_ms} ms")
        if not holder:
            raise ValueError("lease holder must be a non-empty name")
        self.client = client
        self.key = key
        self.holder = holder
        self.ttl_ms = ttl_ms
        # Set once the lease is known to be lost (or can no longer be proven held); cleared by acquire.
        self.lost = threading.Event()
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    def acquire(self) -> bool:
        """Take the lease if nobody holds it. False when it is held, by anyone, including this holder."""
        acquired = bool(self.client.set(self.key, self.holder, nx=True, px=self.ttl_ms))
        if acquired:
            self.lost.clear()
        return acquired

    def renew(self) -> bool:
        """Extend the lease by a full ttl. False means it was lost: the caller must stop writing."""
        return bool(self._renew(keys=[self.key], args=[self.holder, self.ttl_ms]))

    def release(self) -> None:
        """Give the lease up so a standby takes over at once; does nothing if another holder has it."""
        self._release(keys=[self.key], args=[self.holder])

    def holder_now(self) -> str | None:
        """Who holds the lease at this moment, or None."""
        value = self.client.get(self.key)
        if value is None:
            return None
        return as_text(value)

    def wait_for(self, stop: threading.Event, poll_s: float | None = None) -> bool:
        """Stand by until the lease is acquired (True) or `stop` is set (False).

        Polls every `poll_s` seconds (a quarter of the ttl by default). A Redis outage while standing by is
        logged and waited out rather than raised, since a standby has nothing to lose by waiting.
        """
        interval = self.ttl_ms / 4000 if poll_s is None else poll_s
        while not stop.is_set():
            try:
                if self.acquire():
                    return True
            except _TRANSIENT as err:
                log.warning("lease %s: Redis unavailable while standing by: %s", self.key, err)
            if stop.wait(interval):
                break
        return False

    def keep_alive(self, stop: threading.Event) -> threading.Thread:
        """Start a daemon thread that renews the lease every ttl/3 until `stop` is set.

        When a renewal says the lease is gone, or Redis has not confirmed it for a whole ttl (so another
        process may have taken it), `lost` is set and the thread ends. Set `stop` before `release()`.
        """
        thread = threading.Thread(
            target=self._renew_until, args=(stop,), name=f"lease-{self.key}", daemon=True
        )
        thread.start()
        return thread

    def _renew_until(self, stop: threading.Event) -> None:
        interval_s = self.ttl_ms / 3000
        # Measured from before the request went out, so the estimate of the expiry is never late.
        confirmed_at = time.monotonic()
        while not stop.wait(interval_s):
            asked_at = time.monotonic()
            try:
                held = self.renew()
            except redis.RedisError as err:
                log.warning("lease %s: renewal failed: %s", self.key, err)
                if time.monotonic() - confirmed_at >= self.ttl_ms / 1000:
                    log.error("lease %s: not confirmed for a whole ttl, treating it as lost", self.key)
                    self.lost.set()
                    return
                continue
            if not held:
                log.error("lease %s: lost, another holder has it or it expired", self.key)
                self.lost.set()
                return
            confirmed_at = asked_at
