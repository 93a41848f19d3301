"""The learner worker: read the feedback stream through the consumer group, learn, snapshot, acknowledge.

This is where the learner (which knows no Redis) meets the stream (which knows no torch), and where the
policies live: when to snapshot and publish, what a forgetting alarm does, how a rollback happens.

Delivery is at-least-once from Redis and exactly-once in effect. Each snapshot records the last applied
stream ID (the cursor); entries are acknowledged only after a snapshot holding their effect is durable.
Snapshots and publications are serialized on the training thread, then hashed and written on a thread of
their own, one at a time, while learning goes on; what follows a write (acknowledging, trimming,
announcing) waits for its end.
On start the learner takes the lease, loads the newest valid snapshot, reclaims every pending entry,
drops those at or below the cursor, and applies the rest in ID order. A learner that lost its lease
stops before writing a snapshot.

When the newest snapshot is unreadable the learner resumes from an older one and reads again, from the
stream, the acknowledged entries only the lost one held; trimming therefore never removes entries after the
cursor of the snapshot before the newest. A snapshot that cannot be written (disk full, read-only) is
reported and retried every `snapshot_retry_s`; nothing it would hold is acknowledged until one succeeds.

Between snapshots the weights alone are published for serving every `publish_every_s`, so feedback
reaches predictions within seconds. Before each micro-batch the learner backs off while an API replica
reports prediction pressure above the bounds (`app.pressure`: texts queued, or answers slower than the
replica's own fastest at the same size), since both share the CPU, for at most `backoff_max_s` in a row.

With `max_batch_size` above the batch size, a backlog is learned in larger steps: once a micro-batch is
full, what else is already waiting joins it, up to `max_batch_size` examples per step, so fewer, larger
steps catch up faster (each step's fixed costs are shared by more examples); feedback that trickles in still
trains in steps of `batch_size` or fewer. Off by default (0): see the README, "Micro-batch size".

With `mix_window` above the batch size, what is waiting is read as one window of up to `mix_window`
entries and learned in shuffled micro-batches (`OnlineLearner.learn_window`), so a file sorted by label
is not learned one label at a time. A window is applied whole: the cursor, the ledger, snapshots,
publications, alarm policies and what operators asked (pause, rollback, registered probes; see
`streams.control`) act between windows. Off by default (0: windows of one micro-batch), since a long
window delays all of those while a backlog lasts.

No weights are served before they pass the promotion check (`learner.promotion`, within
`promotion_budget` probe texts): weights that fail are neither published nor announced, a snapshot of them
is written for recovery but marked `promoted: false` so replicas pass it by, and replicas keep serving the
last version that passed. The check's cost is held to `PROMOTION_SHARE` of the learner's time by spacing
publications out when it is slow.

On a forgetting alarm the `alarm_policy` decides: `alert` only reports it, `pause` pauses learning as an
operator would, `rollback` returns to the newest snapshot taken without an active alarm, by the same path
as an operator's rollback request.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from app.allocator import release_free_memory
from app.faults import crash_point
from app.ledger import Row, ledger_rows
from learner.forgetting import Alarm, AlarmPolicy
from learner.online import Example, OnlineLearner
from learner.snapshots import Manifest, Snapshot, SnapshotError, SnapshotStore, serialized
from streams.consumer import Entry, FeedbackConsumer, stream_id_key
from streams.control import Control, RollbackRequest
from streams.heartbeats import alive, keep_beating
from streams.keys import StreamKeys
from streams.lease import Lease
from streams.notify import (
    publish_version,
    record_evaluation,
    set_counters,
    set_held_back,
    set_keep_rates,
    set_prequential,
)
from streams.records import RecordLimits
from streams.served import join_feedback

log = logging.getLogger("retentive.learner")
PROMOTION_SHARE = 0.1


def publication_spacing(publish_every_s: float, check_s: float) -> float:
    """Seconds between publications: `publish_every_s`, or longer when a promotion check of `check_s`
    would otherwise take more than `PROMOTION_SHARE` of the learner's time."""
    return max(publish_every_s, check_s * (1 / PROMOTION_SHARE - 1))


@dataclass(frozen=True)
class LoopConfig:
    batch_size: int = 16
    max_batch_size: int = 0
    mix_window: int = 0
    batch_wait_s: float = 1.0
    snapshot_every: int = 200
    snapshot_every_s: float = 30.0
    retention: int = 1000
    ledger: bool = False
    publish_every_s: float = 5.0
    promotion_budget: int = 64
    backoff_queue: int = 64
    backoff_slowdown: float = 3.0
    backoff_s: float = 0.5
    backoff_max_s: float = 5.0
    snapshot_retry_s: float = 5.0
    alarm_policy: AlarmPolicy = AlarmPolicy.ALERT
    lease_ttl_ms: int = 10_000
    max_deliveries: int = 10

    @property
    def largest_batch(self) -> int:
        """The most examples one step trains on: `max_batch_size`, and never fewer than `batch_size`."""
        return max(self.max_batch_size, self.batch_size)

    @property
    def window(self) -> int:
        """Entries read and applied as one window: `mix_window`, and never fewer than the largest step."""
        return max(self.mix_window, self.largest_batch)

    def micro_batch(self, waiting: int) -> int:
        """Examples per step for a window of `waiting` entries: `batch_size`, or, once more than that was
        waiting, as many as waited, up to `max_batch_size`."""
        return min(max(waiting, self.batch_size), self.largest_batch)


@dataclass
class StreamCounters:
    """What the loop did with the entries it read; saved in every snapshot."""

    read: int = 0
    applied: int = 0
    held_out: int = 0
    backoffs: int = 0
    rollbacks: int = 0
    snapshot_failures: int = 0
    publish_failures: int = 0
    held_back: int = 0


@dataclass
class LoopState:
    cursor: str | None = None
    counters: StreamCounters = field(default_factory=StreamCounters)
    ledger: list[Row] = field(default_factory=list)


@dataclass(frozen=True)
class _Taken:
    """Where the stream stood when a snapshot's contents were serialized."""

    cursor: str | None
    entries: int
    updates: int
    at: float
    serialize_s: float


@dataclass(frozen=True)
class _Write:
    """A snapshot or publication being written off the training thread, and what follows its end."""

    written: Future[Manifest]
    settle: Callable[[Manifest], None]
    fail: Callable[[Exception], None]


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
        published: SnapshotStore | None = None,
        limits: RecordLimits | None = None,
    ) -> None:
        self.learner = learner
        self.store = store
        self.published = published
        self.client = client
        self.keys = keys
        self.name = consumer_name
        self.config = config or LoopConfig()
        self.consumer = FeedbackConsumer(
            client, keys, consumer_name, max_deliveries=self.config.max_deliveries, limits=limits
        )
        self.lease = Lease(client, keys.lease, consumer_name, ttl_ms=self.config.lease_ttl_ms)
        self.control = Control(client, keys)
        self.state = LoopState()
        self.leading = False
        self.paused = False
        self._unsnapshotted = 0
        self._updates_at_snapshot = self.learner.counters.updates
        self._last_snapshot_at = time.monotonic()
        self._snapshot_retry_at = 0.0
        self._snapshot_requested = False
        self._durable_cursor: str | None = None
        self._backing_off_since: float | None = None
        self._published_updates = 0
        self._last_published_at = time.monotonic()
        self._promotion_check_s = 0.0
        self._probes_revision: int | None = None
        self._rate_mark = (time.monotonic(), 0, 0)
        self._rolled_back_to: str | None = None
        # Snapshots and publications are written here, one at a time, while the training thread goes on.
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="snapshot-writer")
        self._write: _Write | None = None
        self._write_lock = threading.RLock()

    @property
    def status(self) -> str:
        """standby (waiting for the lease), running or paused."""
        if not self.leading:
            return "standby"
        return "paused" if self.paused else "running"

    def run(self, stop: threading.Event) -> bool:
        """Wait for the lease, recover, then learn until `stop` is set or the lease is lost.

        Returns True when the lease was lost: this learner's memory may then be ahead of any snapshot, so the
        caller starts a fresh one, which rejoins as a standby and recovers from the newest snapshot.
        """
        log.info(json.dumps({"event": "standby", "lease": self.keys.lease}))
        done = threading.Event()
        beating = keep_beating(
            self.client,
            self.keys.learners,
            self.name,
            lambda: {"state": self.status},
            done,
            every_s=self.lease.ttl_ms / 3000,
        )
        if not self.lease.wait_for(stop):
            done.set()
            beating.join(timeout=5)
            return False
        keeper = self.lease.keep_alive(done)
        try:
            self._recover()
            self.leading = True
            while not stop.is_set() and not self.lease.lost.is_set():
                self._settle_write()
                self._follow_control()
                if self.paused:
                    stop.wait(self.config.batch_wait_s)
                    continue
                if self._should_back_off():
                    self.state.counters.backoffs += 1
                    stop.wait(self.config.backoff_s)
                    continue
                self._apply(self._read_window())
                self._settle_write()
                if self._snapshot_due():
                    self._start_snapshot()
                elif self._publish_due():
                    self._start_publication()
            self._finish_write()
            if self._unsnapshotted and not self.lease.lost.is_set():
                self.snapshot()
        except LeaseLostError:
            self.lease.lost.set()
        except redis.ConnectionError as err:
            # Past redis-py's retries: the lease cannot be trusted either, so step down like a lost lease.
            log.warning(json.dumps({"event": "redis_unreachable", "error": str(err)}))
            self.lease.lost.set()
        finally:
            self._abandon_write()
            self.leading = False
            done.set()
            keeper.join(timeout=5)
            beating.join(timeout=5)
        if self.lease.lost.is_set():
            log.warning(
                json.dumps({"event": "lease_lost", "action": "stopped without writing; back to standby"})
            )
            return True
        self.lease.release()
        return False

    def _read_window(self) -> list[Entry]:
        """A micro-batch, waiting up to `batch_wait_s` for it to fill; once full, whatever else is waiting
        joins it, up to the window, so that a backlog is learned shuffled (`OnlineLearner.learn_window`)."""
        entries = self.consumer.read(self.config.batch_size, self.config.batch_wait_s)
        if len(entries) == self.config.batch_size < self.config.window:
            entries += self.consumer.read(self.config.window - len(entries), wait_s=0)
        return entries

    def _yield_to_serving(self) -> None:
        """Between the micro-batches of a window: back off while serving is under pressure, as between
        windows (`_should_back_off` bounds it)."""
        while self._should_back_off():
            self.state.counters.backoffs += 1
            time.sleep(self.config.backoff_s)

    def _recover(self) -> None:
        snapshot, problems = self.store.load_latest_valid()
        for problem in problems:
            log.warning(json.dumps({"event": "snapshot_skipped", "reason": problem}))
        if snapshot is not None:
            self._restore_state(self.learner.restore(snapshot) or {})
        self._updates_at_snapshot = self.learner.counters.updates
        self._durable_cursor = self.state.cursor
        self.consumer.ensure_group(self.state.cursor)
        pending = self.consumer.recover(self.state.cursor)
        reread = self.consumer.acknowledged_after(self.state.cursor)
        entries = sorted(pending + reread, key=lambda e: stream_id_key(e.stream_id))
        for window in _recovery_windows(entries, self.config.window):
            self._apply(window)
        log.info(
            json.dumps(
                {
                    "event": "recovered",
                    "cursor": self.state.cursor,
                    "reapplied": len(pending),
                    "reread": len(reread),
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

    def _apply(self, entries: list[Entry], replaying: bool = False) -> None:
        """Learn from the entries after the cursor; while `replaying` a rollback, alarms only report."""
        fresh = [e for e in entries if self._after_cursor(e.stream_id)]
        if not fresh:
            return
        fresh.sort(key=lambda e: stream_id_key(e.stream_id))
        self.state.counters.read += len(fresh)
        self._join_served(fresh)
        fresh = self._refuse_past_label_cap(fresh)
        examples = [Example(e.record.text, e.record.label, e.record.id) for e in fresh]
        self.consumer.applying([e.stream_id for e in fresh])
        report = self.learner.learn_window(
            examples, self.config.micro_batch(len(examples)), between=self._yield_to_serving
        )
        self.consumer.applied()
        self.state.counters.held_out += report.held_out
        self.state.counters.applied += report.trained
        if fresh:
            self.state.cursor = fresh[-1].stream_id
        self._unsnapshotted += len(fresh)
        if self.config.ledger:
            self.state.ledger += ledger_rows(fresh, report.held_out_mask)
        if report.evaluated:
            rolled_back_to = None if replaying else self._act_on_alarms(report.alarms)
            self._publish_evaluation(report.alarms, rolled_back_to)

    def _join_served(self, entries: list[Entry]) -> None:
        """Score the served predictions this feedback names. Each is joined once (replays find it gone),
        and a Redis error only leaves them unmeasured: learning goes on."""
        named = [(e.record.prediction_id, e.record.label) for e in entries if e.record.prediction_id]
        if not named:
            return
        try:
            join_feedback(self.client, self.keys, named)
        except redis.RedisError as err:
            log.warning(json.dumps({"event": "served_join_failed", "error": repr(err)}))

    def _act_on_alarms(self, alarms: list[Alarm]) -> str | None:
        """Apply the alarm policy; the id of the snapshot rolled back to, if it rolled back."""
        if not alarms or self.config.alarm_policy is AlarmPolicy.ALERT:
            return None
        if self.config.alarm_policy is AlarmPolicy.PAUSE:
            self.paused = True
            self.control.pause("forgetting alarm: learning paused by the alarm policy")
            return None
        target = self._last_snapshot_without_alarm()
        if target is None:
            return None
        self._return_to(target, replay=False)
        # Snapshot at once, so every replica serves the weights rolled back to.
        self._snapshot_requested = True
        log.warning(json.dumps({"event": "rollback", "to": target.id, "reason": "forgetting alarm"}))
        return target.id

    def _last_snapshot_without_alarm(self) -> Snapshot | None:
        self._finish_write()
        for manifest in self.store.list():
            if manifest.info.get("alarms") == 0 and manifest.info.get("promoted", True):
                try:
                    return self.store.load(manifest.id)
                except SnapshotError as err:
                    log.warning(json.dumps({"event": "snapshot_skipped", "reason": str(err)}))
        return None

    def _after_cursor(self, stream_id: str) -> bool:
        return self.state.cursor is None or stream_id_key(stream_id) > stream_id_key(self.state.cursor)

    def _refuse_past_label_cap(self, entries: list[Entry]) -> list[Entry]:
        """Entries whose new label would pass the cap go to the dead-letter stream; the rest still train."""
        fits = self.learner.admissible([e.record.label for e in entries])
        for entry, fit in zip(entries, fits, strict=True):
            if not fit:
                reason = (
                    f"label {entry.record.label!r} would take the label set past its cap of "
                    f"{self.learner.config.max_labels}; raise the cap or reuse existing labels"
                )
                self.consumer.dead_letter(entry, reason)
        return [entry for entry, fit in zip(entries, fits, strict=True) if fit]

    def _snapshot_due(self) -> bool:
        if self._write is not None or not self._unsnapshotted or time.monotonic() < self._snapshot_retry_at:
            return False
        if self._snapshot_requested:
            return True
        # Counted from the last snapshot: examples that took no step (nothing to learn yet) do not count.
        since = self.learner.counters.updates - self._updates_at_snapshot >= self.config.snapshot_every
        stale = time.monotonic() - self._last_snapshot_at >= self.config.snapshot_every_s
        return since or stale

    def snapshot(self) -> Manifest | None:
        """Write a snapshot and wait until it is durable, acknowledged and announced (`_start_snapshot`).

        None when the write failed: the error is logged and counted, nothing is acknowledged, and the next
        attempt comes after `snapshot_retry_s`.
        """
        with self._write_lock:
            self._start_snapshot()
            return self._finish_write()

    def _start_snapshot(self) -> None:
        """Serialize what a snapshot holds and write it off the training thread, which goes on learning;
        `_snapshot_written` acknowledges, trims and announces once it is durable. One write at a time, so
        versions land in order."""
        with self._write_lock:
            self._finish_write()
            self._hold_lease()
            crash_point("before_snapshot")
            promoted = self._passes_promotion()
            began = time.monotonic()
            previous = version = self.learner.counters.model_version
            try:
                version = self._next_version()
                info = {"cursor": self.state.cursor, "promoted": promoted}
                tensors, state, details = self.learner.snapshot_contents(version, info, self._extra_state())
                latest = self.store.latest()
                # The pages the last step's activations freed go back first, so that the payload adds
                # to what the learner holds, not to what its allocator kept.
                release_free_memory()
                payload = serialized(tensors, state)
            except Exception as err:
                self._snapshot_failed(err, version, previous)
                return
            taken = _Taken(
                self.state.cursor,
                self._unsnapshotted,
                self.learner.counters.updates,
                began,
                time.monotonic() - began,
            )
            written = self._writer.submit(
                _write_then_release,
                self.store.write,
                payload,
                details,
                latest.id if latest else None,
                version,
            )
            self._write = _Write(
                written,
                lambda manifest: self._snapshot_written(manifest, taken, promoted),
                lambda err: self._snapshot_failed(err, version, previous),
            )

    def _snapshot_written(self, manifest: Manifest, taken: _Taken, promoted: bool) -> None:
        crash_point("after_snapshot")
        # A learner whose lease went while it wrote must leave acknowledging, trimming and announcing to the
        # new holder, which recovers from the newest snapshot whatever it holds: each is checked for itself.
        self._hold_lease()
        acked = self.consumer.ack_through(taken.cursor) if taken.cursor else 0
        # Keep what the previous snapshot lacks, in case this one turns out unreadable (see `_recover`).
        previous, self._durable_cursor = self._durable_cursor, taken.cursor
        self._hold_lease()
        trimmed = self.consumer.trim(previous, self.config.retention) if previous else 0
        self._hold_lease()
        if promoted:
            note = self._take_rollback_note()
            publish_version(self.client, self.keys, manifest.version, manifest.id, rolled_back_to=note)
        self._publish_counters()
        elapsed = taken.at - self._last_snapshot_at
        summary = self.learner.summary()
        log.info(
            json.dumps(
                {
                    "event": "snapshot",
                    "version": manifest.version,
                    "snapshot": manifest.id,
                    "updates": taken.updates,
                    "cursor": taken.cursor,
                    "acked": acked,
                    "trimmed": trimmed,
                    "examples_per_s": round(taken.entries / max(elapsed, 1e-9), 2),
                    "lag": self.consumer.pending(),
                    "serialize_s": round(taken.serialize_s, 3),
                    "write_s": round(time.monotonic() - taken.at, 3),
                    "promoted": promoted,
                    "mean_accuracy": summary["mean_accuracy"],
                    "max_forgetting": summary["max_forgetting"],
                }
            )
        )
        self._unsnapshotted -= taken.entries
        self._updates_at_snapshot = taken.updates
        self._last_snapshot_at = taken.at
        self._snapshot_retry_at = 0.0
        self._snapshot_requested = False
        self._mark_published(taken.updates, taken.at)

    def _settle_write(self) -> None:
        """Act on a write that has finished, if one has; never waits."""
        with self._write_lock:
            if self._write is not None and self._write.written.done():
                self._finish_write()

    def _finish_write(self) -> Manifest | None:
        """Wait for the write in flight, if any, then do what follows it: its manifest, or None when it
        failed or there was none."""
        with self._write_lock:
            write, self._write = self._write, None
            if write is None:
                return None
            try:
                manifest = write.written.result()
            except Exception as err:
                # A store may fail in any way (an object store's client error is no OSError): whatever it
                # is, nothing was acknowledged or announced, so keep learning and try again later.
                write.fail(err)
                return None
            write.settle(manifest)
            return manifest

    def _abandon_write(self) -> None:
        """On stepping down: let the write in flight end, and act on none of it."""
        with self._write_lock:
            if self._write is not None:
                wait_for([self._write.written])
                self._write = None

    def _hold_lease(self) -> None:
        """Raise LeaseLostError unless this learner still holds the lease (renewing it)."""
        if not self.lease.renew():
            raise LeaseLostError(self.keys.lease)

    def _snapshot_failed(self, err: Exception, version: int, previous: int) -> None:
        if self.learner.counters.model_version == version:
            self.learner.counters.model_version = previous
        self.state.counters.snapshot_failures += 1
        self._snapshot_retry_at = time.monotonic() + self.config.snapshot_retry_s
        log.error(
            json.dumps(
                {
                    "event": "snapshot_failed",
                    "error": str(err),
                    "unacknowledged": self._unsnapshotted,
                    "retry_in_s": self.config.snapshot_retry_s,
                }
            )
        )
        self._publish_counters()

    def _start_publication(self) -> None:
        """Serialize the current weights and publish them for serving (not for recovery) off the training
        thread; `_published` announces them once written."""
        with self._write_lock:
            self._finish_write()
            updates, now = self.learner.counters.updates, time.monotonic()
            if not self._passes_promotion():
                self._mark_published(updates, now)
                self._publish_counters()
                return
            try:
                version = self._next_version()
                tensors, state, info = self.learner.publication_contents()
                payload = serialized(tensors, state)
            except Exception as err:
                self._publication_failed(err, updates, now)
                return
            written = self._writer.submit(self.published.write, payload, info, None, version)
            self._write = _Write(
                written,
                lambda manifest: self._published(manifest, updates, now),
                lambda err: self._publication_failed(err, updates, now),
            )

    def _published(self, manifest: Manifest, updates: int, at: float) -> None:
        self._hold_lease()
        self.learner.counters.model_version = max(self.learner.counters.model_version, manifest.version)
        note = self._take_rollback_note()
        publish_version(self.client, self.keys, manifest.version, manifest.id, "weights", rolled_back_to=note)
        self._publish_counters()
        self._mark_published(updates, at)

    def _publication_failed(self, err: Exception, updates: int, at: float) -> None:
        # Whatever the store raised, serving waits for the next snapshot instead; learning goes on.
        self.state.counters.publish_failures += 1
        log.error(json.dumps({"event": "publish_failed", "error": str(err)}))
        self._mark_published(updates, at)
        self._publish_counters()

    def _passes_promotion(self) -> bool:
        """Whether the current weights may be served; a failure is logged, counted and told to the API."""
        if not self.config.promotion_budget:
            return True
        began = time.monotonic()
        verdict = self.learner.check_promotion(self.config.promotion_budget)
        self._promotion_check_s = time.monotonic() - began
        status = None
        if not verdict.passed:
            self.state.counters.held_back += 1
            status = {
                "updates": self.learner.counters.updates,
                "reason": verdict.reason(),
                "held_back_at": time.time(),
            }
            log.warning(json.dumps({"event": "held_back", **status}))
        set_held_back(self.client, self.keys, status)
        return verdict.passed

    def _note_rollback(self, snapshot_id: str) -> None:
        # The restored counters are behind the rate mark: measure rates from here, not across the jump.
        self._rolled_back_to = snapshot_id
        learned = self.learner.counters
        self._rate_mark = (time.monotonic(), learned.updates, learned.examples_trained)

    def _take_rollback_note(self) -> str | None:
        """The snapshot rolled back to since the last publication, for the version log; given only once."""
        note, self._rolled_back_to = self._rolled_back_to, None
        return note

    def _mark_published(self, updates: int, at: float) -> None:
        """The weights of `updates` were published (or held back, or failed to be) at `at`."""
        self._published_updates = updates
        self._last_published_at = at

    def _publish_due(self) -> bool:
        if self.published is None or self.config.publish_every_s <= 0 or self._write is not None:
            return False
        changed = self.learner.counters.updates != self._published_updates
        waited = time.monotonic() - self._last_published_at
        return changed and waited >= publication_spacing(self.config.publish_every_s, self._promotion_check_s)

    def _next_version(self) -> int:
        """One sequence of versions over snapshots and weight publications, so replicas always move on."""
        published = self.published.max_version() if self.published else 0
        return max(self.store.max_version(), published, self.learner.counters.model_version) + 1

    def _follow_control(self) -> None:
        wanted = self.control.state()
        if wanted.rollback is not None:
            self._roll_back(wanted.rollback)
        if wanted.probes_revision != self._probes_revision:
            self._sync_probes(wanted.probes_revision)
        if wanted.label_removals:
            self._remove_labels(wanted.label_removals)
        self.paused = wanted.paused is not None

    def _remove_labels(self, labels: frozenset[str]) -> None:
        """Take the labels out and snapshot at once, so every replica serves the model without them; the
        request is marked done only once that snapshot is durable (a failed one is tried again)."""
        removed = self.learner.remove_labels(sorted(labels))
        if removed:
            log.info(json.dumps({"event": "labels_removed", "labels": removed}))
        if self.snapshot() is not None:
            self.control.finish_label_removal(labels)

    def _should_back_off(self) -> bool:
        """Back off while serving is under pressure, but never longer than `backoff_max_s` in a row: then
        one step is taken anyway, so learning slows down under sustained load instead of stopping."""
        now = time.monotonic()
        if self._serving_under_pressure():
            self._backing_off_since = self._backing_off_since or now
            if now - self._backing_off_since < self.config.backoff_max_s:
                return True
        self._backing_off_since = None
        return False

    def _serving_under_pressure(self) -> bool:
        for replica in alive(self.client, self.keys.pressure).values():
            if replica.get("queue", 0) > self.config.backoff_queue:
                return True
            if replica.get("slowdown", 1.0) > self.config.backoff_slowdown:
                return True
        return False

    def _roll_back(self, request: RollbackRequest) -> None:
        """Continue from an earlier snapshot; replay the entries applied since only when asked."""
        self._finish_write()
        try:
            target = self.store.load(request.snapshot_id)
        except SnapshotError as err:
            log.warning(json.dumps({"event": "rollback_refused", "reason": str(err)}))
            self.control.finish_rollback(request)
            return
        replayed = self._return_to(target, replay=request.replay)
        manifest = self.snapshot()
        self.control.finish_rollback(request)
        log.info(
            json.dumps(
                {
                    "event": "rollback",
                    "to": request.snapshot_id,
                    "replayed": replayed,
                    "version": manifest.version if manifest else None,
                }
            )
        )

    def _return_to(self, target: Snapshot, replay: bool) -> int:
        """The one way back to an earlier snapshot, for operators and the alarm policy alike: the stream
        position stays where it is, and the entries applied since are applied again only with `replay`.
        Returns how many were."""
        current = self.state.cursor
        saved = self.learner.roll_back(target) or {}
        self.state.ledger = saved.get("ledger", [])
        self.state.cursor = saved.get("cursor")
        replayed = 0
        if replay and current is not None:
            entries = self.consumer.history(self.state.cursor, current)
            for start in range(0, len(entries), self.config.window):
                self._apply(entries[start : start + self.config.window], replaying=True)
            replayed = len(entries)
        self.state.cursor = current
        self.state.counters.rollbacks += 1
        self._note_rollback(target.id)
        self._probes_revision = None
        return replayed

    def _sync_probes(self, revision: int) -> None:
        """Make the registered probes match what operators put; evaluate at once if anything changed."""
        wanted = self.control.probes()
        registered = self.learner.registered_probes()
        changed = False
        for name in registered.keys() - wanted.keys():
            self.learner.remove_probe(name)
            changed = True
        for name, examples in wanted.items():
            if registered.get(name) == examples:
                continue
            try:
                self.learner.register_probe(name, examples)
                changed = True
            except ValueError as err:
                log.warning(json.dumps({"event": "probe_refused", "probe": name, "reason": str(err)}))
        self._probes_revision = revision
        if changed and self.learner.labels:
            self._publish_evaluation(self.learner.evaluate(), None)

    def _extra_state(self) -> dict[str, Any]:
        return {
            "cursor": self.state.cursor,
            "counters": asdict(self.state.counters),
            "ledger": self.state.ledger,
        }

    def _publish_evaluation(self, alarms: list[Alarm], rolled_back_to: str | None) -> None:
        forgetting = self.learner.forgetting_report()
        active = {alarm["probe"]: alarm for alarm in forgetting["alarms"]}
        figures = {
            probe["name"]: {**probe, "alarm": active.get(probe["name"])} for probe in forgetting["probes"]
        }
        record_evaluation(self.client, self.keys, self.learner.tracker.column(), figures)
        summary = forgetting["summary"]
        log.info(
            json.dumps(
                {
                    "event": "evaluation",
                    "version": self.learner.counters.model_version,
                    "updates": self.learner.counters.updates,
                    "mean_accuracy": summary["mean_accuracy"],
                    "max_forgetting": summary["max_forgetting"],
                    "alarms": [a.probe for a in alarms],
                    "rolled_back_to": rolled_back_to,
                }
            )
        )

    def _publish_counters(self) -> None:
        counters, learned = self.state.counters, self.learner.counters
        now = time.monotonic()
        since, updates_then, trained_then = self._rate_mark
        elapsed = max(now - since, 1e-9)
        self._rate_mark = (now, learned.updates, learned.examples_trained)
        set_counters(
            self.client,
            self.keys,
            {
                "updates_per_s": round((learned.updates - updates_then) / elapsed, 3),
                "examples_per_s": round((learned.examples_trained - trained_then) / elapsed, 3),
                "keep_rate": round(self.learner.keep_rate(), 4),
                "read": counters.read,
                "applied": counters.applied,
                "held_out": counters.held_out,
                "updates": self.learner.counters.updates,
                "skipped_steps": self.learner.counters.skipped_steps,
                "backoffs": counters.backoffs,
                "rollbacks": counters.rollbacks,
                "snapshot_failures": counters.snapshot_failures,
                "publish_failures": counters.publish_failures,
                "held_back": counters.held_back,
                "pending": self.consumer.pending(),
            },
        )
        rates = self.learner.keep_rates()
        set_keep_rates(self.client, self.keys, {layer: round(rate, 4) for layer, rate in rates.items()})
        set_prequential(self.client, self.keys, self.learner.prequential.report())


def _recovery_windows(entries: list[Entry], size: int) -> list[list[Entry]]:
    """Windows of `size` in ID order, except that an entry the learner died applying before is applied
    on its own: if it kills the learner again, only it is counted, not its innocent neighbours."""
    batches: list[list[Entry]] = []
    for entry in entries:
        if entry.failures or not batches or batches[-1][0].failures or len(batches[-1]) == size:
            batches.append([entry])
        else:
            batches[-1].append(entry)
    return batches


def _write_then_release(
    write: Callable[..., Manifest], payload: dict[str, bytes | bytearray], *args: object
) -> Manifest:
    """`write(payload, *args)` on the writer thread, then drop the payload and give its memory back to the
    system, so that the next snapshot does not raise the learner's resident memory again. Publications
    keep theirs: giving pages back makes the next step fault them in again, 5 to 7% slower, and a
    publication's freed bytes are reused by the next one, of the same size."""
    try:
        return write(payload, *args)
    finally:
        payload.clear()
        release_free_memory()
