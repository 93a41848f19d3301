"""The learner's side of the feedback stream: one consumer of the group `learners`.

Delivery is at least once; the caller makes it exactly once in effect. Entries come back in ID order and
are not acknowledged when read: the caller applies them, writes a snapshot whose cursor is the last ID it
applied, and only then calls `ack_through(cursor)`. After a crash, `recover(cursor)` hands back whatever was
delivered but never acknowledged, except what the snapshot already holds.

Call order at start (holding the lease, so no other consumer is alive): `ensure_group(cursor)`, then
`recover(cursor)`, then `read` in a loop. After each durable snapshot: `ack_through(cursor)`, then
`trim(cursor, retention)`.

Entries that cannot be used (malformed fields, or entries whose application failed `max_deliveries` times
because they keep crashing the learner) go to the dead-letter stream with the reason and are acknowledged at
once, so bad data never stops the learner.

A failure is counted against an entry only when the learner died while applying it: the caller marks each
micro-batch with `applying(ids)` before it learns from it and `applied()` after, and `recover` counts one
failure against every entry of a batch still marked. Restarts, lost leases and snapshots that failed count
nothing, however many there are (Redis's own delivery count grows with every claim, so it cannot tell).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import redis

from streams.keys import StreamKeys
from streams.producer import FeedbackProducer
from streams.records import DEFAULT_LIMITS, FeedbackRecord, MalformedRecord, RecordLimits
from streams.replies import as_text

log = logging.getLogger(__name__)

GROUP = "learners"
# The dead-letter stream is for inspection, not a queue: cap it (approximately, which is cheap) so a flood of
# bad input cannot fill the server.
DEAD_LETTER_MAXLEN = 10_000

_PAGE = 500
_MAX_SEQ = 2**64 - 1

_Fields = Mapping[bytes | str, bytes | str]


def stream_id_key(stream_id: str) -> tuple[int, int]:
    """A stream ID as (milliseconds, sequence), the order Redis gives entries ("10-0" > "9-5")."""
    ms, dash, seq = stream_id.partition("-")
    try:
        return int(ms), int(seq) if dash else 0
    except ValueError:
        raise ValueError(f"not a stream ID: {stream_id!r}") from None


@dataclass(frozen=True)
class Entry:
    """One usable feedback entry and how many times the learner died while applying it (0 at first)."""

    stream_id: str
    record: FeedbackRecord
    failures: int = 0


class FeedbackConsumer:
    """Reads a model's feedback stream as consumer `consumer` of the group `learners`.

    `last_cursor` is the cursor last passed to `ensure_group`, `recover` or `ack_through`: the last ID held
    by a durable snapshot. Entries at or below it are never returned; if the group vanishes it is recreated
    from there. Within the life of one object, an entry is returned at most once: if the group is recreated
    and delivers again entries already returned but not yet acknowledged, they are left pending for the
    next `ack_through` instead of being returned twice.
    """

    def __init__(
        self,
        client: redis.Redis,
        keys: StreamKeys,
        consumer: str,
        *,
        max_deliveries: int = 10,
        limits: RecordLimits | None = None,
    ) -> None:
        if max_deliveries < 1:
            raise ValueError(f"max_deliveries must be at least 1 (got {max_deliveries})")
        self.client = client
        self.keys = keys
        self.consumer = consumer
        self.max_deliveries = max_deliveries
        self.limits = limits or DEFAULT_LIMITS
        self.last_cursor: str | None = None
        self._producer = FeedbackProducer(client, keys)
        # Highest ID returned or dead-lettered by this object, so a redelivery is never handed out twice.
        self._handled_through: tuple[int, int] | None = None

    def ensure_group(self, cursor: str | None) -> None:
        """Create the group (and the stream) positioned at `cursor`, or at the start when there is none.

        Never at "$": entries added before the group existed would be skipped. An existing group is kept.
        """
        self.last_cursor = cursor
        try:
            self.client.xgroup_create(self.keys.feedback, GROUP, id=cursor or "0", mkstream=True)
        except redis.ResponseError as err:
            if not str(err).startswith("BUSYGROUP"):
                raise

    def recover(self, cursor: str | None) -> list[Entry]:
        """Claim every pending entry of the group and return those after `cursor`, in ID order.

        Call once at start, holding the lease, so the consumers that own them are dead. Entries at or below
        `cursor` are already in the snapshot: they are acknowledged, not returned. The batch a learner died
        applying counts one failure against each of its entries; an entry that failed `max_deliveries` times
        is dead-lettered.
        """
        self.last_cursor = cursor
        self._handled_through = None
        failures = self._count_interrupted_batch()
        try:
            fields, vanished = self._claim_all()
            deliveries = self._pending_deliveries()
        except redis.ResponseError as err:
            if not _is_nogroup(err):
                raise
            self.ensure_group(cursor)
            return []
        # An entry deleted from the stream while pending has nothing left to apply. Redis 7 drops it from
        # the pending list as it claims it; Redis 6.2 keeps it there, with no fields.
        vanished += [stream_id for stream_id in deliveries if stream_id not in fields]
        if vanished:
            log.warning(
                "%d pending entries were deleted from %s; acknowledging them",
                len(vanished),
                self.keys.feedback,
            )
            self.client.xack(self.keys.feedback, GROUP, *vanished)
            # Counted whether or not XACK found them, since Redis 7 already dropped them while claiming.
            self._producer.acknowledged(len(vanished))
        rows = sorted(fields.items(), key=lambda row: stream_id_key(row[0]))
        return self._admit(rows, failures)

    def applying(self, stream_ids: list[str]) -> None:
        """Mark a micro-batch as being applied: if the learner dies before `applied`, each entry of it gets
        one failure at the next `recover`."""
        self.client.set(self.keys.applying, json.dumps(stream_ids))

    def applied(self) -> None:
        """The marked micro-batch was applied: nothing is counted against it."""
        self.client.delete(self.keys.applying)

    def _count_interrupted_batch(self) -> dict[str, int]:
        """Count a failure against each entry of the batch a learner died applying; every entry's failures."""
        marked = self.client.get(self.keys.applying)
        if marked is not None:
            pipe = self.client.pipeline(transaction=True)
            for stream_id in json.loads(marked):
                pipe.hincrby(self.keys.failures, stream_id, 1)
            pipe.delete(self.keys.applying)
            pipe.execute()
        return {as_text(key): int(value) for key, value in self.client.hgetall(self.keys.failures).items()}

    def _forget_failures(self, settled: Callable[[str], bool]) -> None:
        """Drop the failure counts of entries that are settled (acknowledged or dead-lettered)."""
        done = [key for key in map(as_text, self.client.hkeys(self.keys.failures)) if settled(key)]
        if done:
            self.client.hdel(self.keys.failures, *done)

    def read(self, count: int, wait_s: float, block_ms: int = 200) -> list[Entry]:
        """Up to `count` new entries in ID order, waiting at most about `wait_s` for the batch to fill.

        Returns early once `count` entries are in hand; otherwise returns what arrived within `wait_s`
        (possibly nothing), so a trickle still forms small batches. Each blocking call lasts at most
        `block_ms`. Nothing is acknowledged here.
        """
        if block_ms < 1:
            raise ValueError(f"block_ms must be at least 1 (got {block_ms})")
        deadline = time.monotonic() + max(wait_s, 0.0)
        entries: list[Entry] = []
        while len(entries) < count:
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            # BLOCK 0 would wait forever, so once time is up the last read does not block at all.
            block = min(block_ms, remaining_ms) if remaining_ms >= 1 else None
            entries += self._read_new(count - len(entries), block)
            if time.monotonic() >= deadline:
                break
        return entries

    def ack_through(self, cursor: str) -> int:
        """Acknowledge every pending entry with ID <= `cursor`; returns how many.

        Call only once a snapshot holding the effect of every entry up to `cursor` is durable.
        """
        if self.last_cursor is None or stream_id_key(cursor) > stream_id_key(self.last_cursor):
            self.last_cursor = cursor
        acked = 0
        while True:
            try:
                page = self.client.xpending_range(self.keys.feedback, GROUP, min="-", max=cursor, count=_PAGE)
            except redis.ResponseError as err:
                if not _is_nogroup(err):
                    raise
                self.ensure_group(self.last_cursor)
                break
            if not page:
                break
            done = int(self.client.xack(self.keys.feedback, GROUP, *[row["message_id"] for row in page]))
            acked += done
            if len(page) < _PAGE or done == 0:
                break
        self._producer.acknowledged(acked)
        through = stream_id_key(cursor)
        self._forget_failures(lambda stream_id: stream_id_key(stream_id) <= through)
        return acked

    def trim(self, cursor: str, retention: int) -> int:
        """Delete old entries, keeping the `retention` newest at or below `cursor`; returns how many went.

        Never deletes an entry still pending in the group, whatever `retention` says.
        """
        if retention < 0:
            raise ValueError(f"retention must not be negative (got {retention})")
        kept = self.client.xrevrange(self.keys.feedback, max=cursor, min="-", count=retention + 1)
        if len(kept) <= retention:
            return 0
        min_id = as_text(kept[retention - 1][0]) if retention else _next_id(cursor)
        try:
            summary = self.client.xpending(self.keys.feedback, GROUP)
        except redis.ResponseError as err:
            if not _is_nogroup(err):
                raise
            return 0
        if summary["pending"] and summary["min"] is not None:
            oldest_pending = as_text(summary["min"])
            if stream_id_key(oldest_pending) < stream_id_key(min_id):
                min_id = oldest_pending
        # Exact MINID, so exactly `retention` entries stay: with `~` Redis removes only whole internal
        # nodes and the retention would drift.
        return int(self.client.xtrim(self.keys.feedback, minid=min_id, approximate=False))

    def pending(self) -> int:
        """How many entries the group has delivered and not yet acknowledged."""
        try:
            return int(self.client.xpending(self.keys.feedback, GROUP)["pending"])
        except redis.ResponseError as err:
            if not _is_nogroup(err):
                raise
            return 0

    def history(self, after: str | None, through: str) -> list[Entry]:
        """Entries still in the stream with `after` < ID <= `through`, in ID order, acknowledged or not.

        For replaying what a rolled-back model had learned; trimmed entries are gone and unreadable ones
        are skipped. Nothing is claimed or acknowledged.
        """
        entries: list[Entry] = []
        start = f"({after}" if after else "-"
        while True:
            page = self.client.xrange(self.keys.feedback, min=start, max=through, count=_PAGE)
            for raw_id, fields in page:
                with contextlib.suppress(MalformedRecord):
                    entries.append(Entry(as_text(raw_id), FeedbackRecord.from_fields(fields, self.limits), 1))
            if len(page) < _PAGE:
                return entries
            start = f"({as_text(page[-1][0])}"

    def acknowledged_after(self, cursor: str | None) -> list[Entry]:
        """Entries after `cursor` that the group already delivered and acknowledged, in ID order.

        They exist when the learner resumes from an older snapshot because the newest one is unreadable:
        what only that snapshot held was acknowledged with it, so no redelivery brings it back, and it is
        read from the stream again instead. Pending entries (see `recover`) and dead-lettered ones are left
        out.
        """
        delivered = self._last_delivered()
        if delivered is None or (cursor is not None and stream_id_key(delivered) <= stream_id_key(cursor)):
            return []
        settled_elsewhere = set(self._pending_deliveries()) | self._dead_lettered_after(cursor)
        return [e for e in self.history(cursor, delivered) if e.stream_id not in settled_elsewhere]

    def dead_letter(self, entry: Entry, reason: str) -> None:
        """Move an entry the caller cannot use to the dead-letter stream and acknowledge it."""
        self._dead_letter([(entry.stream_id, entry.record.to_fields(), reason)])

    def _read_new(self, count: int, block: int | None) -> list[Entry]:
        try:
            reply = self.client.xreadgroup(
                GROUP, self.consumer, {self.keys.feedback: ">"}, count=count, block=block
            )
        except redis.ResponseError as err:
            if not _is_nogroup(err):
                raise
            log.warning(
                "group %s of %s vanished; recreating it at %s", GROUP, self.keys.feedback, self.last_cursor
            )
            self.ensure_group(self.last_cursor)
            return []
        rows = [
            (as_text(stream_id), fields)
            for _, stream_rows in reply or []
            for stream_id, fields in stream_rows
        ]
        return self._admit(rows, {})

    def _admit(self, rows: list[tuple[str, _Fields]], failures: Mapping[str, int]) -> list[Entry]:
        """Decode delivered rows (in ID order); settle those that must not reach the caller."""
        cursor = stream_id_key(self.last_cursor) if self.last_cursor is not None else None
        covered: list[str] = []
        dead: list[tuple[str, _Fields, str]] = []
        entries: list[Entry] = []
        for stream_id, fields in rows:
            key = stream_id_key(stream_id)
            if cursor is not None and key <= cursor:
                covered.append(stream_id)
                continue
            if self._handled_through is not None and key <= self._handled_through:
                continue
            self._handled_through = key
            failed = failures.get(stream_id, 0)
            if failed >= self.max_deliveries:
                reason = f"the learner died applying it {failed} times (RETENTIVE_MAX_DELIVERIES)"
                dead.append((stream_id, fields, reason))
                continue
            try:
                record = FeedbackRecord.from_fields(fields, self.limits)
            except MalformedRecord as err:
                dead.append((stream_id, fields, f"malformed: {err}"))
                continue
            entries.append(Entry(stream_id, record, failed))
        if covered:
            self._ack(covered)
        self._dead_letter(dead)
        return entries

    def _claim_all(self) -> tuple[dict[str, _Fields], list[str]]:
        """Take over every pending entry of the group: their fields, and IDs Redis reported deleted."""
        fields: dict[str, _Fields] = {}
        deleted: list[str] = []
        start = "0-0"
        while True:
            reply = self.client.xautoclaim(
                self.keys.feedback, GROUP, self.consumer, min_idle_time=0, start_id=start, count=_PAGE
            )
            for stream_id, values in reply[1]:
                if stream_id is not None:
                    fields[as_text(stream_id)] = values
            if len(reply) > 2:
                deleted += [as_text(stream_id) for stream_id in reply[2]]
            start = as_text(reply[0])
            if start == "0-0":
                return fields, deleted

    def _pending_deliveries(self) -> dict[str, int]:
        """Delivery count of every pending entry of the group."""
        counts: dict[str, int] = {}
        start = "-"
        while True:
            page = self.client.xpending_range(self.keys.feedback, GROUP, min=start, max="+", count=_PAGE)
            for row in page:
                counts[as_text(row["message_id"])] = int(row["times_delivered"])
            if len(page) < _PAGE:
                return counts
            start = _next_id(as_text(page[-1]["message_id"]))

    def _last_delivered(self) -> str | None:
        try:
            groups = self.client.xinfo_groups(self.keys.feedback)
        except redis.ResponseError:
            return None
        for group in groups:
            if as_text(group["name"]) == GROUP:
                return as_text(group["last-delivered-id"])
        return None

    def _dead_lettered_after(self, cursor: str | None) -> set[str]:
        """Original IDs of the entries dead-lettered since `cursor` was written (dead letters come later)."""
        start = f"{stream_id_key(cursor)[0]}-0" if cursor else "-"
        ids: set[str] = set()
        while True:
            page = self.client.xrange(self.keys.dead, min=start, max="+", count=_PAGE)
            for _, fields in page:
                original = fields.get(b"stream_id") or fields.get("stream_id")
                if original is not None:
                    ids.add(as_text(original))
            if len(page) < _PAGE:
                return ids
            start = f"({as_text(page[-1][0])}"

    def _ack(self, stream_ids: Iterable[str]) -> None:
        ids = list(stream_ids)
        if ids:
            self._producer.acknowledged(int(self.client.xack(self.keys.feedback, GROUP, *ids)))

    def _dead_letter(self, items: list[tuple[str, _Fields, str]]) -> None:
        if not items:
            return
        # One transaction, so an entry is never acknowledged without its dead letter, nor counted twice.
        pipe = self.client.pipeline(transaction=True)
        for stream_id, fields, reason in items:
            log.warning("dead-lettering %s from %s: %s", stream_id, self.keys.feedback, reason)
            body: dict[bytes | str, bytes | str] = {"reason": reason, "stream_id": stream_id}
            for name, value in fields.items():
                body[b"f." + (name.encode() if isinstance(name, str) else name)] = value
            pipe.xadd(self.keys.dead, body, maxlen=DEAD_LETTER_MAXLEN, approximate=True)
        pipe.xack(self.keys.feedback, GROUP, *[stream_id for stream_id, _, _ in items])
        pipe.hincrby(self.keys.counters, "dead_lettered", len(items))
        acked = pipe.execute()[-2]
        self._producer.acknowledged(int(acked))
        lettered = {stream_id for stream_id, _, _ in items}
        self._forget_failures(lettered.__contains__)


def _is_nogroup(err: redis.ResponseError) -> bool:
    return str(err).startswith("NOGROUP")


def _next_id(stream_id: str) -> str:
    """The smallest stream ID greater than `stream_id`."""
    ms, seq = stream_id_key(stream_id)
    return f"{ms + 1}-0" if seq == _MAX_SEQ else f"{ms}-{seq + 1}"
