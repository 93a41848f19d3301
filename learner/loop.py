"""The learner process: read the feedback stream through the consumer group, learn, snapshot, acknowledge.

Delivery is at-least-once from Redis and exactly-once in effect. Each snapshot records the last applied
stream ID (the cursor); entries are acknowledged only after a snapshot holding their effect is durable.
On start the learner takes the lease, loads the newest valid snapshot, reclaims every pending entry,
drops those at or below the cursor, and applies the rest in ID order. A learner that lost its lease
stops before writing a snapshot.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from learner.classifier import LabelLimitError
from learner.online import Example, OnlineLearner
from learner.snapshots import Manifest, SnapshotStore
from streams.consumer import Entry, FeedbackConsumer, stream_id_key
from streams.keys import StreamKeys
from streams.lease import Lease
from streams.notify import publish_version, record_evaluation, set_counters

log = logging.getLogger("retentive.learner")

# Test-mode fault injection: the process kills itself at this named point once per start (crash tests only).
CRASH_AT_ENV = "RETENTIVE_CRASH_AT"


@dataclass(frozen=True)
class LoopConfig:
    batch_size: int = 16
    batch_wait_s: float = 1.0
    snapshot_every: int = 200
    snapshot_every_s: float = 30.0
    retention: int = 1000
    ledger: bool = False


@dataclass
class StreamCounters:
    """What the loop did with the entries it read; saved in every snapshot."""

    read: int = 0
    applied: int = 0
    held_out: int = 0


@dataclass
class LoopState:
    cursor: str | None = None
    counters: StreamCounters = field(default_factory=StreamCounters)
    ledger: list[list[str]] = field(default_factory=list)


class LeaseLostError(RuntimeError):
    """Another learner holds the lease now; this one must not write."""


class LearnerLoop:
    def __init__(
        self,
        learner: OnlineLearner,
        store: SnapshotStore,
        client: redis.Redis,
        keys: StreamKeys,
        consumer_name: str,
        config: LoopConfig | None = None,
        lease_ttl_ms: int = 10_000,
        max_deliveries: int = 10,
    ) -> None:
        self.learner = learner
        self.store = store
        self.client = client
        self.keys = keys
        self.config = config or LoopConfig()
        self.consumer = FeedbackConsumer(client, keys, consumer_name, max_deliveries=max_deliveries)
        self.lease = Lease(client, keys.lease, consumer_name, ttl_ms=lease_ttl_ms)
        self.state = LoopState()
        self._unsnapshotted = 0
        self._last_snapshot_at = time.monotonic()

    def run(self, stop: threading.Event) -> bool:
        """Wait for the lease, recover, then learn until `stop` is set or the lease is lost.

        Returns True when the lease was lost: this learner's memory may then be ahead of any snapshot, so the
        caller starts a fresh one, which rejoins as a standby and recovers from the newest snapshot.
        """
        log.info(json.dumps({"event": "standby", "lease": self.keys.lease}))
        if not self.lease.wait_for(stop):
            return False
        done = threading.Event()
        keeper = self.lease.keep_alive(done)
        try:
            self._recover()
            while not stop.is_set() and not self.lease.lost.is_set():
                if self.learner.paused:
                    stop.wait(self.config.batch_wait_s)
                    continue
                self._apply(self.consumer.read(self.config.batch_size, self.config.batch_wait_s))
                if self._snapshot_due():
                    self.snapshot()
            if self._unsnapshotted and not self.lease.lost.is_set():
                self.snapshot()
        except LeaseLostError:
            self.lease.lost.set()
        except redis.ConnectionError as err:
            # Past redis-py's retries: the lease cannot be trusted either, so step down like a lost lease.
            log.warning(json.dumps({"event": "redis_unreachable", "error": str(err)}))
            self.lease.lost.set()
        finally:
            done.set()
            keeper.join(timeout=5)
        if self.lease.lost.is_set():
            log.warning(
                json.dumps({"event": "lease_lost", "action": "stopped without writing; back to standby"})
            )
            return True
        self.lease.release()
        return False

    def _recover(self) -> None:
        snapshot, problems = self.store.load_latest_valid()
        for problem in problems:
            log.warning(json.dumps({"event": "snapshot_skipped", "reason": problem}))
        if snapshot is not None:
            self._restore_state(self.learner.restore(snapshot) or {})
        self.consumer.ensure_group(self.state.cursor)
        pending = self.consumer.recover(self.state.cursor)
        for start in range(0, len(pending), self.config.batch_size):
            self._apply(pending[start : start + self.config.batch_size])
        log.info(
            json.dumps(
                {
                    "event": "recovered",
                    "cursor": self.state.cursor,
                    "reapplied": len(pending),
                    "snapshot": snapshot.id if snapshot else None,
                }
            )
        )

    def _restore_state(self, saved: dict[str, Any]) -> None:
        self.state = LoopState(
            cursor=saved.get("cursor"),
            counters=StreamCounters(**saved.get("counters", {})),
            ledger=saved.get("ledger", []),
        )

    def _apply(self, entries: list[Entry]) -> None:
        fresh = [e for e in entries if self._after_cursor(e.stream_id)]
        if not fresh:
            return
        fresh.sort(key=lambda e: stream_id_key(e.stream_id))
        self.state.counters.read += len(fresh)
        fresh = self._refuse_past_label_cap(fresh)
        examples = [Example(e.record.text, e.record.label, e.record.id) for e in fresh]
        report = self.learner.learn(examples)
        self.state.counters.held_out += report.held_out
        self.state.counters.applied += report.trained
        if fresh:
            self.state.cursor = fresh[-1].stream_id
        self._unsnapshotted += len(fresh)
        if self.config.ledger:
            for entry, held in zip(fresh, report.held_out_mask, strict=True):
                self.state.ledger.append(
                    [entry.stream_id, entry.record.id or "", "held_out" if held else "trained"]
                )
        if report.evaluated:
            self._publish_evaluation(report)

    def _after_cursor(self, stream_id: str) -> bool:
        return self.state.cursor is None or stream_id_key(stream_id) > stream_id_key(self.state.cursor)

    def _refuse_past_label_cap(self, entries: list[Entry]) -> list[Entry]:
        """Entries whose new label would pass the cap go to the dead-letter stream; the rest still train."""
        try:
            self.learner.model.unseen([e.record.label for e in entries])
            return entries
        except LabelLimitError as err:
            room = self.learner.model.max_labels - len(self.learner.model.labels)
            kept, new = [], set()
            for entry in entries:
                label = entry.record.label
                if label in self.learner.model.labels or label in new or len(new) < room:
                    if label not in self.learner.model.labels:
                        new.add(label)
                    kept.append(entry)
                else:
                    self.consumer.dead_letter(entry, str(err))
            return kept

    def _snapshot_due(self) -> bool:
        if not self._unsnapshotted:
            return False
        since = self.learner.counters.updates % self.config.snapshot_every == 0
        stale = time.monotonic() - self._last_snapshot_at >= self.config.snapshot_every_s
        return since or stale

    def snapshot(self) -> Manifest:
        """Write a snapshot, then acknowledge and trim what it holds, then announce the new version."""
        if not self.lease.renew():
            raise LeaseLostError(self.keys.lease)
        _crash_point("before_snapshot")
        began = time.monotonic()
        manifest = self.learner.save(
            self.store, info={"cursor": self.state.cursor}, extra=self._extra_state()
        )
        _crash_point("after_snapshot")
        acked = self.consumer.ack_through(self.state.cursor) if self.state.cursor else 0
        trimmed = self.consumer.trim(self.state.cursor, self.config.retention) if self.state.cursor else 0
        publish_version(self.client, self.keys, manifest.version, manifest.id)
        self._publish_counters()
        elapsed = time.monotonic() - self._last_snapshot_at
        summary = self.learner.tracker.summary()
        log.info(
            json.dumps(
                {
                    "event": "snapshot",
                    "version": manifest.version,
                    "snapshot": manifest.id,
                    "updates": self.learner.counters.updates,
                    "cursor": self.state.cursor,
                    "acked": acked,
                    "trimmed": trimmed,
                    "examples_per_s": round(self._unsnapshotted / max(elapsed, 1e-9), 2),
                    "lag": self.consumer.pending(),
                    "write_s": round(time.monotonic() - began, 3),
                    "mean_accuracy": summary["mean_accuracy"],
                    "max_forgetting": summary["max_forgetting"],
                }
            )
        )
        self._unsnapshotted = 0
        self._last_snapshot_at = time.monotonic()
        return manifest

    def _extra_state(self) -> dict[str, Any]:
        return {
            "cursor": self.state.cursor,
            "counters": asdict(self.state.counters),
            "ledger": self.state.ledger,
        }

    def _publish_evaluation(self, report: Any) -> None:
        forgetting = self.learner.forgetting_report()
        record_evaluation(self.client, self.keys, forgetting)
        summary = forgetting["summary"]
        log.info(
            json.dumps(
                {
                    "event": "evaluation",
                    "version": self.learner.counters.model_version,
                    "updates": self.learner.counters.updates,
                    "mean_accuracy": summary["mean_accuracy"],
                    "max_forgetting": summary["max_forgetting"],
                    "alarms": [a.probe for a in report.alarms],
                    "rolled_back_to": report.rolled_back_to,
                }
            )
        )

    def _publish_counters(self) -> None:
        counters = self.state.counters
        set_counters(
            self.client,
            self.keys,
            {
                "read": counters.read,
                "applied": counters.applied,
                "held_out": counters.held_out,
                "updates": self.learner.counters.updates,
                "skipped_steps": self.learner.counters.skipped_steps,
                "pending": self.consumer.pending(),
            },
        )


def _crash_point(name: str) -> None:
    if os.environ.get(CRASH_AT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
