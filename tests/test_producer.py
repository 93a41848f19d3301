import dataclasses
import time

import pytest
import redis

from bench.service import eventually
from streams.keys import StreamKeys
from streams.producer import AddResult, BacklogFull, FeedbackProducer
from streams.rate_limit import RateLimiter
from streams.records import FeedbackRecord, MalformedRecord
from streams.replies import as_text
from tests.conftest import RedisTarget


@pytest.fixture
def keys(key_prefix: str) -> StreamKeys:
    return StreamKeys(prefix=key_prefix, model="m")


def stored(client: redis.Redis, keys: StreamKeys) -> list[tuple[str, FeedbackRecord]]:
    return [
        (stream_id.decode(), FeedbackRecord.from_fields(fields))
        for stream_id, fields in client.xrange(keys.feedback)
    ]


def counters(client: redis.Redis, keys: StreamKeys) -> dict[str, int]:
    return {name.decode(): int(value) for name, value in client.hgetall(keys.counters).items()}


def test_add_returns_ids_in_order_and_stores_the_records(redis_client: redis.Redis, keys: StreamKeys) -> None:
    producer = FeedbackProducer(redis_client, keys)
    records = [
        FeedbackRecord(text="first ✓", label="a", id="one", slice="s1", prediction_id="p1"),
        FeedbackRecord(text="second", label="b", received_at=1234.5),
        FeedbackRecord(text="third", label="a", id="three"),
    ]
    before = time.time()
    result = producer.add(records)
    after = time.time()

    assert (result.accepted, result.duplicates) == (3, 0)
    entries = stored(redis_client, keys)
    assert [stream_id for stream_id, _ in entries] == result.stream_ids
    read = [record for _, record in entries]
    assert read[1] == records[1]
    for sent, got in zip(records[::2], read[::2], strict=True):
        assert before <= got.received_at <= after
        assert got == dataclasses.replace(sent, received_at=got.received_at)
    assert producer.backlog() == 3
    assert counters(redis_client, keys) == {"accepted": 3}


def test_one_bad_record_writes_nothing(redis_client: redis.Redis, keys: StreamKeys) -> None:
    producer = FeedbackProducer(redis_client, keys)
    good = FeedbackRecord(text="fine", label="a", id="good")
    with pytest.raises(MalformedRecord) as caught:
        producer.add([good, good, FeedbackRecord(text="fine", label="")])
    assert (caught.value.index, caught.value.field) == (2, "label")
    assert str(caught.value) == "record 2: label: must not be empty"
    assert redis_client.xlen(keys.feedback) == 0
    assert producer.backlog() == 0
    assert not redis_client.exists(keys.dedup("good"), keys.counters)


def test_repeated_ids_return_the_first_entry_and_add_nothing(
    redis_client: redis.Redis, keys: StreamKeys
) -> None:
    producer = FeedbackProducer(redis_client, keys)
    first = producer.add([FeedbackRecord(text="x", label="a", id="k1")])

    again = producer.add(
        [
            FeedbackRecord(text="other text", label="b", id="k1"),
            FeedbackRecord(text="y", label="a", id="k2"),
            FeedbackRecord(text="no id", label="a"),
            FeedbackRecord(text="y again", label="c", id="k2"),
            FeedbackRecord(text="no id", label="a"),
        ]
    )
    k1 = first.stream_ids[0]
    k2, no_id, other_no_id = again.stream_ids[1], again.stream_ids[2], again.stream_ids[4]
    assert again == AddResult(stream_ids=[k1, k2, no_id, k2, other_no_id], accepted=3, duplicates=2)
    assert len({k1, k2, no_id, other_no_id}) == 4

    entries = stored(redis_client, keys)
    assert [(stream_id, record.text) for stream_id, record in entries] == [
        (k1, "x"),
        (k2, "y"),
        (no_id, "no id"),
        (other_no_id, "no id"),
    ]
    assert producer.backlog() == 4
    assert counters(redis_client, keys) == {"accepted": 4, "duplicates": 2}
    assert redis_client.get(keys.dedup("k1")) == k1.encode()


def test_full_backlog_refuses_the_whole_request_until_acknowledged(
    redis_client: redis.Redis, keys: StreamKeys
) -> None:
    producer = FeedbackProducer(redis_client, keys, max_backlog=3)
    producer.add([FeedbackRecord(text="a", label="a", id="a"), FeedbackRecord(text="b", label="b")])

    with pytest.raises(BacklogFull) as caught:
        producer.add([FeedbackRecord(text="c", label="c", id="c"), FeedbackRecord(text="d", label="d")])
    assert (caught.value.backlog, caught.value.limit) == (2, 3)
    assert 5 <= caught.value.retry_after_s <= 60
    assert redis_client.xlen(keys.feedback) == 2
    assert producer.backlog() == 2
    assert not redis_client.exists(keys.dedup("c"))
    assert counters(redis_client, keys) == {"accepted": 2}

    # A retry of what was already accepted adds nothing, so it is answered even when the backlog is full.
    producer.add([FeedbackRecord(text="e", label="e")])
    assert producer.add([FeedbackRecord(text="a", label="a", id="a")]).duplicates == 1

    producer.acknowledged(2)
    assert producer.backlog() == 1
    result = producer.add([FeedbackRecord(text="c", label="c", id="c"), FeedbackRecord(text="d", label="d")])
    assert result.accepted == 2
    assert producer.backlog() == 3


def test_acknowledged_never_takes_the_backlog_below_zero(redis_client: redis.Redis, keys: StreamKeys) -> None:
    producer = FeedbackProducer(redis_client, keys)
    producer.acknowledged(5)
    assert producer.backlog() == 0
    producer.add([FeedbackRecord(text="a", label="a")])
    producer.acknowledged(0)
    assert producer.backlog() == 1
    producer.acknowledged(10)
    assert producer.backlog() == 0
    with pytest.raises(ValueError, match="negative"):
        producer.acknowledged(-1)


def test_retry_after_grows_with_the_overshoot() -> None:
    barely = BacklogFull(backlog=100, limit=100, requested=1)
    far = BacklogFull(backlog=100, limit=100, requested=1000)
    assert barely.retry_after_s == 6
    assert far.retry_after_s == 60
    assert "retry after 6 s" in str(barely)


def test_dedup_memory_expires(redis_client: redis.Redis, keys: StreamKeys) -> None:
    producer = FeedbackProducer(redis_client, keys, dedup_ttl_s=1)
    first = producer.add([FeedbackRecord(text="x", label="a", id="once")])
    assert producer.add([FeedbackRecord(text="x", label="a", id="once")]).duplicates == 1
    eventually(lambda: not redis_client.exists(keys.dedup("once")), 30, "the id's dedup key to expire")
    again = producer.add([FeedbackRecord(text="x", label="a", id="once")])
    assert again.accepted == 1
    assert again.stream_ids != first.stream_ids


def test_script_survives_a_script_flush(
    redis_client: redis.Redis, redis_target: RedisTarget, keys: StreamKeys
) -> None:
    if redis_target.name != "embedded":
        pytest.skip("SCRIPT FLUSH would reach every user of a shared server")
    producer = FeedbackProducer(redis_client, keys)
    producer.add([FeedbackRecord(text="x", label="a")])
    redis_client.script_flush()
    assert producer.add([FeedbackRecord(text="y", label="a")]).accepted == 1
    producer.acknowledged(1)
    assert producer.backlog() == 1


def test_empty_request_touches_nothing(redis_client: redis.Redis, keys: StreamKeys) -> None:
    assert FeedbackProducer(redis_client, keys).add([]) == AddResult(stream_ids=[], accepted=0, duplicates=0)
    assert not redis_client.exists(keys.feedback, keys.backlog, keys.counters)


@pytest.mark.parametrize("options", [{"max_backlog": 0}, {"dedup_ttl_s": 0}])
def test_nonsense_settings_are_refused(
    redis_client: redis.Redis, keys: StreamKeys, options: dict[str, int]
) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        FeedbackProducer(redis_client, keys, **options)


def test_a_stream_past_its_byte_limit_refuses_the_whole_request(
    redis_client: redis.Redis, keys: StreamKeys
) -> None:
    producer = FeedbackProducer(redis_client, keys, max_stream_bytes=64 * 1024)
    long_text = "a review that goes on " * 450  # about 10,000 characters
    accepted = 0
    with pytest.raises(BacklogFull) as caught:
        while True:
            producer.add([FeedbackRecord(text=f"{accepted} {long_text}", label="long")])
            accepted += 1
    # The limit holds to within one request: the stream stopped growing near 64 KB, not at the entry limit.
    assert 3 <= accepted <= 8, accepted
    assert caught.value.unit == "bytes" and caught.value.limit == 64 * 1024
    assert "bytes" in str(caught.value) and 5 <= caught.value.retry_after_s <= 60
    assert redis_client.xlen(keys.feedback) == accepted
    assert counters(redis_client, keys) == {"accepted": accepted}


def test_a_rate_budget_holds_per_client_and_window(redis_client: redis.Redis, keys: StreamKeys) -> None:
    limiter = RateLimiter(redis_client, keys)
    start = 600 * 60 + 45.5  # 14.5 s before a window ends
    assert [limiter.take("feedback", "key-a", 2, now=start) for _ in range(2)] == [None, None]
    assert limiter.take("feedback", "key-a", 2, now=start) == 15
    assert limiter.take("feedback", "key-b", 2, now=start) is None
    assert limiter.take("predict", "key-a", 2, now=start) is None
    assert limiter.take("feedback", "key-a", 2, now=start + 15) is None  # the next window
    stored = [as_text(key) for key in redis_client.scan_iter(match=f"{keys.prefix}*:rate:*")]
    assert stored and not any("key-a" in key for key in stored)  # an API key is never stored as itself
