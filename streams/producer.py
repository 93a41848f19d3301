"""Adding feedback to a model's stream: a whole request is validated, deduplicated and written atomically,
or refused with nothing written."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import redis

from streams.keys import StreamKeys
from streams.records import DEFAULT_LIMITS, FeedbackRecord, MalformedRecord, RecordLimits
from streams.replies import as_text

# No learner throughput is known here, so Retry-After is a heuristic: a short wait when the request barely
# overshoots the limit, growing linearly to the cap when it overshoots by the whole limit.
_RETRY_MIN_S = 5
_RETRY_MAX_S = 60

# KEYS[1] stream, KEYS[2] backlog counter, KEYS[3] counters hash, KEYS[4..] dedup keys.
# ARGV[1] max backlog, ARGV[2] dedup ttl in seconds, ARGV[3] max stream bytes, ARGV[4] the request's bytes,
# ARGV[5] record count, then per record: the index in KEYS of its dedup key (0 when it has no id), the
# number of field values, then name, value, name, ...
# Returns {'full', backlog, new entries}, {'too_large', stream bytes, request bytes} or
# {'ok', added, duplicates, stream id per record...}.
_ADD = """
local max_backlog = tonumber(ARGV[1])
local ttl = ARGV[2]
local max_bytes = tonumber(ARGV[3])
local records = {}
local pos = 6
for i = 1, tonumber(ARGV[5]) do
  local count = tonumber(ARGV[pos + 1])
  records[i] = {dedup = tonumber(ARGV[pos]), first = pos + 2, last = pos + 1 + count}
  pos = pos + 2 + count
end

-- Count the new entries before writing anything, so a full backlog refuses the whole request.
local seen = {}
local new = 0
for _, record in ipairs(records) do
  local d = record.dedup
  if d == 0 then
    new = new + 1
  elseif not seen[d] then
    seen[d] = true
    if redis.call('EXISTS', KEYS[d]) == 0 then
      new = new + 1
    end
  end
end
local backlog = tonumber(redis.call('GET', KEYS[2]) or '0')
if new > 0 and backlog + new > max_backlog then
  return {'full', backlog, new}
end
-- Memory as Redis estimates it: unacknowledged entries and the acknowledged ones kept for replay.
local used = tonumber(redis.call('MEMORY', 'USAGE', KEYS[1]) or 0)
if new > 0 and used + tonumber(ARGV[4]) > max_bytes then
  return {'too_large', used, tonumber(ARGV[4])}
end

local reply = {'ok', 0, 0}
for i, record in ipairs(records) do
  local first = false
  if record.dedup > 0 then
    first = redis.call('GET', KEYS[record.dedup])
  end
  if first then
    reply[3] = reply[3] + 1
    reply[3 + i] = first
  else
    local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, record.first, record.last))
    if record.dedup > 0 then
      redis.call('SET', KEYS[record.dedup], id, 'EX', ttl)
    end
    reply[2] = reply[2] + 1
    reply[3 + i] = id
  end
end
if reply[2] > 0 then
  redis.call('INCRBY', KEYS[2], reply[2])
  redis.call('HINCRBY', KEYS[3], 'accepted', reply[2])
end
if reply[3] > 0 then
  redis.call('HINCRBY', KEYS[3], 'duplicates', reply[3])
end
return reply
"""

# KEYS[1] backlog counter; ARGV[1] entries acknowledged. Floors at 0 so a counter that drifted low recovers.
_ACKNOWLEDGED = """
local left = math.max(tonumber(redis.call('GET', KEYS[1]) or '0') - tonumber(ARGV[1]), 0)
redis.call('SET', KEYS[1], string.format('%d', left))
return left
"""


class BacklogFull(RuntimeError):  # noqa: N818 - public API name
    """The stream holds too many unacknowledged entries (or, with `unit` "bytes", too much memory) to take a
    request; retry after `retry_after_s`."""

    def __init__(self, backlog: int, limit: int, requested: int, unit: str = "entries") -> None:
        self.backlog = backlog
        self.limit = limit
        self.unit = unit
        overshoot = backlog + requested - limit
        growth = math.ceil((_RETRY_MAX_S - _RETRY_MIN_S) * overshoot / limit)
        self.retry_after_s = min(_RETRY_MAX_S, _RETRY_MIN_S + growth)
        super().__init__(
            f"feedback backlog is {backlog} of {limit} {unit}; {requested} new {unit} do not fit, "
            f"retry after {self.retry_after_s} s"
        )


@dataclass(frozen=True)
class AddResult:
    """Stream ID of each record in request order (a duplicate gets its original's ID), and the counts."""

    stream_ids: list[str]
    accepted: int
    duplicates: int


class FeedbackProducer:
    """Writes feedback records to one model's stream, deduplicating by client id and bounding the backlog.

    A record's `id` is remembered for `dedup_ttl_s` seconds after it was first accepted: a repeat within that
    time is a duplicate (its original stream ID is returned and nothing is added), a repeat after it is
    accepted again. The dedup key holds a hash of the id, never the id itself (see `StreamKeys.dedup`).

    The backlog counts accepted entries the learner has not acknowledged; a request that would take it past
    `max_backlog` is refused whole with BacklogFull, so a single request larger than `max_backlog` never fits.
    Entries may be large, so the stream's memory is bounded too: a request whose fields would take the
    stream (as Redis's MEMORY USAGE estimates it) past `max_stream_bytes` is refused the same way.
    """

    def __init__(
        self,
        client: redis.Redis,
        keys: StreamKeys,
        *,
        max_backlog: int = 100_000,
        max_stream_bytes: int = 512 * 2**20,
        dedup_ttl_s: int = 7 * 86400,
        limits: RecordLimits = DEFAULT_LIMITS,
    ) -> None:
        if max_backlog < 1:
            raise ValueError(f"max_backlog must be at least 1 (got {max_backlog})")
        if dedup_ttl_s < 1:
            raise ValueError(f"dedup_ttl_s must be at least 1 second (got {dedup_ttl_s})")
        self.client = client
        self.keys = keys
        self.max_backlog = max_backlog
        self.max_stream_bytes = max_stream_bytes
        self.dedup_ttl_s = dedup_ttl_s
        self.limits = limits
        # Script objects run by EVALSHA and load themselves again after SCRIPT FLUSH or a server restart.
        self._add = client.register_script(_ADD)
        self._acknowledged = client.register_script(_ACKNOWLEDGED)

    def add(self, records: Sequence[FeedbackRecord]) -> AddResult:
        """Add `records` all or nothing.

        Raises MalformedRecord (with `index` set) if any record is invalid, and BacklogFull if the new entries
        do not fit; in both cases nothing is written. Records with `received_at` 0 get the current time.
        """
        for index, record in enumerate(records):
            try:
                record.validate(self.limits)
            except MalformedRecord as err:
                raise err.at(index) from None
        if not records:
            return AddResult(stream_ids=[], accepted=0, duplicates=0)

        now = time.time()
        keys = [self.keys.feedback, self.keys.backlog, self.keys.counters]
        dedup_index: dict[str, int] = {}
        args: list[str | int] = [self.max_backlog, self.dedup_ttl_s, self.max_stream_bytes, 0, len(records)]
        size = 0
        for record in records:
            index = 0
            if record.id is not None:
                if record.id not in dedup_index:
                    keys.append(self.keys.dedup(record.id))
                    dedup_index[record.id] = len(keys)
                index = dedup_index[record.id]
            stamped = dataclasses.replace(record, received_at=now) if record.received_at == 0 else record
            fields = stamped.to_fields()
            args += [index, 2 * len(fields)]
            for name, value in fields.items():
                args += [name, value]
                size += len(name) + len(value.encode("utf-8"))
        args[3] = size

        reply = self._add(keys=keys, args=args)
        if as_text(reply[0]) == "full":
            raise BacklogFull(backlog=int(reply[1]), limit=self.max_backlog, requested=int(reply[2]))
        if as_text(reply[0]) == "too_large":
            raise BacklogFull(int(reply[1]), self.max_stream_bytes, int(reply[2]), unit="bytes")
        return AddResult(
            stream_ids=[as_text(stream_id) for stream_id in reply[3:]],
            accepted=int(reply[1]),
            duplicates=int(reply[2]),
        )

    def backlog(self) -> int:
        """Accepted entries not yet acknowledged by the learner."""
        return int(self.client.get(self.keys.backlog) or 0)

    def acknowledged(self, count: int) -> None:
        """Note that the learner acknowledged `count` entries: the backlog shrinks by that, never below 0."""
        if count < 0:
            raise ValueError(f"count must not be negative (got {count})")
        if count:
            self._acknowledged(keys=[self.keys.backlog], args=[count])
