"""The dead-letter stream as operators see it: what went there and why, and putting entries back.

Each dead letter holds the entry's original fields (prefixed `f.`), its original stream ID and the reason.
Requeueing adds the entry to the feedback stream again through the producer (so the backlog limit holds),
after clearing its `id`'s deduplication key, which would otherwise answer "duplicate" for seven days. The
dead letter itself stays, marked as requeued (`StreamKeys.requeued`): recovery reads it to know that the
original entry was settled, and must never apply that one as well. An entry that is still malformed stays
as it is, with the reason.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import redis

from streams.keys import StreamKeys
from streams.producer import FeedbackProducer
from streams.records import FeedbackRecord, MalformedRecord
from streams.replies import as_text

_FIELD_PREFIX = "f."


@dataclass(frozen=True)
class DeadLetter:
    """One dead letter: its ID in the dead-letter stream, the entry's original ID, why, and its fields as
    stored (bytes that may not even be UTF-8, which is sometimes the reason)."""

    dead_id: str
    stream_id: str
    reason: str
    fields: dict[str, bytes]

    def readable_fields(self) -> dict[str, str]:
        return {name: value.decode("utf-8", "replace") for name, value in self.fields.items()}


@dataclass
class Requeued:
    """Dead letters put back (dead-letter ID to new stream ID) and those that could not be (ID to reason)."""

    requeued: dict[str, str] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)


def list_dead_letters(client: redis.Redis, keys: StreamKeys, limit: int | None = None) -> list[DeadLetter]:
    """The oldest `limit` dead letters not yet requeued (all when None), oldest first."""
    requeued = {as_text(dead_id) for dead_id in client.hkeys(keys.requeued)}
    letters = [_letter(dead_id, values) for dead_id, values in client.xrange(keys.dead)]
    return [letter for letter in letters if letter.dead_id not in requeued][:limit]


def requeue(
    client: redis.Redis, keys: StreamKeys, producer: FeedbackProducer, dead_ids: Iterable[str] | None
) -> Requeued:
    """Put the named dead letters (every one when `dead_ids` is None) back on the feedback stream."""
    letters = {letter.dead_id: letter for letter in list_dead_letters(client, keys)}
    wanted = list(letters) if dead_ids is None else list(dict.fromkeys(dead_ids))
    outcome = Requeued()
    for dead_id in wanted:
        letter = letters.get(dead_id)
        if letter is None:
            earlier = client.hget(keys.requeued, dead_id)
            outcome.refused[dead_id] = (
                f"already requeued as {as_text(earlier)}" if earlier else "no such dead letter"
            )
            continue
        try:
            record = FeedbackRecord.from_fields(letter.fields, producer.limits)
        except MalformedRecord as err:
            outcome.refused[dead_id] = f"still malformed: {err}"
            continue
        if record.id is not None:
            client.delete(keys.dedup(record.id))
        [stream_id] = producer.add([record]).stream_ids
        client.hset(keys.requeued, dead_id, stream_id)
        outcome.requeued[dead_id] = stream_id
    return outcome


def _letter(dead_id: bytes | str, values: dict[bytes, bytes]) -> DeadLetter:
    named = {as_text(name): value for name, value in values.items()}
    original = {
        name.removeprefix(_FIELD_PREFIX): value
        for name, value in named.items()
        if name.startswith(_FIELD_PREFIX)
    }
    return DeadLetter(
        as_text(dead_id),
        named.get("stream_id", b"").decode(),
        named.get("reason", b"").decode("utf-8", "replace"),
        original,
    )
