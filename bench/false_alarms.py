"""How often the forgetting alarm fires when nothing is forgotten, and how fast it fires when a label is.

    python -m bench.false_alarms [--streams 20] [--examples 20000] [--labels 5]
                                 [--out bench/results/false_alarms.json]

Each stream runs through the real `ProbeRegistry` and `ForgettingTracker` with the learner's defaults
(5% held out, sets per label and window, an evaluation every `eval_every` updates of 16 examples), with a
simulated model in place of the network, so that the truth is known:

- `frozen`: every example is right or wrong once and for all (right with probability 0.7);
- `churn`: at every evaluation, 20% of the examples are answered anew (right with probability 0.7), so
  answers change and accuracy does not: a model that keeps learning and forgets nothing;
- `flip`: as `frozen`, until halfway, when every example of one label becomes wrong: real forgetting.

Three rules read the same stream: `paired` is the learner's (each evaluation scores the sets due within
`eval_budget` texts, as `OnlineLearner.evaluate` does; forgetting against a reference that moves only on a
significant gain, an alarm only when the drop is above the threshold and significant), `max` the rule
it replaced (forgetting against the best accuracy so far, an alarm above the threshold) on the same probe
sets, and `before` that rule on the sets as they were before sets had a minimum size (one per label and
window, evaluated from their first example). Counted: the alarms per 1,000 probe evaluations and the
streams with any alarm where nothing was forgotten, and, for `flip`, how many evaluations after the flip
the flipped label's first alarm came and how many alarms were false (another label, or before the flip).
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.meta import run_metadata
from learner.forgetting import ForgettingTracker
from learner.online import LearnerConfig
from learner.probes import ProbeRegistry, ProbeSet, due_for_evaluation, evaluate, held_out

RIGHT = 0.7
CHURN = 0.2
SCENARIOS = ("frozen", "churn", "flip")
RULES = ("paired", "max", "before")


class SimulatedModel:
    """Answers probe texts right or wrong as its scenario says; a text starts with its label."""

    def __init__(self, scenario: str, rng: random.Random, flipped_label: str) -> None:
        self.scenario, self.rng, self.flipped_label = scenario, rng, flipped_label
        self.right: dict[str, bool] = {}
        self.flipped = False

    def next_evaluation(self, past_half: bool) -> None:
        self.flipped = self.scenario == "flip" and past_half
        if self.scenario == "churn":
            for text in self.right:
                if self.rng.random() < CHURN:
                    self.right[text] = self.rng.random() < RIGHT

    def predict(self, texts: list[str]) -> list[str]:
        answers = []
        for text in texts:
            label = text.split()[0]
            right = self.right.setdefault(text, self.rng.random() < RIGHT)
            answers.append(label if right and not (self.flipped and label == self.flipped_label) else "-")
        return answers


class MaxRule:
    """Forgetting against the best accuracy so far; an alarm when it is above the threshold."""

    def __init__(self, threshold: float) -> None:
        self.threshold, self.best, self.active = threshold, {}, set()

    def record(self, outcomes: dict[str, list[bool]]) -> list[str]:
        fired = []
        for name, values in outcomes.items():
            accuracy = sum(values) / len(values)
            self.best[name] = max(self.best.get(name, accuracy), accuracy)
            if self.best[name] - accuracy <= self.threshold:
                self.active.discard(name)
            elif name not in self.active:
                self.active.add(name)
                fired.append(name)
        return fired


def run_stream(scenario: str, seed: int, examples: int, labels: int) -> dict[str, Any]:
    config = LearnerConfig()
    names = [f"label{i}" for i in range(labels)]
    rng = random.Random(seed)
    salt = rng.randbytes(16)
    model = SimulatedModel(scenario, rng, flipped_label=names[0])
    registry = ProbeRegistry(config.probe_size, config.probe_window, min_size=config.probe_min_size)
    unsized = ProbeRegistry(config.probe_size, config.probe_window, min_size=1)
    tracker = ForgettingTracker(config.alarm_threshold)
    rules: dict[str, tuple[Callable[[], list[ProbeSet]], Callable[[dict[str, list[bool]]], list[str]]]] = {
        "paired": (
            lambda: due_for_evaluation(registry.evaluable(), config.eval_budget, tracker.last_evaluated),
            _paired(tracker),
        ),
        "max": (registry.evaluable, MaxRule(config.alarm_threshold).record),
        "before": (unsized.evaluable, MaxRule(config.alarm_threshold).record),
    }
    every = config.eval_every * 16
    alarms = {rule: [] for rule in RULES}
    probe_evaluations = {rule: 0 for rule in RULES}
    for position in range(examples):
        label = rng.choice(names)
        text = f"{label} {seed} {position}"
        if held_out(text, config.probe_fraction, salt):
            for probes in (registry, unsized):
                probes.add_held_out(text, label, position, updates=position // 16)
        if (position + 1) % every:
            continue
        model.next_evaluation(past_half=position >= examples // 2)
        for rule, (due, record) in rules.items():
            outcomes = evaluate(due(), model.predict)
            probe_evaluations[rule] += len(outcomes)
            alarms[rule] += [(position // every, name) for name in record(outcomes)]
    return {"evaluations": examples // every, "probe_evaluations": probe_evaluations, "alarms": alarms}


def _paired(tracker: ForgettingTracker) -> Callable[[dict[str, list[bool]]], list[str]]:
    updates = iter(range(1, 10**9))
    return lambda outcomes: [alarm.probe for alarm in tracker.record(next(updates), 1, outcomes)]


def _first_alarm(alarms: list[tuple[int, str]], label: str, half: int) -> int | None:
    """Evaluations from the flip to the label's first alarm after it (1: the first evaluation after it)."""
    return min((at - half + 1 for at, name in alarms if f":{label}:" in name and at >= half), default=None)


def _false(at: int, name: str, label: str, half: int) -> bool:
    return f":{label}:" not in name or at < half


def summarise(scenario: str, runs: list[dict[str, Any]], flipped: str, examples: int) -> dict[str, Any]:
    rows = {}
    for rule in RULES:
        if scenario == "flip":
            half = runs[0]["evaluations"] // 2
            delays = [_first_alarm(run["alarms"][rule], flipped, half) for run in runs]
            false = [
                sum(f":{flipped}:" not in name or at < half for at, name in run["alarms"][rule])
                for run in runs
            ]
            rows[rule] = {
                "detected": sum(delay is not None for delay in delays),
                "evaluations_to_alarm": [delay for delay in delays if delay is not None],
                "false_alarms": sum(false),
            }
            continue
        counts = [len(run["alarms"][rule]) for run in runs]
        evaluated = sum(run["probe_evaluations"][rule] for run in runs)
        rows[rule] = {
            "alarms": sum(counts),
            "probe_evaluations": evaluated,
            "per_1000": 1000 * sum(counts) / evaluated if evaluated else None,
            "streams_with_alarm": sum(count > 0 for count in counts),
        }
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, default=20)
    parser.add_argument("--examples", type=int, default=20_000)
    parser.add_argument("--labels", type=int, default=5)
    parser.add_argument("--out", default="bench/results/false_alarms.json")
    args = parser.parse_args(argv)
    result: dict[str, Any] = {
        **run_metadata("bench.false_alarms", argv),
        "streams": args.streams,
        "examples": args.examples,
        "labels": args.labels,
        "right": RIGHT,
        "churn": CHURN,
        "scenarios": {},
    }
    for scenario in SCENARIOS:
        runs = [run_stream(scenario, seed, args.examples, args.labels) for seed in range(args.streams)]
        result["scenarios"][scenario] = summarise(scenario, runs, "label0", args.examples)
        print(scenario, json.dumps(result["scenarios"][scenario]), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
