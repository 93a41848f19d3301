"""The online learner on the tiny model: open labels, guarded steps, strategies, probes, exact resume."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from learner.classifier import LabelLimitError
from learner.encoder import tiny_bert
from learner.online import Example, LearnerConfig, OnlineLearner
from learner.snapshots import MODEL, SnapshotStore

ROOT = Path(__file__).resolve().parents[1]

SPORTS = [f"the team won the match {i} with a late goal" for i in range(8)]
FINANCE = [f"shares fell as the bank cut its forecast {i}" for i in range(8)]
WEATHER = [f"heavy rain and strong wind expected on day {i}" for i in range(8)]


def make_learner(**overrides: object) -> OnlineLearner:
    tokenizer, encoder = tiny_bert(seed=0)
    config = LearnerConfig(**{"lr": 3e-3, "probe_fraction": 0.0, **overrides})
    return OnlineLearner(tokenizer, encoder, config, probe_salt=b"tests")


def weights(learner: OnlineLearner) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in learner.model.state_dict().items()}


def test_new_label_leaves_old_logits_alone_then_is_learned() -> None:
    learner = make_learner(strategy="sgd", loss="ce")
    for _ in range(5):
        learner.train_step(SPORTS[:4] + FINANCE[:4], ["sports"] * 4 + ["finance"] * 4)
    learner.model.eval()
    with torch.inference_mode():
        before = learner.model.head(learner.model.embed(learner.model.tokenize(SPORTS)))
    learner.model.add_labels(["weather"], before.new_zeros(1, 32), ["weather"])
    with torch.inference_mode():
        after = learner.model.head(learner.model.embed(learner.model.tokenize(SPORTS)))
    assert torch.equal(after[:, :2], before)

    for _ in range(15):
        learner.train_step(
            WEATHER[:4] + SPORTS[:2] + FINANCE[:2], ["weather"] * 4 + ["sports"] * 2 + ["finance"] * 2
        )
    predicted = [p.label for p in learner.predict(WEATHER[4:])]
    assert predicted.count("weather") >= 3


def test_predictions_between_steps_are_deterministic_and_leave_training_on() -> None:
    learner = make_learner(strategy="sgd", loss="ce")
    learner.train_step(SPORTS[:4] + FINANCE[:4], ["sports"] * 4 + ["finance"] * 4)
    assert learner.model.training

    first, second = (learner.predict(SPORTS + FINANCE, top_k=2) for _ in range(2))

    assert first == second, "dropout was on while predicting"
    assert learner.model.training, "the next step would train without dropout"


def test_label_cap_refuses_the_batch_and_changes_nothing() -> None:
    learner = make_learner(max_labels=2)
    learner.train_step(SPORTS[:2], ["a", "b"])
    before = weights(learner)
    with pytest.raises(LabelLimitError, match="cap of 2"):
        learner.train_step(SPORTS[:2], ["a", "c"])
    assert learner.model.labels == ["a", "b"]
    assert all(torch.equal(before[k], v) for k, v in weights(learner).items())


@pytest.mark.parametrize(("strategy", "pass_size"), [("sgd", 0), ("migu", 0), ("migu", 2)])
def test_non_finite_loss_skips_the_step_and_keeps_weights(strategy: str, pass_size: int) -> None:
    learner = make_learner(strategy=strategy, head="linear", pass_size=pass_size)
    learner.train_step(SPORTS[:2] + FINANCE[:2], ["sports", "sports", "finance", "finance"])
    with torch.no_grad():
        learner.model.head.bias[0] = float("inf")
    before = weights(learner)
    report = learner.train_step(SPORTS[:2] + FINANCE[:2], ["sports", "sports", "finance", "finance"])
    assert report.skipped
    assert learner.counters.skipped_steps == 1 and learner.counters.updates == 1
    after = weights(learner)
    assert all(torch.equal(before[k], after[k]) for k in before)


def without_dropout(learner: OnlineLearner) -> OnlineLearner:
    for module in learner.model.encoder.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if hasattr(module, "dropout_prob"):
            module.dropout_prob = 0.0
    return learner


def test_a_step_in_passes_makes_the_update_of_the_step_in_one() -> None:
    texts = [f"{text}{' and more words' * (i % 4)}" for i, text in enumerate(SPORTS[:4] + FINANCE[:4])]
    labels = ["sports"] * 4 + ["finance"] * 4
    one, passes = (
        without_dropout(make_learner(strategy="migu+replay", precision="fp32", pass_size=size))
        for size in (0, 3)
    )
    forwards: dict[str, list[int]] = {}
    losses: dict[str, list[float | None]] = {}
    for name, learner in (("one", one), ("passes", passes)):
        calls = forwards[name] = []
        learner.model.encoder.register_forward_hook(lambda *_, calls=calls: calls.append(1))
        # The first step imprints both labels from a forward pass without gradients, then takes three
        # passes; the next two (8 new, 4 replayed) take four.
        losses[name] = [learner.train_step(texts, labels).loss for _ in range(3)]
    assert len(forwards["passes"]) == len(forwards["one"]) + 9
    assert losses["passes"] == pytest.approx(losses["one"], rel=1e-5)
    for key, value in weights(one).items():
        torch.testing.assert_close(weights(passes)[key], value, rtol=1e-4, atol=1e-6)
    assert passes.keep_rates() == pytest.approx(one.keep_rates())
    assert passes.prequential.report() == one.prequential.report()


def test_migu_updates_about_the_top_rows_only() -> None:
    learner = make_learner(strategy="migu", quantile=0.7)
    learner.train_step(SPORTS[:4], ["sports"] * 4)
    before = weights(learner)
    learner.train_step(SPORTS[:4] + FINANCE[:4], ["sports"] * 4 + ["finance"] * 4)
    after = weights(learner)
    changed = (
        (
            after["encoder.encoder.layer.0.intermediate.dense.weight"]
            != before["encoder.encoder.layer.0.intermediate.dense.weight"]
        )
        .any(dim=1)
        .float()
        .mean()
    )
    assert 0.2 <= float(changed) <= 0.4
    assert 0.25 <= learner.keep_rate() <= 0.35
    assert torch.equal(after["encoder.pooler.dense.weight"], before["encoder.pooler.dense.weight"])


def test_replay_mixes_old_examples_into_new_batches() -> None:
    learner = make_learner(strategy="replay", replay_size=6, replay_ratio=0.5)
    learner.train_step(SPORTS[:4], ["sports"] * 4)
    learner.train_step(FINANCE[:4], ["finance"] * 4)
    buffer = learner.strategy.buffer
    assert len(buffer) == 6
    assert {label for _, label in buffer.items} == {"sports", "finance"}


def test_a_step_of_one_label_competes_with_the_recent_examples_of_other_labels() -> None:
    learner = make_learner(strategy="replay", replay_size=0, recent_size=6, recent_ratio=0.5)
    learner.train_step(SPORTS[:4], ["sports"] * 4)
    learner.train_step(FINANCE[:4], ["finance"] * 4)

    texts, labels = learner.strategy.batch(WEATHER[:4], ["weather"] * 4)
    assert texts[:4] == WEATHER[:4]
    assert len(texts) == 6 and set(labels[4:]) <= {"sports", "finance"}
    assert set(texts[4:]) <= set(SPORTS[2:4] + FINANCE[:4]), "only the last six examples are recent"
    texts, labels = learner.strategy.batch(SPORTS[4:6], ["sports"] * 2)
    assert labels[2:] == ["finance"], "a step's own label is no competition"
    mixed, _ = learner.strategy.batch(WEATHER[:2] + SPORTS[4:6], ["weather"] * 2 + ["sports"] * 2)
    assert mixed == WEATHER[:2] + SPORTS[4:6], "a step that holds two labels has its own competition"


@pytest.mark.parametrize(
    ("recent_ratio", "incoming", "drawn"), [(1.0, 3, 3), (2.0, 3, 6), (2.0, 1, 2), (0.5, 1, 1)]
)
def test_a_step_of_one_label_draws_recent_ratio_recent_examples_per_incoming_one(
    recent_ratio: float, incoming: int, drawn: int
) -> None:
    learner = make_learner(strategy="replay", replay_size=0, recent_ratio=recent_ratio)
    learner.train_step(SPORTS, ["sports"] * len(SPORTS))
    _, labels = learner.strategy.batch(WEATHER[:incoming], ["weather"] * incoming)
    assert labels[incoming:] == ["sports"] * drawn, "rounded up, so that one correction still competes"


def test_held_out_examples_become_probes_and_never_train() -> None:
    # Sets of one example, one per window: each is full at once, so frozen and evaluated.
    learner = make_learner(probe_fraction=0.3, eval_every=1, probe_size=1, probe_window=1)
    stream = [Example(t, "sports") for t in SPORTS] + [Example(t, "finance") for t in FINANCE]
    report = learner.learn(stream)
    held = learner.counters.examples_held_out
    assert 0 < held < len(stream)
    assert report.held_out == held and report.trained == len(stream) - held
    probe_texts = {text for probe in learner.probes.probes() for text, _ in probe.examples}
    assert len(probe_texts) == held
    forgetting = learner.forgetting_report()
    assert forgetting["updates"] == 1 and len(forgetting["probes"]) == len(learner.probes.probes())
    assert all(0.0 <= probe["accuracy"] <= 1.0 for probe in forgetting["probes"])


MIXED = [(SPORTS[i % 8], "sports") if i % 3 else (FINANCE[i % 8], "finance") for i in range(24)]
# The second half as a file sorted by label: its steps draw on the recent examples, which resume must keep.
SORTED = [(SPORTS[i], "sports") for i in range(8)] + [(FINANCE[i], "finance") for i in range(8)]
STREAM = MIXED + SORTED + [(WEATHER[i], "weather") for i in range(8)]


def train_range(learner: OnlineLearner, start: int, stop: int) -> None:
    for i in range(start, stop, 4):
        chunk = STREAM[i : i + 4]
        learner.learn([Example(text, label) for text, label in chunk])


def continue_in_new_process(snapshot_root: str) -> None:
    """Run in a fresh interpreter: load the newest snapshot, train the second half, snapshot again."""
    store = SnapshotStore(Path(snapshot_root))
    learner = make_learner(strategy="migu+replay", probe_fraction=0.2, eval_every=2)
    snapshot, _ = store.load_latest_valid()
    learner.restore(snapshot)
    train_range(learner, 24, 48)
    learner.save(store)


def test_resume_in_a_new_process_is_exact(tmp_path: Path) -> None:
    straight = make_learner(strategy="migu+replay", probe_fraction=0.2, eval_every=2)
    train_range(straight, 0, 48)

    store = SnapshotStore(tmp_path)
    first_half = make_learner(strategy="migu+replay", probe_fraction=0.2, eval_every=2)
    train_range(first_half, 0, 24)
    first_half.save(store)
    code = (
        f"from tests.test_online import continue_in_new_process; continue_in_new_process({str(tmp_path)!r})"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=300)

    resumed = store.load(store.latest().id).tensors[MODEL]
    expected = straight.model.state_dict()
    assert resumed.keys() == expected.keys()
    assert all(torch.equal(resumed[key], expected[key]) for key in expected)
    resumed_evals = store.load(store.latest().id).state["tracker"]["evaluations"]
    straight_evals = straight.tracker.state_dict()["evaluations"]
    assert [(e["updates"], e["accuracies"]) for e in resumed_evals] == [
        (e["updates"], e["accuracies"]) for e in straight_evals
    ]


def test_corrupt_newest_snapshot_falls_back_to_the_previous(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    learner = make_learner()
    learner.train_step(SPORTS[:2] + FINANCE[:2], ["sports"] * 2 + ["finance"] * 2)
    good = learner.save(store)
    learner.train_step(WEATHER[:4], ["weather"] * 4)
    newest = learner.save(store)
    weights_file = tmp_path / newest.id / "model.safetensors"
    data = bytearray(weights_file.read_bytes())
    data[-1] ^= 0xFF
    weights_file.write_bytes(bytes(data))

    snapshot, problems = store.load_latest_valid()
    assert snapshot.id == good.id
    assert any(newest.id in problem for problem in problems)
    fresh = make_learner()
    fresh.restore(snapshot)
    assert fresh.model.labels == ["sports", "finance"] and fresh.counters.updates == 1


def test_a_restored_learner_reports_the_keep_rates_of_the_step_it_resumed_from(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    learner = make_learner(strategy="migu")
    learner.train_step(SPORTS[:2] + FINANCE[:2], ["sports"] * 2 + ["finance"] * 2)
    assert learner.keep_rates(), "a gated step reports its keep-rates"
    snapshot = store.load(learner.save(store).id)
    fresh = make_learner(strategy="migu")
    assert fresh.keep_rates() == {}
    fresh.restore(snapshot)
    assert fresh.keep_rates() == learner.keep_rates() and fresh.keep_rate() == learner.keep_rate()


def optimizer_state(learner: OnlineLearner) -> dict[str, torch.Tensor]:
    state = learner.optimizer.state_dict()["state"]
    return {
        f"{index}.{key}": value.clone() for index, values in state.items() for key, value in values.items()
    }


def test_a_step_without_signal_changes_no_weight_and_no_optimizer_state() -> None:
    learner = make_learner(strategy="migu")
    learner.train_step(SPORTS[:4], ["sports"] * 4)  # the first label: its row is imprinted, nothing to learn
    before, state = weights(learner), optimizer_state(learner)
    report = learner.train_step(SPORTS[4:8], ["sports"] * 4)
    assert report.trained == 4 and learner.counters.updates == 0
    assert all(torch.equal(before[k], v) for k, v in weights(learner).items())
    assert optimizer_state(learner).keys() == state.keys()
    assert all(torch.equal(state[k], v) for k, v in optimizer_state(learner).items())


def test_head_rows_no_loss_term_touched_do_not_move() -> None:
    learner = make_learner(strategy="sgd", loss="ace")
    for _ in range(3):
        learner.train_step(
            SPORTS[:2] + FINANCE[:2] + WEATHER[:2], ["sports"] * 2 + ["finance"] * 2 + ["weather"] * 2
        )
    weather = learner.model.label_ids(["weather"]).item()
    row = learner.model.head.weight[weather].detach().clone()
    learner.train_step(SPORTS[2:4] + FINANCE[2:4], ["sports"] * 2 + ["finance"] * 2)
    # The row has momentum from earlier steps, but this step's loss never saw it.
    assert torch.equal(learner.model.head.weight[weather].detach(), row)


def test_a_new_head_rows_first_update_is_a_fresh_adamw_step(monkeypatch: pytest.MonkeyPatch) -> None:
    learner = make_learner(strategy="sgd", loss="ce", head_lr=1e-2, weight_decay=0.0)
    for _ in range(20):
        learner.train_step(SPORTS[:4] + FINANCE[:4], ["sports"] * 4 + ["finance"] * 4)
    imprinted = {}
    grow = learner._grow

    def grow_and_remember(*args: object) -> None:
        grow(*args)
        imprinted["row"] = learner.model.head.weight[-1].detach().clone()

    monkeypatch.setattr(learner, "_grow", grow_and_remember)
    learner.train_step(WEATHER[:4] + SPORTS[:4], ["weather"] * 4 + ["sports"] * 4)
    moved = (learner.model.head.weight[-1].detach() - imprinted["row"]).abs()
    # AdamW's first step moves each coordinate by about the learning rate (m / sqrt(v) = sign of the
    # gradient); with the optimizer's global step count instead, bias correction would be off.
    assert moved.median().item() == pytest.approx(1e-2, rel=0.05)


def test_prequential_accuracy_scores_each_example_before_learning_from_it() -> None:
    learner = make_learner(strategy="sgd")
    for _ in range(10):
        learner.learn(
            [Example(t, "sports") for t in SPORTS[:4]] + [Example(t, "finance") for t in FINANCE[:4]]
        )
    scored = learner.prequential.report()
    learner.learn([Example(WEATHER[0], "weather")])
    # Imprinting makes the new label right at once, but it was scored before: a miss.
    assert learner.predict([WEATHER[0]])[0].label == "weather"
    after = learner.prequential.report()
    assert after["scored"] == scored["scored"] + 1
    assert after["per_label"]["weather"] == {"accuracy": 0.0, "scored": 1}
    assert after["cumulative"] == pytest.approx(scored["cumulative"] * scored["scored"] / after["scored"])


def test_a_probe_set_registered_before_any_label_is_evaluated_once_the_model_has_labels() -> None:
    learner = make_learner(eval_every=1000)
    learner.register_probe("news", [(SPORTS[0], "sports"), (FINANCE[0], "finance")])
    learner.learn([Example(t, "sports") for t in SPORTS[1:3]])
    report = learner.forgetting_report()
    assert [probe["name"] for probe in report["probes"]] == ["news"]
    assert report["probes"][0]["accuracy"] == 0.5  # one label known: the sports text alone is right
    assert report["probes"][0]["accuracy_interval"][0] < 0.5 < report["probes"][0]["accuracy_interval"][1]


def test_a_text_is_held_out_or_trained_whatever_id_it_comes_with() -> None:
    learner = make_learner(probe_fraction=0.5)
    texts = [f"{text} again" for text in SPORTS + FINANCE]
    first = learner.learn([Example(t, "sports", id=f"a{i}") for i, t in enumerate(texts)]).held_out_mask
    second = learner.learn([Example(t, "sports", id=f"b{i}") for i, t in enumerate(texts)]).held_out_mask
    assert first == second and 0 < sum(first) < len(texts)


def test_a_text_in_a_probe_set_is_never_trained_on() -> None:
    learner = make_learner()
    learner.register_probe("mine", [(SPORTS[0], "sports")])
    report = learner.learn([Example(SPORTS[0], "finance"), Example(SPORTS[1], "sports")])
    assert report.held_out_mask == [True, False]
    assert (report.held_out, report.trained, learner.counters.examples_trained) == (1, 1, 1)
    assert [p.name for p in learner.probes.probes()] == ["mine"]  # held out, not added to a set


def test_the_probe_salt_is_random_and_travels_in_snapshots(tmp_path: Path) -> None:
    tokenizer, encoder = tiny_bert(seed=0)
    drawn = {OnlineLearner(tokenizer, encoder, LearnerConfig()).probe_salt for _ in range(2)}
    assert len(drawn) == 2
    learner = OnlineLearner(tokenizer, encoder, LearnerConfig())
    learner.learn([Example(SPORTS[0], "sports"), Example(FINANCE[0], "finance")])
    store = SnapshotStore(tmp_path)
    learner.save(store)
    restored = OnlineLearner(*tiny_bert(seed=0), LearnerConfig())
    restored.restore(store.load(store.latest().id))
    assert restored.probe_salt == learner.probe_salt


def test_an_operator_removes_a_label_and_learning_goes_on_without_it(tmp_path: Path) -> None:
    learner = make_learner(strategy="migu+replay", probe_fraction=0.2, probe_min_size=1)
    junk = [f"buy cheap pills now {i}" for i in range(8)]
    for start in range(0, 8, 4):
        learner.learn(
            [Example(t, "sports") for t in SPORTS[start : start + 4]]
            + [Example(t, "finance") for t in FINANCE[start : start + 4]]
            + [Example(t, "spam") for t in junk[start : start + 4]]
        )
    head = learner.model.head.weight
    moments = learner.optimizer.state[head]["exp_avg"].clone()
    kept_rows = [learner.labels.index(label) for label in ("sports", "finance")]

    assert learner.remove_labels(["spam", "never seen"]) == ["spam"]

    assert learner.labels == ["sports", "finance"]
    torch.testing.assert_close(
        learner.optimizer.state[learner.model.head.weight]["exp_avg"], moments[kept_rows]
    )
    assert all(label != "spam" for _, label in learner.strategy.buffer.items)
    assert all(label != "spam" for _, label in learner.strategy.recent.items), "nor does it compete any more"
    assert not any(":spam:" in probe.name for probe in learner.probes.probes())
    assert {p.label for p in learner.predict(junk + SPORTS)} <= {"sports", "finance"}
    learner.learn([Example(SPORTS[0], "sports"), Example(FINANCE[0], "finance")])  # steps go on
    store = SnapshotStore(tmp_path)
    learner.save(store)
    restored = make_learner(strategy="migu+replay", probe_fraction=0.2, probe_min_size=1)
    restored.restore(store.load(store.latest().id))
    assert restored.labels == ["sports", "finance"]


def sorted_window() -> list[Example]:
    """A file sorted by label, as a nightly job posts it."""
    return [
        Example(t, label)
        for label, texts in (("sports", SPORTS), ("finance", FINANCE), ("weather", WEATHER))
        for t in texts
    ]


def test_a_window_sorted_by_label_is_learned_in_micro_batches_that_mix_its_labels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    learner = make_learner(strategy="sgd", probe_fraction=0.3)
    taken: list[list[str]] = []
    learn = learner.learn
    monkeypatch.setattr(
        learner, "learn", lambda examples: taken.append([e.label for e in examples]) or learn(examples)
    )
    between: list[int] = []
    window = sorted_window()
    report = learner.learn_window(window, batch_size=8, between=lambda: between.append(len(taken)))
    assert [len(labels) for labels in taken] == [8, 8, 8]
    assert all(len(set(labels)) >= 2 for labels in taken), taken
    assert between == [1, 2]
    # Which examples were held out is reported in the window's own order, as the ledger records it.
    probe_texts = {text for probe in learner.probes.probes() for text, _ in probe.examples}
    assert report.held_out_mask == [example.text in probe_texts for example in window]
    assert report.trained == learner.counters.examples_trained == len(window) - report.held_out


def test_a_window_that_fits_one_micro_batch_is_learned_as_it_arrived() -> None:
    window = sorted_window()[4:12]
    one = make_learner()
    one.learn(window)
    other = make_learner()  # built after the first learned: both draw the same dropout masks
    other.learn_window(window, batch_size=8)
    for name, value in weights(one).items():
        assert torch.equal(value, weights(other)[name]), name
