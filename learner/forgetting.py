"""Forgetting measured on probe sets over time, with no task boundaries, and classic task-based metrics.

A probe set's texts never change once it is evaluated, so two evaluations compare example by example. Of
the examples right at the reference evaluation, b are wrong now; of those wrong then, c are right now. The
probe's forgetting is the reference accuracy minus the current one, (b - c) / n, and it is significant
when b is more than chance would give out of the b + c that changed (one-sided exact binomial test,
McNemar's, at `SIGNIFICANCE`). Pairing removes the spread between examples that two independent accuracies
would carry, so a real drop shows on far fewer examples.

`best` is not the maximum of noisy estimates, which rises with every evaluation by luck alone: the
reference moves to a later evaluation only when that one is significantly better by the same test, and
`best` is the reference's accuracy. An alarm fires when the forgetting is above the threshold and
significant; with a model whose predictions never change, b = c = 0 and nothing can fire. BWT is the
current accuracy minus the first.

An evaluation may score only some probes (the learner spends a budget of texts per evaluation on the sets
evaluated longest ago): each probe keeps the figures of its own latest evaluation, and the summary is over
every tracked probe.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

SIGNIFICANCE = 0.01
Z_95 = 1.959964
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
    reference: str = ""  # "1"/"0" per example at the reference evaluation
    dropped: int = 0  # b: right at the reference, wrong now
    recovered: int = 0  # c: wrong at the reference, right now
    size: int = 0
    evaluated_updates: int = 0  # learner updates at this probe's latest evaluation

    @property
    def forgetting(self) -> float:
        """The drop on the examples the reference scored: `best` minus their accuracy now."""
        return (
            round((self.dropped - self.recovered) / len(self.reference), _DIGITS) if self.reference else 0.0
        )

    @property
    def bwt(self) -> float:
        return round(self.current - self.first, _DIGITS)

    @property
    def p_value(self) -> float:
        """How likely a drop at least this large is by chance, examples changing either way alike."""
        return binomial_tail(self.dropped, self.dropped + self.recovered)

    def compare(self, outcomes: Sequence[bool]) -> None:
        """Take this evaluation's outcomes and pair them with the reference's, example by example.

        The reference moves here when this evaluation is significantly better, or when the set has grown
        and is not significantly worse (so its new examples count from now on); a set only grows at its
        end, so the reference's examples are always the first ones."""
        now = "".join("1" if right else "0" for right in outcomes)
        self.current, self.size = _accuracy_of(outcomes), len(outcomes)
        if len(now) < len(self.reference):  # not the same set (state from before outcomes were kept)
            self.reference = ""
        pairs = list(zip(self.reference, now[: len(self.reference)], strict=True))
        self.dropped, self.recovered = pairs.count(("1", "0")), pairs.count(("0", "1"))
        better = binomial_tail(self.recovered, self.dropped + self.recovered) < SIGNIFICANCE
        grown = len(now) > len(self.reference) and self.p_value >= SIGNIFICANCE
        if better or grown:
            self.reference, self.best = now, self.current
            self.dropped = self.recovered = 0

    def significant_drop(self, threshold: float) -> bool:
        return self.forgetting > threshold and self.p_value < SIGNIFICANCE

    def intervals(self) -> dict[str, list[float]]:
        """95% intervals: Wilson's for the accuracy, the paired difference's for the forgetting."""
        return {
            "accuracy_interval": wilson(self.current, self.size),
            "forgetting_interval": paired_interval(self.dropped, self.recovered, len(self.reference)),
        }


def binomial_tail(successes: int, trials: int) -> float:
    """P(X >= successes) for X ~ Binomial(trials, 1/2): exact, for the small counts of a probe set."""
    if successes <= 0:
        return 1.0
    return sum(math.comb(trials, k) for k in range(successes, trials + 1)) / 2**trials


def wilson(accuracy: float, n: int) -> list[float]:
    """Wilson's 95% interval for a proportion measured on n examples."""
    if n == 0:
        return [0.0, 1.0]
    z2 = Z_95**2
    centre = (accuracy + z2 / (2 * n)) / (1 + z2 / n)
    half = Z_95 * math.sqrt(accuracy * (1 - accuracy) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return [round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4)]


def paired_interval(dropped: int, recovered: int, n: int) -> list[float]:
    """95% interval of (dropped - recovered) / n, the difference of two accuracies on the same n examples."""
    if n == 0:
        return [-1.0, 1.0]
    difference = (dropped - recovered) / n
    variance = ((dropped + recovered) / n - difference**2) / n
    half = Z_95 * math.sqrt(max(variance, 0.0))
    return [round(difference - half, 4), round(difference + half, 4)]


def _accuracy_of(outcomes: Sequence[bool]) -> float:
    if not outcomes:
        raise ValueError("a probe's outcomes must not be empty")
    return sum(map(bool, outcomes)) / len(outcomes)


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

    The last `max_history` evaluations are kept (each probe's history is a window onto those), while each
    probe's first and best accuracy stay exact until `forget` drops the probe (its set was retired,
    replaced or deleted).

    Alarms: when a probe's forgetting goes above `alarm_threshold` and is significant (see the module's
    notes), one `Alarm` fires; it stays active, without firing again, until an evaluation of that probe no
    longer shows it, and may fire again after that. The last `max_alarm_log` alarms are logged.
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
        self,
        updates: int,
        model_version: int,
        outcomes: Mapping[str, Sequence[bool]],
        at: str | None = None,
    ) -> list[Alarm]:
        """Add one evaluation (per probe it scored, whether each of its examples was right); return the
        alarms that fired at it, by probe name."""
        current = {name: _accuracy(name, _accuracy_of(values)) for name, values in outcomes.items()}
        evaluation = _Evaluation(int(updates), int(model_version), at or _now(), current)
        self._evaluations.append(evaluation)

        fired = []
        for name in sorted(current):
            accuracy = current[name]
            stats = self._stats.get(name)
            if stats is None:
                stats = self._stats[name] = _ProbeStats(first=accuracy, best=accuracy, current=accuracy)
            stats.compare(outcomes[name])
            stats.evaluated_updates = evaluation.updates
            if not stats.significant_drop(self.alarm_threshold):
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
        return fired

    def last_evaluated(self, name: str) -> int | None:
        """Learner updates at this probe's latest evaluation; None when it was never evaluated."""
        stats = self._stats.get(name)
        return None if stats is None else stats.evaluated_updates

    def reference(self, name: str) -> str:
        """Per example of this probe, "1" if its reference evaluation got it right, else "0"; empty when the
        probe is not tracked. The examples after its end joined the set since."""
        stats = self._stats.get(name)
        return "" if stats is None else stats.reference

    def __contains__(self, name: object) -> bool:
        """Whether this probe has been evaluated and is still tracked."""
        return name in self._stats

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
        """Mean accuracy, mean and max forgetting and mean BWT over every tracked probe, each as of its own
        latest evaluation. All values are None while no probe is tracked."""
        if not self._stats:
            return {"mean_accuracy": None, "mean_forgetting": None, "max_forgetting": None, "bwt": None}
        stats = list(self._stats.values())
        forgetting = [probe.forgetting for probe in stats]
        return {
            "mean_accuracy": _mean([probe.current for probe in stats]),
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
            "forgetting_p_value": round(stats.p_value, 6),
            **stats.intervals(),
            "bwt": stats.bwt,
            "history": history,
        }

    def report(
        self,
        sizes: Mapping[str, int] | None = None,
        sources: Mapping[str, str] | None = None,
        history_limit: int | None = None,
    ) -> dict[str, Any]:
        """Every tracked probe's latest figures, the summary and the active alarms, shaped for the API.

        The tracker does not know probe sizes or sources; pass them to fill each probe's "size" and
        "source", which are None otherwise.
        """
        latest = self._evaluations[-1] if self._evaluations else None
        names = sorted(self._stats)
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

    def column(self) -> dict[str, Any]:
        """The latest evaluation alone, compact: the summary, and one row per probe it scored,
        `[name, accuracy]`, or `[name, accuracy, forgetting, best_accuracy]` when an alarm fired on it
        then. Its size is bounded by the probes one evaluation scores, however many exist or however long
        the stream ran."""
        latest = self._evaluations[-1] if self._evaluations else None
        if latest is None:
            return {}
        fired = {alarm.probe: alarm for alarm in self._active.values() if alarm.at == latest.at}
        scored = []
        for name, accuracy in sorted(latest.accuracies.items()):
            alarm = fired.get(name)
            extra = [] if alarm is None else [round(alarm.forgetting, 4), round(alarm.best_accuracy, 4)]
            scored.append([name, round(accuracy, 4), *extra])
        return {
            "model_version": latest.model_version,
            "updates": latest.updates,
            "evaluated_at": latest.at,
            "summary": self.summary(),
            "alarms_active": len(self._active),
            "scored": scored,
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
            "probes": {name: asdict(stats) for name, stats in self._stats.items()},
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
                    reference=str(item.get("reference", "")),
                    dropped=int(item.get("dropped", 0)),
                    recovered=int(item.get("recovered", 0)),
                    size=int(item.get("size", 0)),
                    evaluated_updates=int(item.get("evaluated_updates", 0)),
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
