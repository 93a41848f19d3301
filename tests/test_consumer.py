import threading
import time

import pytest
import redis

from bench.service import eventually
from streams.consumer import GROUP, Entry, FeedbackConsumer, stream_id_key
from streams.keys import StreamKeys
from streams.producer import FeedbackProducer
from streams.records import FeedbackRecord


@pytest.fixture
def keys(key_prefix: str) -> StreamKeys:
    return StreamKeys(prefix=key_prefix, model="m")


def add(client: redis.Redis, keys: StreamKeys, count: int, start: int = 0) -> list[str]:
    records = [FeedbackRecord(text=f"text {i}", label=f"label {i % 3}") for i in range(start, start + count)]
    return FeedbackProducer(client, keys).add(records).stream_ids


def ids(entries: list[Entry]) -> list[str]:
    return [entry.stream_id for entry in entries]


def backlog(client: redis.Redis, keys: StreamKeys) -> int:
    return FeedbackProducer(client, keys).backlog()


def started(client: redis.Redis, keys: StreamKeys, name: str = "a", **kwargs: int) -> FeedbackConsumer:
    consumer = FeedbackConsumer(client, keys, name, **kwargs)
    consumer.ensure_group(None)
    return consumer


def dead_letters(client: redis.Redis, keys: StreamKeys) -> list[dict[bytes, bytes]]:
    return [fields for _, fields in client.xrange(keys.dead)]


def test_stream_ids_compare_as_numbers() -> None:
    assert stream_id_key("10-0") > stream_id_key("9-5")
    assert stream_id_key("5-10") > stream_id_key("5-9")
    assert stream_id_key("1700000000000-3") == (1700000000000, 3)
    assert stream_id_key("42") == (42, 0)
    assert sorted(["10-0", "9-5", "9-10", "100-0"], key=stream_id_key) == ["9-5", "9-10", "10-0", "100-0"]
    with pytest.raises(ValueError, match="not a stream ID"):
        stream_id_key("$")


def test_group_created_at_start_sees_earlier_entries(redis_client: redis.Redis, keys: StreamKeys) -> None:
    added = add(redis_client, keys, 3)
    consumer = started(redis_client, keys)
    consumer.ensure_group(None)  # an existing group is kept as it is

    entries = consumer.read(10, wait_s=0.1)

    assert ids(entries) == added
    assert [e.record.text for e in entries] == ["text 0", "text 1", "text 2"]
    assert {e.failures for e in entries} == {0}


def test_group_created_at_a_cursor_starts_after_it(redis_client: redis.Redis, keys: StreamKeys) -> None:
    added = add(redis_client, keys, 4)
    consumer = FeedbackConsumer(redis_client, keys, "a")
    consumer.ensure_group(added[1])
    assert ids(consumer.read(10, wait_s=0.1)) == added[2:]


def test_read_returns_a_partial_batch_after_the_wait(redis_client: redis.Redis, keys: StreamKeys) -> None:
    added = add(redis_client, keys, 2)
    consumer = started(redis_client, keys)

    entries = consumer.read(10, wait_s=0.3, block_ms=50)
    assert ids(entries) == added

    # With a partial batch in hand the read keeps waiting: an entry added meanwhile joins the batch.
    more = add(redis_client, keys, 2, start=2)
    late: list[str] = []

    def add_once_the_read_holds_the_first() -> None:
        eventually(lambda: consumer.pending() == 4, 30, "the read to hold a partial batch")
        late.extend(add(redis_client, keys, 1, start=4))

    adder = threading.Thread(target=add_once_the_read_holds_the_first)
    adder.start()
    entries = consumer.read(3, wait_s=60.0, block_ms=50)
    adder.join()
    assert ids(entries) == [*more, *late]


def test_read_returns_as_soon_as_the_batch_is_full(redis_client: redis.Redis, keys: StreamKeys) -> None:
    added = add(redis_client, keys, 5)
    consumer = started(redis_client, keys)
    wait_s = 60.0
    began = time.monotonic()
    assert ids(consumer.read(3, wait_s=wait_s)) == added[:3]
    assert time.monotonic() - began < wait_s, "a full batch does not wait out the wait"
    assert ids(consumer.read(3, wait_s=0.0)) == added[3:]


def test_read_collects_a_trickle_into_one_batch(redis_client: redis.Redis, keys: StreamKeys) -> None:
    consumer = started(redis_client, keys)
    added: list[str] = []

    def trickle() -> None:
        for i in range(3):
            time.sleep(0.1)
            added.extend(add(redis_client, keys, 1, start=i))

    producer = threading.Thread(target=trickle)
    producer.start()
    entries = consumer.read(3, wait_s=5.0, block_ms=50)
    producer.join()
    assert ids(entries) == added


def test_entries_stay_pending_until_acknowledged_through_the_cursor(
    redis_client: redis.Redis, keys: StreamKeys
) -> None:
    added = add(redis_client, keys, 5)
    consumer = started(redis_client, keys)
    consumer.read(5, wait_s=0.1)
    assert consumer.pending() == 5
    assert backlog(redis_client, keys) == 5

    assert consumer.ack_through(added[2]) == 3
    assert consumer.pending() == 2
    assert backlog(redis_client, keys) == 2
    assert consumer.ack_through(added[2]) == 0
    remaining = redis_client.xpending_range(keys.feedback, GROUP, "-", "+", 10)
    assert [row["message_id"].decode() for row in remaining] == added[3:]


def test_recover_takes_over_a_dead_consumers_entries_in_order(
    redis_client: redis.Redis, keys: StreamKeys
) -> None:
    added = add(redis_client, keys, 6)
    first = started(redis_client, keys, "first")
    other = started(redis_client, keys, "other")
    # Spread the pending entries over two consumers so that neither holds them all in order.
    first.read(2, wait_s=0.0)
    other.read(2, wait_s=0.0)
    first.read(2, wait_s=0.0)

    successor = FeedbackConsumer(redis_client, keys, "successor")
    successor.ensure_group(added[1])
    entries = successor.recover(added[1])

    assert ids(entries) == added[2:]
    assert {e.failures for e in entries} == {0}, "a dead consumer's entries failed nothing"
    assert successor.pending() == 4
    assert backlog(redis_client, keys) == 4
    owners = redis_client.xpending(keys.feedback, GROUP)["consumers"]
    assert owners == [{"name": b"successor", "pending": 4}]
    assert successor.read(10, wait_s=0.0) == []


def test_recover_without_a_cursor_returns_everything_pending(
    redis_client: redis.Redis, keys: StreamKeys
) -> None:
    added = add(redis_client, keys, 3)
    started(redis_client, keys, "first").read(3, wait_s=0.0)
    more = add(redis_client, keys, 2, start=3)

    successor = FeedbackConsumer(redis_client, keys, "successor")
    successor.ensure_group(None)
    assert ids(successor.recover(None)) == added
    assert ids(successor.read(10, wait_s=0.1)) == more


def test_recover_acknowledges_entries_deleted_while_pending(
    redis_client: redis.Redis, keys: StreamKeys
) -> None:
    added = add(redis_client, keys, 3)
    started(redis_client, keys, "first").read(3, wait_s=0.0)
    redis_client.xdel(keys.feedback, added[1])

    successor = FeedbackConsumer(redis_client, keys, "successor")
    successor.ensure_group(None)
    assert ids(successor.recover(None)) == [added[0], added[2]]
    assert successor.pending() == 2
    assert backlog(redis_client, keys) == 2


def test_vanished_group_is_recreated_from_the_last_cursor(
    redis_client: redis.Redis, keys: StreamKeys
) -> None:
    added = add(redis_client, keys, 4)
    consumer = started(redis_client, keys)
    consumer.read(4, wait_s=0.0)
    consumer.ack_through(added[1])
    redis_client.xgroup_destroy(keys.feedback, GROUP)
    more = add(redis_client, keys, 2, start=4)

    # Entries 2 and 3 come again from the new group but were already returned: they are not returned a
    # second time, only left pending so that the next ack_through settles them.
    assert ids(consumer.read(10, wait_s=0.2)) == more
    pending = redis_client.xpending_range(keys.feedback, GROUP, "-", "+", 10)
    assert [row["message_id"].decode() for row in pending] == added[2:] + more
    assert consumer.ack_through(more[-1]) == 4


def test_a_fresh_consumer_after_the_group_vanished_resumes_after_the_cursor(
    redis_client: redis.Redis, keys: StreamKeys
) -> None:
    added = add(redis_client, keys, 5)
    started(redis_client, keys).read(5, wait_s=0.0)
    redis_client.xgroup_destroy(keys.feedback, GROUP)

    restarted = FeedbackConsumer(redis_client, keys, "restarted")
    restarted.ensure_group(added[1])
    assert restarted.recover(added[1]) == []
    assert ids(restarted.read(10, wait_s=0.1)) == added[2:]


def test_malformed_entries_are_dead_lettered_and_acknowledged(
    redis_client: redis.Redis, keys: StreamKeys
) -> None:
    good = add(redis_client, keys, 1)
    garbage = redis_client.xadd(keys.feedback, {"foo": "bar"}).decode()
    bad_utf8 = redis_client.xadd(keys.feedback, {"v": "1", "text": b"caf\xe9", "label": "x"}).decode()
    # As if the producer had accepted them, so the backlog should come back to the good entries only.
    redis_client.incrby(keys.backlog, 2)
    good += add(redis_client, keys, 1, start=1)
    consumer = started(redis_client, keys)

    assert ids(consumer.read(10, wait_s=0.1)) == good

    letters = dead_letters(redis_client, keys)
    assert [letter[b"stream_id"].decode() for letter in letters] == [garbage, bad_utf8]
    assert letters[0][b"f.foo"] == b"bar"
    assert b"schema version" in letters[0][b"reason"]
    assert letters[1][b"f.text"] == b"caf\xe9"
    assert b"UTF-8" in letters[1][b"reason"]
    assert consumer.pending() == 2
    assert backlog(redis_client, keys) == 2
    assert redis_client.hget(keys.counters, "dead_lettered") == b"2"


def test_restarts_alone_never_dead_letter_an_entry(redis_client: redis.Redis, keys: StreamKeys) -> None:
    added = add(redis_client, keys, 5)
    started(redis_client, keys, "first", max_deliveries=2).read(5, wait_s=0.0)
    for restart in range(12):
        successor = FeedbackConsumer(redis_client, keys, f"restart-{restart}", max_deliveries=2)
        successor.ensure_group(None)
        entries = successor.recover(None)
        assert [(e.stream_id, e.failures) for e in entries] == [(i, 0) for i in added], restart
    assert dead_letters(redis_client, keys) == [] and successor.pending() == 5


def test_an_entry_the_learner_keeps_dying_on_is_dead_lettered_alone(
    redis_client: redis.Redis, keys: StreamKeys
) -> None:
    poison, innocent = add(redis_client, keys, 2)
    first = started(redis_client, keys, "crashed-1", max_deliveries=2)
    first.read(2, wait_s=0.0)
    first.applying([poison])  # and dies before applied()

    second = FeedbackConsumer(redis_client, keys, "crashed-2", max_deliveries=2)
    second.ensure_group(None)
    recovered = second.recover(None)
    assert [(e.stream_id, e.failures) for e in recovered] == [(poison, 1), (innocent, 0)]
    second.applying([innocent])
    second.applied()
    second.applying([poison])  # dies again

    third = FeedbackConsumer(redis_client, keys, "third", max_deliveries=2)
    third.ensure_group(None)
    assert [(e.stream_id, e.failures) for e in third.recover(None)] == [(innocent, 0)]
    [letter] = dead_letters(redis_client, keys)
    assert letter[b"stream_id"].decode() == poison
    assert b"died applying it 2 times" in letter[b"reason"] and letter[b"f.text"] == b"text 0"
    assert third.pending() == 1 and backlog(redis_client, keys) == 1
    assert redis_client.hgetall(keys.failures) == {}, "a settled entry's count is dropped"


def test_acknowledging_drops_the_failure_counts_it_settles(
    redis_client: redis.Redis, keys: StreamKeys
) -> None:
    added = add(redis_client, keys, 3)
    first = started(redis_client, keys, "crashed", max_deliveries=5)
    first.read(3, wait_s=0.0)
    first.applying(added)
    successor = FeedbackConsumer(redis_client, keys, "successor", max_deliveries=5)
    successor.ensure_group(None)
    assert {e.failures for e in successor.recover(None)} == {1}
    successor.ack_through(added[1])
    assert redis_client.hgetall(keys.failures) == {added[2].encode(): b"1"}


def test_caller_can_dead_letter_an_entry(redis_client: redis.Redis, keys: StreamKeys) -> None:
    add(redis_client, keys, 2)
    consumer = started(redis_client, keys)
    first, _ = consumer.read(2, wait_s=0.0)
    consumer.dead_letter(first, "label cap reached")
    [letter] = dead_letters(redis_client, keys)
    assert (letter[b"reason"], letter[b"f.label"]) == (b"label cap reached", b"label 0")
    assert consumer.pending() == 1
    assert backlog(redis_client, keys) == 1


def test_trim_keeps_the_retention_and_every_pending_entry(
    redis_client: redis.Redis, keys: StreamKeys
) -> None:
    added = add(redis_client, keys, 10)
    consumer = started(redis_client, keys)
    consumer.read(10, wait_s=0.0)
    consumer.ack_through(added[3])

    # Retention alone would keep only 7 and 8 below the cursor, but 4 onwards are still pending.
    assert consumer.trim(added[8], retention=2) == 4
    assert [i.decode() for i, _ in redis_client.xrange(keys.feedback)] == added[4:]

    consumer.ack_through(added[8])
    assert consumer.trim(added[8], retention=2) == 3
    assert [i.decode() for i, _ in redis_client.xrange(keys.feedback)] == added[7:]
    assert consumer.trim(added[8], retention=2) == 0

    consumer.ack_through(added[9])
    assert consumer.trim(added[9], retention=0) == 3
    assert redis_client.xlen(keys.feedback) == 0


def test_pending_is_zero_without_a_group(redis_client: redis.Redis, keys: StreamKeys) -> None:
    consumer = FeedbackConsumer(redis_client, keys, "a")
    assert consumer.pending() == 0
    consumer.ensure_group(None)
    assert consumer.pending() == 0
