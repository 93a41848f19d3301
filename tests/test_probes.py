import json
import os
import re
import subprocess
import sys

import pytest

from learner.probes import (
    ProbeRegistry,
    ProbeSet,
    due_for_evaluation,
    evaluate,
    held_out,
    held_out_name,
    label_slug,
    validate_name,
)

# held_out routing


def test_held_out_is_close_to_the_fraction():
    keys = [f"example-{i}" for i in range(10_000)]
    share = sum(held_out(key, 0.05) for key in keys) / len(keys)
    assert abs(share - 0.05) < 0.01


def test_held_out_never_routes_at_fraction_zero():
    assert not any(held_out(f"example-{i}", 0.0) for i in range(10_000))


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_held_out_rejects_fractions_outside_unit_interval(fraction):
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        held_out("key", fraction)


def test_held_out_is_the_same_in_another_process():
    keys = [f"k{i}" for i in range(200)]
    here = [held_out(key, 0.3, b"salt") for key in keys]
    assert here == [held_out(key, 0.3, b"salt") for key in keys]
    script = (
        "import json, sys\n"
        "from learner.probes import held_out\n"
        "print(json.dumps([held_out(k, 0.3, b'salt') for k in json.loads(sys.argv[1])]))\n"
    )
    # A different hash seed would change the built-in hash(); the routing must not depend on it.
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    result = subprocess.run(
        [sys.executable, "-c", script, json.dumps(keys)], env=env, capture_output=True, text=True, check=True
    )
    assert json.loads(result.stdout) == here


def test_without_the_salt_no_one_can_tell_which_texts_are_held_out():
    texts = [f"review {i}" for i in range(2000)]
    chosen = [{text for text in texts if held_out(text, 0.1, salt)} for salt in (b"one", b"two", b"")]
    # Each salt holds out its own tenth: about a tenth of one salt's choice is in another's, as by chance.
    assert all(len(chosen[0] & other) < 0.2 * len(chosen[0]) for other in chosen[1:])


def test_the_registry_knows_every_text_its_sets_hold_until_they_go():
    registry = ProbeRegistry(window=10, max_probes=1, min_size=1)
    registry.register("mine", [("kept text", "x")], updates=0)
    registry.add_held_out("held text", "pos", 0, updates=0)
    assert registry.holds("kept text") and registry.holds("held text") and not registry.holds("other")
    registry.register("mine", [("new text", "x")], updates=1)
    assert not registry.holds("kept text") and registry.holds("new text")
    registry.add_held_out("later text", "pos", 10, updates=2)  # window 1 retires window 0's set
    assert not registry.holds("held text") and registry.holds("later text")
    restored = ProbeRegistry(window=10, max_probes=1, min_size=1)
    restored.load_state_dict(registry.state_dict())
    assert restored.holds("new text") and restored.holds("later text")
    restored.remove("mine")
    assert not restored.holds("new text")


# names


@pytest.mark.parametrize("name", ["../x", "a b", "", "x" * 65, "..", "held_out:spam:w0", "é"])
def test_invalid_names_are_rejected_with_what_is_allowed(name):
    with pytest.raises(ValueError, match=re.escape("letters, digits, '_', '.' and '-'")):
        validate_name(name)
    with pytest.raises(ValueError, match="letters, digits"):
        ProbeRegistry().register(name, [("text", "label")], updates=0)


@pytest.mark.parametrize("name", ["x" * 64, "a", "sentiment.v2", "my-probe_1"])
def test_valid_names_are_accepted(name):
    assert validate_name(name) == name


def test_plain_labels_stay_readable_in_held_out_names():
    assert held_out_name("spam", 3) == "held_out:spam:w3"
    assert label_slug("positive_1.0-x") == "positive_1.0-x"


def test_odd_labels_are_escaped_unambiguously():
    odd = ["a:b", "a/b", "a b", "a_b~1", "très bien", "x" * 41, "../../etc"]
    slugs = [label_slug(label) for label in odd]
    for slug in slugs:
        assert "~" in slug
        assert ":" not in slug and "/" not in slug and " " not in slug
    # Distinct labels never share a slug, even when they escape to the same readable part.
    assert len(set(slugs)) == len(slugs)
    assert label_slug("a:b") != label_slug("a/b")
    assert label_slug("a_b") not in slugs


# registered probes


def test_register_replace_and_remove():
    registry = ProbeRegistry()
    probe = registry.register("sentiment", [("good", "pos"), ("bad", "neg")], updates=5)
    assert probe.source == "registered"
    assert probe.size == 2
    assert probe.created_at_update == 5
    assert registry.get("sentiment") is probe

    replaced = registry.register("sentiment", [("fine", "pos")], updates=9)
    assert registry.get("sentiment") is replaced
    assert replaced.examples == [("fine", "pos")]
    assert replaced.created_at_update == 9
    assert len(registry) == 1

    assert registry.remove("sentiment") is True
    assert registry.remove("sentiment") is False
    assert len(registry) == 0


@pytest.mark.parametrize(
    "examples",
    [[], [("", "pos")], [("text", "")], [("text", 1)], [(None, "pos")], [("text", "pos", "extra")]],
)
def test_register_validates_examples(examples):
    with pytest.raises(ValueError):
        ProbeRegistry().register("p", examples, updates=0)


def test_register_bounds_examples_and_probe_count():
    registry = ProbeRegistry(max_per_probe=2, max_probes=2)
    with pytest.raises(ValueError, match="at most 2 examples"):
        registry.register("p", [("a", "x"), ("b", "x"), ("c", "x")], updates=0)
    registry.register("p", [("a", "x")], updates=0)
    registry.register("q", [("a", "x")], updates=0)
    with pytest.raises(ValueError, match="at most 2 registered probes"):
        registry.register("r", [("a", "x")], updates=0)
    # Replacing an existing one is still allowed at the bound.
    registry.register("q", [("b", "y")], updates=1)


# held-out probes


def test_held_out_sets_span_windows_until_big_enough_then_freeze():
    registry = ProbeRegistry(window=10, min_size=2)
    joined = [
        registry.add_held_out(f"text {position}", label, position, updates=position)
        for position, label in [(0, "pos"), (3, "neg"), (9, "pos"), (10, "pos"), (25, "neg"), (31, "neg")]
    ]
    # pos:w0 has its two examples when window 1 begins, so it freezes; neg:w0 has one when window 2 begins,
    # so it takes window 2's example too, and freezes at window 3.
    assert joined == [
        "held_out:pos:w0",
        "held_out:neg:w0",
        "held_out:pos:w0",
        "held_out:pos:w1",
        "held_out:neg:w0",
        "held_out:neg:w3",
    ]
    frozen = [probe.name for probe in registry.probes() if probe.frozen]
    assert frozen == ["held_out:neg:w0", "held_out:pos:w0"]
    first = registry.get("held_out:pos:w0")
    assert first is not None
    assert first.source == "held_out"
    assert first.examples == [("text 0", "pos"), ("text 9", "pos")]
    assert (first.label, first.window, first.created_at_update) == ("pos", 0, 0)
    assert registry.held_out == 6
    assert registry.overflow == 0


def test_capacity_freezes_a_held_out_probe():
    registry = ProbeRegistry(max_per_probe=3, window=100)
    joined = [registry.add_held_out(f"t{i}", "pos", i, updates=i) for i in range(5)]
    assert joined == ["held_out:pos:w0"] * 3 + [None, None]
    probe = registry.get("held_out:pos:w0")
    assert probe is not None and probe.full
    assert probe.examples == [("t0", "pos"), ("t1", "pos"), ("t2", "pos")]
    assert registry.held_out == 5
    assert registry.overflow == 2
    # Another label in the same window still has room.
    assert registry.add_held_out("t5", "neg", 5, updates=5) == "held_out:neg:w0"


def test_oldest_held_out_window_is_retired_at_the_bound():
    registry = ProbeRegistry(window=10, max_probes=2, min_size=1)
    registry.register("mine", [("a", "x")], updates=0)
    registry.add_held_out("a", "pos", 0, updates=0)
    registry.add_held_out("b", "pos", 10, updates=1)
    assert registry.drain_retired() == []
    assert registry.add_held_out("c", "pos", 20, updates=2) == "held_out:pos:w2"
    names = [probe.name for probe in registry.probes()]
    assert names == ["held_out:pos:w1", "held_out:pos:w2", "mine"]
    assert registry.retired == 1
    assert registry.drain_retired() == ["held_out:pos:w0"]
    assert registry.drain_retired() == []


def test_a_set_of_the_same_window_overflows_rather_than_retire_its_neighbour():
    registry = ProbeRegistry(window=10, max_probes=1)
    assert registry.add_held_out("a", "pos", 0, updates=0) == "held_out:pos:w0"
    assert registry.add_held_out("b", "neg", 1, updates=0) is None
    assert registry.overflow == 1
    assert registry.retired == 0
    assert [probe.name for probe in registry.probes()] == ["held_out:pos:w0"]


def test_held_out_names_cannot_be_overwritten_by_registration():
    registry = ProbeRegistry()
    name = registry.add_held_out("a", "pos", 0, updates=0)
    with pytest.raises(ValueError):
        registry.register(name, [("b", "neg")], updates=1)
    assert registry.get(name).examples == [("a", "pos")]


def test_odd_labels_get_safe_held_out_names():
    registry = ProbeRegistry()
    colon = registry.add_held_out("a", "x:w0", 0, updates=0)
    slash = registry.add_held_out("b", "x/w0", 0, updates=0)
    assert colon != slash
    assert colon.count(":") == 2 and slash.count(":") == 2
    assert registry.get(colon).label == "x:w0"


def test_add_held_out_validates_its_input():
    registry = ProbeRegistry()
    with pytest.raises(ValueError):
        registry.add_held_out("", "pos", 0, updates=0)
    with pytest.raises(ValueError):
        registry.add_held_out("text", "", 0, updates=0)
    with pytest.raises(ValueError):
        registry.add_held_out("text", "pos", -1, updates=0)
    assert registry.held_out == 0


def test_state_round_trip_is_exact():
    registry = ProbeRegistry(max_per_probe=2, window=5, max_probes=2)
    registry.register("mine", [("good", "pos"), ("bad", "neg")], updates=1)
    for position in range(16):
        registry.add_held_out(f"t{position}", "pos" if position % 2 else "très", position, updates=position)
    counters = (registry.held_out, registry.overflow, registry.retired)
    assert counters[1] > 0 and counters[2] > 0
    state = registry.state_dict()
    restored = ProbeRegistry(max_per_probe=2, window=5, max_probes=2)
    restored.load_state_dict(json.loads(json.dumps(state)))
    assert restored.state_dict() == state
    assert restored.probes() == registry.probes()
    assert (restored.held_out, restored.overflow, restored.retired) == counters
    assert restored.drain_retired() == registry.drain_retired()
    assert all(isinstance(example, tuple) for probe in restored.probes() for example in probe.examples)


def test_malformed_state_is_refused_and_leaves_the_registry_alone():
    registry = ProbeRegistry()
    registry.register("mine", [("a", "x")], updates=0)
    with pytest.raises(ValueError):
        registry.load_state_dict({"probes": []})
    unlabelled = {"name": "h", "source": "held_out", "examples": [], "created_at_update": 0, "capacity": 1}
    counters = {"held_out": 0, "overflow": 0, "retired": 0, "pending_retired": []}
    with pytest.raises(ValueError, match="needs a label"):
        registry.load_state_dict({"probes": [unlabelled], **counters})
    assert [probe.name for probe in registry.probes()] == ["mine"]


# evaluation


def test_evaluate_gives_accuracy_per_probe_with_one_predict_call():
    a = ProbeSet("a", "registered", [("good one", "pos"), ("bad one", "neg"), ("good?", "neg")], 0, 3)
    b = ProbeSet("b", "registered", [("good", "pos"), ("meh", "pos")], 0, 2)
    empty = ProbeSet("held_out:x:w0", "held_out", [], 0, 5, label="x", window=0)
    calls = []

    def predict(texts: list[str]) -> list[str]:
        calls.append(list(texts))
        return ["pos" if "good" in text else "neg" for text in texts]

    assert evaluate([a, empty, b], predict) == {"a": [True, True, False], "b": [True, False]}
    assert calls == [["good one", "bad one", "good?", "good", "meh"]]


def test_evaluate_without_probes_does_not_predict():
    def predict(texts: list[str]) -> list[str]:
        raise AssertionError("predict must not be called")

    assert evaluate([], predict) == {}


def test_evaluate_checks_the_prediction_count():
    probe = ProbeSet("a", "registered", [("x", "pos"), ("y", "neg")], 0, 2)
    with pytest.raises(ValueError, match="1 labels for 2 texts"):
        evaluate([probe], lambda texts: ["pos"])


# evaluation budget


def _sets(sizes: dict[str, int]) -> list[ProbeSet]:
    return [
        ProbeSet(name, "registered", [(f"{name} {i}", "x") for i in range(size)], 0, size, frozen=True)
        for name, size in sizes.items()
    ]


def test_an_evaluation_scores_unevaluated_sets_first_then_the_stalest_within_its_budget():
    sets = _sets({"a": 50, "b": 50, "c": 50, "d": 50})
    last = {"a": 30, "b": 10, "c": None, "d": 20}
    due = due_for_evaluation(sets, 120, last.get)
    assert [probe.name for probe in due] == ["c", "b"]
    assert sum(probe.size for probe in due) <= 120


def test_a_set_larger_than_the_budget_is_scored_alone_in_its_turn_and_never_starves():
    sets = _sets({"big": 300, "s1": 10, "s2": 10})
    last: dict[str, int] = {}
    rounds = []
    for updates in range(1, 5):
        due = due_for_evaluation(sets, 100, last.get)
        rounds.append([probe.name for probe in due])
        last.update({probe.name: updates for probe in due})
    assert rounds == [["big"], ["s1", "s2"], ["big"], ["s1", "s2"]]
