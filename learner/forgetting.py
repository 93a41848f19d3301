"""Forgetting measured on probe sets over time, with no task boundaries, and classic task-based metrics.

A probe's forgetting is its best accuracy so far minus its current accuracy; its backward transfer (BWT)
is its current accuracy minus its first. The tracker keeps these per probe over a stream of evaluations
and raises an alarm when a probe's forgetting crosses a threshold.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

# Accuracies are ratios such as 7/10; rounding their differences keeps 0.9 - 0.7 from reading as
# 0.20000000000000007 and crossing a 0.2 threshold it only touches.
_DIGITS = 12


class AlarmPolicy(StrEnum):
    """What the learner does when a forgetting alarm fires."""

    ALERT = "alert"
    PAUSE = "pause"
    ROLLBACK = "rollback"


@dataclass(frozen=True)
class Alarm:
    """A probe's forgetting went above the threshold at this evaluation."""

    probe: str
    forgetting: float
    best_accuracy: float
    accuracy: float
    updates: int
    model_version: int
    at: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Alarm:
        return cls(
            probe=str(data["probe"]),
            forgetting=float(data["forgetting"]),
            best_accuracy=float(data["best_accuracy"]),
            accuracy=float(data["accuracy"]),
            updates=int(data["updates"]),
            model_version=int(data["model_version"]),
            at=str(data["at"]),
        )


@dataclass
class _Evaluation:
    updates: int
    model_version: int
    at: str
    accuracies: dict[str, float]


@dataclass
class _ProbeStats:
    first: float
    best: float
    current: float

    @property
    def forgetting(self) -> float:
        return round(self.best - self.current, _DIGITS)

    @property
    def bwt(self) -> float:
        return round(self.current - self.first, _DIGITS)


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _accuracy(name: object, value: Any) -> float:
    if not isinstance(name, str):
        raise ValueError(f"probe names must be strings, got {name!r}")
    accuracy = float(value)
    if not (math.isfinite(accuracy) and 0.0 <= accuracy <= 1.0):
        raise ValueError(f"accuracy of probe {name!r} must be in [0, 1], got {value!r}")
    return accuracy


class ForgettingTracker:
    """Accuracy of every probe over the learner's evaluations, and the forgetting it shows.

    The last `max_history` evaluations are kept (the history and the matrix are windows onto those),
    while each probe's first and best accuracy stay exact for as long as the probe appears in a kept
    evaluation. A probe no kept evaluation mentions any more is dropped; `forget` drops one at once.

    Alarms: when a probe's forgetting goes above `alarm_threshold`, one `Alarm` fires; it stays active,
    without firing again, until the forgetting is back at or below the threshold (or the probe is missing
    from an evaluation), and may fire again after that. The last `max_alarm_log` alarms are logged.
    """

    def __init__(
        self, alarm_threshold: float = 0.2, max_history: int = 500, max_alarm_log: int = 1000
    ) -> None:
        if not 0.0 <= alarm_threshold < 1.0:
            raise ValueError(f"alarm_threshold must be in [0, 1), got {alarm_threshold!r}")
        if max_history < 1 or max_alarm_log < 1:
            raise ValueError("max_history and max_alarm_log must be at least 1")
        self.alarm_threshold = alarm_threshold
        self.max_history = max_history
        self.max_alarm_log = max_alarm_log
        self._evaluations: deque[_Evaluation] = deque(maxlen=max_history)
        self._stats: dict[str, _ProbeStats] = {}
        self._active: dict[str, Alarm] = {}
        self._log: deque[Alarm] = deque(maxlen=max_alarm_log)

    def record(
        self, updates: int, model_version: int, accuracies: Mapping[str, float], at: str | None = None
    ) -> list[Alarm]:
        """Add one evaluation (accuracy per probe); return the alarms that fired at it, by probe name."""
        current = {name: _accuracy(name, value) for name, value in accuracies.items()}
        evaluation = _Evaluation(int(updates), int(model_version), at or _now(), current)
        evicted = self._evaluations[0] if len(self._evaluations) == self.max_history else None
        self._evaluations.append(evaluation)
        if evicted is not None:
            self._drop_unseen(evicted.accuracies.keys() - current.keys())

        fired = []
        for name in sorted(current):
            accuracy = current[name]
            stats = self._stats.get(name)
            if stats is None:
                stats = self._stats[name] = _ProbeStats(first=accuracy, best=accuracy, current=accuracy)
            else:
                stats.current = accuracy
                stats.best = max(stats.best, accuracy)
            if stats.forgetting <= self.alarm_threshold:
                self._active.pop(name, None)
            elif name not in self._active:
                alarm = Alarm(
                    probe=name,
                    forgetting=stats.forgetting,
                    best_accuracy=stats.best,
                    accuracy=accuracy,
                    updates=evaluation.updates,
                    model_version=evaluation.model_version,
                    at=evaluation.at,
                )
                self._active[name] = alarm
                self._log.append(alarm)
                fired.append(alarm)
        for name in self._active.keys() - current.keys():
            del self._active[name]
        return fired

    def forget(self, name: str) -> bool:
        """Drop a probe's history and state (it was deleted or replaced); False when it was not tracked."""
        known = self._stats.pop(name, None) is not None
        self._active.pop(name, None)
        for evaluation in self._evaluations:
            evaluation.accuracies.pop(name, None)
        return known

    def active_alarms(self) -> list[Alarm]:
        """Alarms still active, by probe name."""
        return [self._active[name] for name in sorted(self._active)]

    def alarm_log(self) -> list[Alarm]:
        """The most recent alarms ever fired, oldest first."""
        return list(self._log)

    def summary(self) -> dict[str, float | None]:
        """Mean accuracy, mean and max forgetting and mean BWT over the probes of the latest evaluation.

        All values are None before the first evaluation, or when the latest one had no probes.
        """
        latest = self._evaluations[-1].accuracies if self._evaluations else {}
        if not latest:
            return {"mean_accuracy": None, "mean_forgetting": None, "max_forgetting": None, "bwt": None}
        stats = [self._stats[name] for name in latest]
        forgetting = [probe.forgetting for probe in stats]
        return {
            "mean_accuracy": _mean(list(latest.values())),
            "mean_forgetting": _mean(forgetting),
            "max_forgetting": max(forgetting),
            "bwt": _mean([probe.bwt for probe in stats]),
        }

    def _entry(self, name: str, stats: _ProbeStats, history_limit: int | None) -> dict[str, Any]:
        history = [
            {"updates": ev.updates, "model_version": ev.model_version, "accuracy": ev.accuracies[name]}
            for ev in self._evaluations
            if name in ev.accuracies
        ]
        if history_limit is not None:
            history = history[-history_limit:] if history_limit > 0 else []
        return {
            "name": name,
            "accuracy": stats.current,
            "first_accuracy": stats.first,
            "best_accuracy": stats.best,
            "forgetting": stats.forgetting,
            "bwt": stats.bwt,
            "history": history,
        }

    def report(
        self,
        sizes: Mapping[str, int] | None = None,
        sources: Mapping[str, str] | None = None,
        history_limit: int | None = None,
    ) -> dict[str, Any]:
        """The latest evaluation's probes, summary and active alarms, shaped for the API.

        The tracker does not know probe sizes or sources; pass them to fill each probe's "size" and
        "source", which are None otherwise.
        """
        latest = self._evaluations[-1] if self._evaluations else None
        names = sorted(latest.accuracies) if latest else []
        probes = []
        for name in names:
            entry = self._entry(name, self._stats[name], history_limit)
            entry["size"] = sizes.get(name) if sizes is not None else None
            entry["source"] = sources.get(name) if sources is not None else None
            probes.append(entry)
        return {
            "model_version": latest.model_version if latest else None,
            "updates": latest.updates if latest else None,
            "evaluated_at": latest.at if latest else None,
            "summary": self.summary(),
            "probes": probes,
            "alarms": [alarm.to_dict() for alarm in self.active_alarms()],
        }

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable snapshot of the tracker's data (not its settings)."""
        return {
            "evaluations": [
                {
                    "updates": ev.updates,
                    "model_version": ev.model_version,
                    "at": ev.at,
                    "accuracies": dict(ev.accuracies),
                }
                for ev in self._evaluations
            ],
            "probes": {
                name: {"first": stats.first, "best": stats.best, "current": stats.current}
                for name, stats in self._stats.items()
            },
            "active_alarms": [alarm.to_dict() for alarm in self._active.values()],
            "alarm_log": [alarm.to_dict() for alarm in self._log],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace the tracker's data with a snapshot from `state_dict`."""
        try:
            evaluations = deque(
                (
                    _Evaluation(
                        updates=int(item["updates"]),
                        model_version=int(item["model_version"]),
                        at=str(item["at"]),
                        accuracies={name: _accuracy(name, v) for name, v in item["accuracies"].items()},
                    )
                    for item in state["evaluations"]
                ),
                maxlen=self.max_history,
            )
            stats = {
                name: _ProbeStats(
                    first=_accuracy(name, item["first"]),
                    best=_accuracy(name, item["best"]),
                    current=_accuracy(name, item["current"]),
                )
                for name, item in state["probes"].items()
            }
            active = {alarm.probe: alarm for alarm in map(Alarm.from_dict, state["active_alarms"])}
            log = deque(map(Alarm.from_dict, state["alarm_log"]), maxlen=self.max_alarm_log)
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"malformed forgetting tracker state: {exc!r}") from exc
        # summary() and report() look every evaluated probe up in the per-probe state.
        missing = {name for ev in evaluations for name in ev.accuracies} - stats.keys()
        if missing:
            raise ValueError(f"malformed forgetting tracker state: no state for probes {sorted(missing)}")
        self._evaluations, self._stats, self._active, self._log = evaluations, stats, active, log

    def _drop_unseen(self, names: set[str]) -> None:
        """Forget probes that no kept evaluation mentions any more, so state stays bounded."""
        for name in names:
            if not any(name in ev.accuracies for ev in self._evaluations):
                self._stats.pop(name, None)
                self._active.pop(name, None)


@dataclass(frozen=True)
class TaskMetrics:
    """Classic continual-learning metrics: average accuracy, forgetting and backward transfer."""

    aa: float
    forgetting: float
    bwt: float


def task_metrics(matrix: Sequence[Sequence[float]], learned_at: Sequence[int] | None = None) -> TaskMetrics:
    """Metrics of an accuracy matrix where matrix[i][j] is the accuracy on task j at evaluation i.

    By default the matrix is T x T and task i is learned just before evaluation i. A longer stream, where a
    task comes back, gives `learned_at[j]`: the evaluation right after task j was first learned.
    aa is the mean of the last row; forgetting is the mean, over tasks first learned before the last
    evaluation, of the best accuracy on the task at an earlier evaluation minus the final one; bwt the mean of
    the final accuracy minus the accuracy right after first learning it. Both are 0.0 when no task qualifies.
    """
    evaluations = len(matrix)
    if learned_at is None:
        if evaluations == 0 or any(len(row) != evaluations for row in matrix):
            raise ValueError("the accuracy matrix must be square and non-empty")
        learned_at = range(evaluations)
    elif evaluations == 0 or any(len(row) != len(learned_at) for row in matrix):
        raise ValueError("every row of the accuracy matrix needs one accuracy per task in learned_at")
    if any(not 0 <= at < evaluations for at in learned_at):
        raise ValueError(f"learned_at must index the matrix's {evaluations} evaluations")
    last = matrix[-1]
    aa = _mean(list(last))
    earlier = [j for j, at in enumerate(learned_at) if at < evaluations - 1]
    if not earlier:
        return TaskMetrics(aa=aa, forgetting=0.0, bwt=0.0)
    forgetting = _mean([max(matrix[i][j] for i in range(evaluations - 1)) - last[j] for j in earlier])
    bwt = _mean([last[j] - matrix[learned_at[j]][j] for j in earlier])
    return TaskMetrics(aa=aa, forgetting=forgetting, bwt=bwt)
