"""The promotion check: whether new weights may be served, decided before they are published.

Weights are published every few seconds, long before the next evaluation of the probes; without a check,
a poisoned burst (texts of one label fed back as another) would reach users first and be caught later.
Before weights are published the learner scores *canaries*: for each label at risk, up to `CANARIES` probe
examples of that label which their set's reference evaluation got right. The weights fail when, for some
label, at least `REQUIRED_WRONG` canaries are wrong now and the drop that implies is above the alarm
threshold: what the full evaluation would call a significant alarm.

Why these numbers. Every canary was right at the reference, so each one wrong now is a discordant pair of
the paired test the forgetting alarm uses (`learner.forgetting`), and none can be discordant the other
way: 7 wrong gives p = 0.5 ** 7 = 0.0078, below `SIGNIFICANCE`, and 6 would not (0.016). An eighth canary
leaves room for one example that was right by luck. Churn alone (each prediction flipping with
probability q, independently) sends 7 of 8 wrong with probability about 8 q ** 7: 6e-7 at q = 0.1, so a
sound version is almost never held back. A label with fewer than 7 canaries is not judged. The implied
drop is the label's reference accuracy times the share of its canaries gone wrong.

Labels at risk are those whose decisions may have moved: each label trained on since the last passing
check, and the label the model predicted for each of those examples just before learning it (a burst of
A's texts labelled B trains B, and it is A's examples that go wrong). A check takes them most-touched first,
`budget // CANARIES` labels; the rest stay at risk and go first at the next check.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from learner.forgetting import SIGNIFICANCE, binomial_tail
from learner.probes import ProbeSet

CANARIES = 8
REQUIRED_WRONG = 7


@dataclass(frozen=True)
class LabelCheck:
    """One label's canaries at this check."""

    label: str
    checked: int
    wrong: int
    reference_accuracy: float

    @property
    def p_value(self) -> float:
        return binomial_tail(self.wrong, self.wrong)

    @property
    def drop(self) -> float:
        return self.reference_accuracy * self.wrong / self.checked if self.checked else 0.0

    def fails(self, threshold: float) -> bool:
        return self.wrong >= REQUIRED_WRONG and self.p_value < SIGNIFICANCE and self.drop > threshold

    def describe(self) -> str:
        return (
            f"label {self.label!r}: {self.wrong} of {self.checked} probe examples it had right are wrong "
            f"now (p = {self.p_value:.4f})"
        )


@dataclass(frozen=True)
class Verdict:
    """The outcome of one promotion check: which labels were judged and which of them failed."""

    checked: list[LabelCheck]
    failed: list[LabelCheck]

    @property
    def passed(self) -> bool:
        return not self.failed

    @property
    def texts(self) -> int:
        return sum(check.checked for check in self.checked)

    def reason(self) -> str | None:
        """Why the weights were held back, or None when they passed."""
        return "; ".join(check.describe() for check in self.failed) or None


@dataclass
class _Pool:
    right: list[str]
    scored: int = 0


def canaries(
    probes: Iterable[ProbeSet], reference: Callable[[str], str], labels: Iterable[str]
) -> dict[str, tuple[list[str], float]]:
    """For each label with enough of them, up to `CANARIES` texts its probes' reference got right (spread
    evenly over them, so the choice is fixed until a reference moves), and the label's reference accuracy."""
    pools = {label: _Pool([]) for label in labels}
    for probe in probes:
        outcomes = reference(probe.name)
        for (text, label), right in zip(probe.examples, outcomes, strict=False):
            pool = pools.get(label)
            if pool is None:
                continue
            pool.scored += 1
            if right == "1":
                pool.right.append(text)
    chosen = {}
    for label, pool in pools.items():
        if len(pool.right) < REQUIRED_WRONG:
            continue
        step = max(len(pool.right) / CANARIES, 1.0)
        picked = [pool.right[int(i * step)] for i in range(min(CANARIES, len(pool.right)))]
        chosen[label] = (picked, len(pool.right) / pool.scored)
    return chosen


def check(
    chosen: dict[str, tuple[list[str], float]],
    predict: Callable[[list[str]], list[str]],
    threshold: float,
) -> Verdict:
    """Score every label's canaries in one call of `predict` and judge each label."""
    texts = [text for picked, _ in chosen.values() for text in picked]
    predicted = iter(predict(texts) if texts else [])
    checked = []
    for label, (picked, accuracy) in chosen.items():
        wrong = sum(next(predicted) != label for _ in picked)
        checked.append(LabelCheck(label, len(picked), wrong, accuracy))
    return Verdict(checked, [c for c in checked if c.fails(threshold)])
