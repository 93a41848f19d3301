import threading
import time

import redis

from bench.service import eventually
from streams.keys import StreamKeys
from streams.lease import Lease


def _leases(client: redis.Redis, prefix: str, ttl_ms: int = 300) -> tuple[Lease, Lease]:
    key = StreamKeys(prefix=prefix, model="m").lease
    return Lease(client, key, "first", ttl_ms=ttl_ms), Lease(client, key, "second", ttl_ms=ttl_ms)


def test_second_holder_cannot_acquire_a_held_lease(redis_client: redis.Redis, key_prefix: str) -> None:
    first, second = _leases(redis_client, key_prefix, ttl_ms=10_000)
    assert first.acquire()
    assert not second.acquire()
    assert second.holder_now() == "first"


def test_lease_passes_to_the_standby_after_expiry(redis_client: redis.Redis, key_prefix: str) -> None:
    first, second = _leases(redis_client, key_prefix)
    assert first.acquire()
    eventually(lambda: first.holder_now() is None, 30, "the lease to expire")
    assert second.acquire()
    assert not first.renew()
    assert second.holder_now() == "second"


def test_only_the_holder_releases(redis_client: redis.Redis, key_prefix: str) -> None:
    first, second = _leases(redis_client, key_prefix, ttl_ms=10_000)
    assert first.acquire()
    second.release()
    assert first.holder_now() == "first"
    first.release()
    assert first.holder_now() is None
    assert second.acquire()


def test_keep_alive_holds_the_lease_past_its_ttl(redis_client: redis.Redis, key_prefix: str) -> None:
    first, second = _leases(redis_client, key_prefix, ttl_ms=2000)
    stop = threading.Event()
    assert first.acquire()
    thread = first.keep_alive(stop)
    renewals, last_ttl = [0], [redis_client.pttl(first.key)]

    def renewed_past_the_ttl() -> bool:
        # A renewal shows as the time to live jumping back up; three of them span a whole ttl.
        ttl = redis_client.pttl(first.key)
        renewals[0] += ttl > last_ttl[0]
        last_ttl[0] = ttl
        return renewals[0] >= 3

    try:
        eventually(renewed_past_the_ttl, 60, "three renewals of the lease", every=0.05)
        assert first.holder_now() == "first"
        assert not second.acquire()
        assert not first.lost.is_set()
    finally:
        stop.set()
        thread.join(timeout=2)
    assert not thread.is_alive()
    first.release()
    assert second.acquire()


def test_keep_alive_reports_a_lost_lease(redis_client: redis.Redis, key_prefix: str) -> None:
    first, second = _leases(redis_client, key_prefix)
    stop = threading.Event()
    assert first.acquire()
    thread = first.keep_alive(stop)
    try:
        redis_client.delete(first.key)
        assert second.acquire()
        assert first.lost.wait(timeout=2)
    finally:
        stop.set()
        thread.join(timeout=2)
    assert second.holder_now() == "second"


def test_standby_waits_until_the_lease_is_free(redis_client: redis.Redis, key_prefix: str) -> None:
    first, second = _leases(redis_client, key_prefix, ttl_ms=10_000)
    assert first.acquire()
    stop = threading.Event()
    result: list[bool] = []
    standby = threading.Thread(target=lambda: result.append(second.wait_for(stop, poll_s=0.02)))
    standby.start()
    time.sleep(0.1)
    assert standby.is_alive()
    first.release()
    standby.join(timeout=2)
    assert result == [True]
    assert second.holder_now() == "second"


def test_standby_gives_up_when_stopped(redis_client: redis.Redis, key_prefix: str) -> None:
    first, second = _leases(redis_client, key_prefix, ttl_ms=10_000)
    assert first.acquire()
    stop = threading.Event()
    stop.set()
    assert not second.wait_for(stop, poll_s=0.02)
    assert first.holder_now() == "first"
