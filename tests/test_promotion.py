"""The promotion check: weights a poisoned burst broke are held back, sound ones pass, at a bounded cost."""

from __future__ import annotations

from learner.encoder import tiny_bert
from learner.online import Example, LearnerConfig, OnlineLearner
from learner.probes import REGISTERED, ProbeSet
from learner.promotion import CANARIES, canaries, check

SPORTS = [f"the team won the match {i} with a late goal" for i in range(16)]
FINANCE = [f"shares fell as the bank cut its forecast {i}" for i in range(16)]
WEATHER = [f"heavy rain and strong wind expected on day {i}" for i in range(16)]


def probe(name: str, examples: list[tuple[str, str]]) -> ProbeSet:
    return ProbeSet(name, REGISTERED, examples, created_at_update=0, capacity=len(examples))


def predicting(wrong: set[str]) -> object:
    """A model that gets every text right except those in `wrong`, which it calls "other"."""
    return lambda texts: ["other" if text in wrong else text.split(":")[0] for text in texts]


def sports_set(size: int) -> ProbeSet:
    return probe("golden", [(f"sports:{i}", "sports") for i in range(size)])


def test_seven_of_eight_canaries_gone_wrong_hold_the_weights_back_and_six_do_not() -> None:
    chosen = canaries([sports_set(8)], lambda name: "1" * 8, ["sports"])
    texts = chosen["sports"][0]
    assert len(texts) == CANARIES

    seven = check(chosen, predicting(set(texts[:7])), threshold=0.2)
    assert not seven.passed and seven.failed[0].wrong == 7
    assert "label 'sports': 7 of 8" in seven.reason()

    six = check(chosen, predicting(set(texts[:6])), threshold=0.2)  # p = 0.5 ** 6 is not below 0.01
    assert six.passed and six.reason() is None and six.texts == 8


def test_canaries_are_examples_the_reference_got_right_spread_over_the_sets_of_their_label() -> None:
    first = probe("a", [(f"sports:a{i}", "sports") for i in range(10)] + [("finance:a", "finance")])
    second = probe("b", [(f"sports:b{i}", "sports") for i in range(10)])
    references = {"a": "0101010101" + "1", "b": "1111111111"}
    chosen = canaries([first, second], references.__getitem__, ["sports", "finance"])

    texts, accuracy = chosen["sports"]
    right = {f"sports:a{i}" for i in range(1, 10, 2)} | {f"sports:b{i}" for i in range(10)}
    assert len(texts) == CANARIES and set(texts) <= right
    assert any(text.startswith("sports:a") for text in texts) and any(t.startswith("sports:b") for t in texts)
    assert accuracy == 15 / 20
    # One finance example is too few to show a significant drop: the label is not judged.
    assert "finance" not in chosen


def test_a_drop_below_the_alarm_threshold_passes_even_when_significant() -> None:
    # The reference got 8 of 40 right: all 8 going wrong is a drop of 0.2, not above a 0.2 threshold.
    chosen = canaries([sports_set(40)], lambda name: "1" * 8 + "0" * 32, ["sports"])
    assert check(chosen, predicting(set(chosen["sports"][0])), threshold=0.2).passed
    assert not check(chosen, predicting(set(chosen["sports"][0])), threshold=0.1).passed


def batch(texts: list[str], label: str, others: list[str], other: str) -> list[Example]:
    """Four training texts of each kind (the first eight of each list are never probed), under the labels
    given: a poisoned batch gives them swapped."""
    return [Example(t, label) for t in texts[:4]] + [Example(t, other) for t in others[:4]]


def learner_with_golden_sets() -> OnlineLearner:
    tokenizer, encoder = tiny_bert(seed=0)
    config = LearnerConfig(strategy="sgd", lr=3e-3, probe_fraction=0.0, eval_every=1000)
    learner = OnlineLearner(tokenizer, encoder, config, probe_salt=b"tests")
    learner.register_probe("sports", [(text, "sports") for text in SPORTS[8:]])
    learner.register_probe("finance", [(text, "finance") for text in FINANCE[8:]])
    learner.register_probe("weather", [(text, "weather") for text in WEATHER[8:]])
    for _ in range(6):
        learner.learn(
            [Example(t, "sports") for t in SPORTS[:4]] + [Example(t, "finance") for t in FINANCE[:4]]
        )
        learner.learn(
            [Example(t, "weather") for t in WEATHER[:4]] + [Example(t, "finance") for t in FINANCE[:4]]
        )
    learner.evaluate()
    assert learner.tracker.reference("sports") == "1" * 8, "the golden sets learned"
    return learner


def test_a_poisoned_burst_fails_the_check_and_its_labels_stay_at_risk() -> None:
    learner = learner_with_golden_sets()
    assert learner.check_promotion(64).passed
    assert not learner.at_risk, "a pass clears the labels it judged"

    for _ in range(20):
        learner.learn(
            [Example(t, "finance") for t in SPORTS[:4]] + [Example(t, "sports") for t in FINANCE[:4]]
        )
    predicted = [p.label for p in learner.predict(SPORTS[8:])]
    assert len(predicted) - predicted.count("sports") >= 7, "the poison was learned"

    verdict = learner.check_promotion(64)
    assert not verdict.passed
    assert {check.label for check in verdict.failed} >= {"sports"}
    assert {"sports", "finance"} <= set(learner.at_risk), "a failure keeps the labels at risk"
    assert not learner.check_promotion(64).passed, "and the next check looks again"


def test_a_check_judges_the_most_touched_labels_within_its_budget() -> None:
    learner = learner_with_golden_sets()
    learner.check_promotion(64)
    learner.at_risk.update({"weather": 5, "finance": 3, "sports": 1})

    verdict = learner.check_promotion(2 * CANARIES)
    assert [check.label for check in verdict.checked] == ["weather", "finance"]
    assert verdict.texts == 2 * CANARIES
    assert dict(learner.at_risk) == {"sports": 1}, "the label left over goes first next time"
