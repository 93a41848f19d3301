"""What operators ask of the learner: pause, resume, roll back, remove labels, and the registered probe sets.

These are kept as state in Redis, not sent as messages: the API writes what is wanted, and the active
learner reconciles with it before every micro-batch. A learner that restarts, or a standby that takes over,
reads the same state, so a request is never lost with a process.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import redis

from streams.heartbeats import alive
from streams.keys import StreamKeys
from streams.replies import as_text

PAUSED = "paused"
ROLLBACK = "rollback"
PROBES_REVISION = "probes_revision"

# Deletes the rollback request only if it is still the one that was carried out (a newer one stays).
_FINISH_ROLLBACK = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
    return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""

# Bumps the probes revision only when a probe was removed, so deleting a missing one changes nothing.
_DELETE_PROBE = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 1 then
    redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
    return 1
end
return 0
"""


@dataclass(frozen=True)
class RollbackRequest:
    snapshot_id: str
    replay: bool
    requested_at: float

    def to_json(self) -> str:
        return json.dumps(
            {"snapshot_id": self.snapshot_id, "replay": self.replay, "requested_at": self.requested_at}
        )

    @classmethod
    def from_json(cls, raw: str) -> RollbackRequest:
        data = json.loads(raw)
        return cls(str(data["snapshot_id"]), bool(data["replay"]), float(data["requested_at"]))


@dataclass(frozen=True)
class ControlState:
    """One read of everything the learner must follow."""

    paused: str | None = None
    rollback: RollbackRequest | None = None
    probes_revision: int = 0
    label_removals: frozenset[str] = frozenset()


class Control:
    def __init__(self, client: redis.Redis, keys: StreamKeys) -> None:
        self.client = client
        self.keys = keys

    def state(self) -> ControlState:
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(self.keys.control)
        pipe.smembers(self.keys.label_removals)
        raw, removals = pipe.execute()
        fields = {as_text(k): as_text(v) for k, v in raw.items()}
        rollback = fields.get(ROLLBACK)
        return ControlState(
            paused=fields.get(PAUSED),
            rollback=RollbackRequest.from_json(rollback) if rollback else None,
            probes_revision=int(fields.get(PROBES_REVISION, 0)),
            label_removals=frozenset(as_text(label) for label in removals),
        )

    def request_label_removal(self, labels: list[str]) -> None:
        """Ask the learner to take these labels out of the model."""
        self.client.sadd(self.keys.label_removals, *labels)

    def finish_label_removal(self, labels: frozenset[str]) -> None:
        """Mark these removals done; labels asked for meanwhile stay asked for."""
        if labels:
            self.client.srem(self.keys.label_removals, *labels)

    def pause(self, reason: str) -> None:
        """Stop learning until `resume`; `reason` says who asked and why."""
        self.client.hset(self.keys.control, PAUSED, reason)

    def resume(self) -> bool:
        """Let learning go on; False if it was not paused."""
        return bool(self.client.hdel(self.keys.control, PAUSED))

    def request_rollback(self, snapshot_id: str, replay: bool) -> RollbackRequest:
        """Ask the learner to continue from `snapshot_id`; a newer request replaces an unserved one."""
        request = RollbackRequest(snapshot_id, replay, time.time())
        self.client.hset(self.keys.control, ROLLBACK, request.to_json())
        return request

    def finish_rollback(self, request: RollbackRequest) -> None:
        """Mark `request` done, unless a newer one arrived meanwhile."""
        self.client.eval(_FINISH_ROLLBACK, 1, self.keys.control, ROLLBACK, request.to_json())

    def put_probe(self, name: str, examples: list[tuple[str, str]]) -> None:
        """Create or replace the registered probe `name`."""
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self.keys.probes, name, json.dumps([list(pair) for pair in examples]))
        pipe.hincrby(self.keys.control, PROBES_REVISION, 1)
        pipe.execute()

    def delete_probe(self, name: str) -> bool:
        """Remove the registered probe `name`; False (and nothing written) if there was none."""
        keys = [self.keys.probes, self.keys.control]
        return bool(self.client.eval(_DELETE_PROBE, len(keys), *keys, name, PROBES_REVISION))

    def probes(self) -> dict[str, list[tuple[str, str]]]:
        """Every registered probe: name to (text, label) pairs."""
        return {
            as_text(name): [(text, label) for text, label in json.loads(raw)]
            for name, raw in self.client.hgetall(self.keys.probes).items()
        }


def learner_state(client: redis.Redis, keys: StreamKeys) -> str:
    """running or paused (a learner holds the lease), standby (learners wait for it), or absent."""
    reports = alive(client, keys.learners)
    holder = client.get(keys.lease)
    if holder is not None:
        state = reports.get(as_text(holder), {}).get("state")
        return "paused" if state == "paused" else "running"
    if any(report.get("state") == "standby" for report in reports.values()):
        return "standby"
    return "absent"
