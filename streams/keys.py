"""Names of every Redis key of one model. They share the `{model}` hash tag, so on Redis Cluster they live on
one slot and multi-key scripts work."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True)
class StreamKeys:
    prefix: str = "rt"
    model: str = "default"

    def __post_init__(self) -> None:
        for what, value in (("prefix", self.prefix), ("model", self.model)):
            if not _NAME.match(value):
                raise ValueError(f"key {what} {value!r} must be 1-64 letters, digits, '_', '.' or '-'")

    def _key(self, name: str) -> str:
        return f"{self.prefix}:{{{self.model}}}:{name}"

    @property
    def feedback(self) -> str:
        """The stream of labelled feedback."""
        return self._key("feedback")

    @property
    def dead(self) -> str:
        """Entries the learner could not use, with the reason."""
        return self._key("dead")

    @property
    def applying(self) -> str:
        """The stream IDs of the micro-batch the learner is applying now (JSON); gone once it is applied."""
        return self._key("applying")

    @property
    def label_removals(self) -> str:
        """Set: labels an operator asked the learner to take out of the model, until it has."""
        return self._key("label_removals")

    @property
    def requeued(self) -> str:
        """Hash: dead letters an operator put back on the stream, to the ID each got there."""
        return self._key("requeued")

    @property
    def failures(self) -> str:
        """Hash: times applying an entry failed (the learner died while applying its micro-batch), by ID."""
        return self._key("failures")

    @property
    def versions(self) -> str:
        """Pub/sub channel announcing each new published model version."""
        return self._key("versions")

    @property
    def evals(self) -> str:
        """Recent evaluations (a bounded list of JSON documents)."""
        return self._key("evals")

    @property
    def probe_figures(self) -> str:
        """Every tracked probe's current figures (a hash of probe name to JSON), replaced per evaluation."""
        return self._key("probe_figures")

    @property
    def served(self) -> str:
        """Totals of served predictions and of the feedback joined to them (a hash of counters)."""
        return self._key("served")

    @property
    def served_recent(self) -> str:
        """Outcome and label delay of the latest joins (a bounded list, newest first)."""
        return self._key("served_recent")

    def served_period(self, period: int) -> str:
        """The predictions served in one period, by prediction id (a hash that expires whole)."""
        return self._key(f"served:{period:x}")

    @property
    def version_log(self) -> str:
        """Recent version announcements (a bounded list of JSON documents), newest first."""
        return self._key("version_log")

    @property
    def keep_rates(self) -> str:
        """The MIGU keep-rate of each gated layer at the learner's last step (JSON, in model order)."""
        return self._key("keep_rates")

    @property
    def prequential(self) -> str:
        """The learner's prequential accuracy (JSON): each example scored before it was learned from."""
        return self._key("prequential")

    @property
    def held_back(self) -> str:
        """Why the learner's newest weights are not served (JSON); absent while they passed their check."""
        return self._key("held_back")

    @property
    def lease(self) -> str:
        """Holder of the right to learn for this model."""
        return self._key("lease")

    @property
    def counters(self) -> str:
        """Hash of stream counters: read, applied, held out, duplicates, dead-lettered."""
        return self._key("counters")

    @property
    def backlog(self) -> str:
        """Count of accepted entries not yet acknowledged by the learner group."""
        return self._key("backlog")

    @property
    def control(self) -> str:
        """Hash of what operators asked of the learner: pause, rollback, probes revision."""
        return self._key("control")

    @property
    def probes(self) -> str:
        """Hash of registered probe sets: name to JSON list of [text, label] pairs."""
        return self._key("probes")

    @property
    def learners(self) -> str:
        """Hash of learner heartbeats: process name to JSON state and expiry."""
        return self._key("learners")

    @property
    def pressure(self) -> str:
        """Hash of serving pressure reported by each API replica, read by the learner to back off."""
        return self._key("pressure")

    def rate(self, bucket: str, who: str, window: int) -> str:
        """Requests one client (hashed: it is an API key) made in `bucket` during one rate-limit window."""
        return self._key(f"rate:{bucket}:{hashlib.sha256(who.encode()).hexdigest()[:32]}:{window}")

    def dedup(self, client_id: str) -> str:
        """Stream ID first added under a client idempotency key (hashed: the id is client text)."""
        return self._key(f"dedup:{hashlib.sha256(client_id.encode()).hexdigest()[:32]}")
