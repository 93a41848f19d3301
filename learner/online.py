"""The online learner: routes each example to a probe or to training, takes one guarded update per
micro-batch, evaluates the probes on a schedule, and saves and restores its whole state."""

from __future__ import annotations

import math
import random
import secrets
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from transformers import BatchEncoding, PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from learner.classifier import HeadKind, Prediction, TextClassifier
from learner.devices import Precision, autocast, resolve_device, resolve_precision, rng_state, set_rng_state
from learner.forgetting import Alarm, ForgettingTracker
from learner.losses import LossKind, classification_loss, pass_loss, plan_loss
from learner.optimizer_state import (
    join_optimizer_state,
    keep_parameter_rows,
    split_optimizer_state,
    swap_parameter,
)
from learner.prequential import PrequentialAccuracy
from learner.probes import MIN_SIZE, REGISTERED, ProbeRegistry, due_for_evaluation, evaluate, held_out
from learner.promotion import CANARIES, Verdict, canaries, check
from learner.snapshots import MODEL, Manifest, Snapshot, SnapshotStore
from learner.strategies import StrategyContext, make_strategy

TRAINER = "trainer"
# Points of each probe's accuracy history in a report: enough for the dashboard's line, bounded per probe.
HISTORY_POINTS = 20


@dataclass(frozen=True)
class LearnerConfig:
    """Everything that shapes learning; the stability/plasticity trade-off is lr, quantile and replay.

    The strategy and learning rate are those `bench.tune` chose on the long stream's dev split and
    `bench.cl_stream` then reported on its test split over three seeds (`bench/results/tuning/long.json`,
    `bench/results/long/`): a gated strategy, as the product promises, level with the best ungated one.
    The precision was chosen the same way: bf16 scores as fp32 does on dev (`precision_dev_seed0.json` beside
    the tuning) and on test (`bench/results/precision/`), and its steps are faster where the device has
    bfloat16 units."""

    strategy: str = "migu+replay"
    loss: LossKind = "ace"
    head: HeadKind = "cosine"
    imprint: bool = True
    lr: float = 1e-4
    head_lr: float = 1e-2
    weight_decay: float = 0.01
    quantile: float = 0.7
    gate_ema: float | None = None
    gate_warmup: int = 0
    gate_padding: bool = False
    replay_size: int = 1000
    replay_ratio: float = 0.5
    recent_size: int = 1000
    recent_ratio: float = 3.0
    max_length: int = 128
    # Passes of 12: a default step (24 examples) holds half its activations at once, and pads less where
    # texts differ in length; bench.memory, bench.step_speed and bench/results/passes measure it.
    pass_size: int = 12
    max_labels: int = 10_000
    device: str = "auto"
    precision: Precision = "auto"
    probe_fraction: float = 0.05
    probe_window: int = 1000
    probe_size: int = 200
    probe_min_size: int = MIN_SIZE
    eval_every: int = 50
    eval_budget: int = 400
    alarm_threshold: float = 0.2
    seed: int = 0


@dataclass(frozen=True)
class Example:
    text: str
    label: str
    id: str | None = None


@dataclass
class Counters:
    updates: int = 0
    examples_seen: int = 0
    examples_trained: int = 0
    examples_held_out: int = 0
    skipped_steps: int = 0
    model_version: int = 0


@dataclass
class LearnReport:
    trained: int = 0
    held_out: int = 0
    skipped: bool = False
    loss: float | None = None
    held_out_mask: list[bool] = field(default_factory=list)
    evaluated: bool = False
    alarms: list[Alarm] = field(default_factory=list)


class OnlineLearner:
    """Learns from micro-batches of labelled text with no task boundaries.

    It reports what happened (`LearnReport`, alarms included) and leaves every policy (pausing, rolling
    back, where snapshots live) to its caller. `probe_salt` keys the hash that holds texts out as probes;
    a random one is drawn unless given (to repeat a run exactly), and snapshots keep it."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        encoder: PreTrainedModel,
        config: LearnerConfig | None = None,
        probe_salt: bytes | None = None,
    ) -> None:
        self.config = config or LearnerConfig()
        self.probe_salt = probe_salt if probe_salt is not None else secrets.token_bytes(16)
        torch.manual_seed(self.config.seed)
        self.rng = random.Random(self.config.seed)
        self.model = TextClassifier(
            tokenizer,
            encoder,
            head=self.config.head,
            max_length=self.config.max_length,
            max_labels=self.config.max_labels,
            imprint=self.config.imprint,
        ).to(resolve_device(self.config.device))
        self.precision = resolve_precision(self.config.precision, self.model.device)
        context = StrategyContext(self.model, self.config, self.rng)
        self.strategy = make_strategy(self.config.strategy, context)
        self.probes = ProbeRegistry(
            self.config.probe_size, self.config.probe_window, min_size=self.config.probe_min_size
        )
        self.tracker = ForgettingTracker(self.config.alarm_threshold)
        self.counters = Counters()
        self.prequential = PrequentialAccuracy()
        # Labels whose decisions may have moved since the last passing promotion check, with how often.
        self.at_risk: Counter[str] = Counter()
        self.optimizer = self._make_optimizer()

    def _make_optimizer(self) -> torch.optim.Optimizer:
        # The head starts from nothing for every new label and needs a far larger step than the encoder.
        head = list(self.model.head.parameters())
        head_ids = {id(p) for p in head}
        encoder = [p for p in self.model.parameters() if id(p) not in head_ids]
        groups = [{"params": encoder, "lr": self.config.lr}, {"params": head, "lr": self.config.head_lr}]
        return self.strategy.optimizer(groups, self.config.weight_decay)

    def learn(self, examples: list[Example]) -> LearnReport:
        """Hold out a hashed fraction as probes, and any text a probe set holds; train on the rest;
        evaluate when due."""
        training: list[Example] = []
        mask = []
        for example in examples:
            position = self.counters.examples_seen
            self.counters.examples_seen += 1
            probed = self.probes.holds(example.text)
            mask.append(probed or held_out(example.text, self.config.probe_fraction, self.probe_salt))
            if not mask[-1]:
                training.append(example)
                continue
            self.counters.examples_held_out += 1
            if not probed:
                self.probes.add_held_out(example.text, example.label, position, self.counters.updates)
                for name in self.probes.drain_retired():
                    self.tracker.forget(name)
        report = self.train_step([e.text for e in training], [e.label for e in training])
        report.held_out = len(examples) - len(training)
        report.held_out_mask = mask
        due = report.loss is not None and self.counters.updates % self.config.eval_every == 0
        if due or self._registered_unevaluated():
            report.evaluated = True
            report.alarms = self.evaluate()
        return report

    def learn_window(
        self, examples: list[Example], batch_size: int, between: Callable[[], None] | None = None
    ) -> LearnReport:
        """Learn a window of examples that arrived together in micro-batches of `batch_size`, shuffled first.

        Feedback often comes as a file sorted by label; learned in the order given, every micro-batch would
        hold one label and each label would overwrite the one before. Shuffling whatever arrived together
        restores the mix (README, "Feedback as people send it").
        A window that fits one micro-batch is learned as it is. `between` runs before each micro-batch after
        the first. The report sums the micro-batches'; its `held_out_mask` is in the order of `examples`,
        and its alarms are those every evaluation in the window raised."""
        if len(examples) <= batch_size:
            return self.learn(examples)
        order = list(range(len(examples)))
        self.rng.shuffle(order)
        window = LearnReport(held_out_mask=[False] * len(examples))
        for start in range(0, len(order), batch_size):
            if start and between is not None:
                between()
            chosen = order[start : start + batch_size]
            report = self.learn([examples[i] for i in chosen])
            window.trained += report.trained
            window.held_out += report.held_out
            window.skipped = window.skipped or report.skipped
            window.loss = report.loss if report.loss is not None else window.loss
            for i, held in zip(chosen, report.held_out_mask, strict=True):
                window.held_out_mask[i] = held
            if report.evaluated:
                window.evaluated = True
                window.alarms += report.alarms
        return window

    def _registered_unevaluated(self) -> bool:
        """A registered set not yet evaluated while the model knows labels: it is evaluated at once."""
        return bool(self.model.labels) and any(
            probe.source == REGISTERED and probe.name not in self.tracker for probe in self.probes.evaluable()
        )

    def roll_back(self, snapshot: Snapshot) -> dict[str, Any] | None:
        """Continue from an earlier snapshot; the version counter never goes back, so the next save is new."""
        version = self.counters.model_version
        extra = self.restore(snapshot)
        self.counters.model_version = max(version, self.counters.model_version)
        return extra

    def admissible(self, labels: list[str]) -> list[bool]:
        """Which of these labels the head can take, in order: known ones, and new ones while the label cap
        leaves room."""
        room = self.config.max_labels - len(self.model.labels)
        known, new = set(self.model.labels), set()
        fits = []
        for label in labels:
            if label not in known and label not in new and len(new) < room:
                new.add(label)
            fits.append(label in known or label in new)
        return fits

    @property
    def labels(self) -> list[str]:
        return self.model.labels

    def registered_probes(self) -> dict[str, list[tuple[str, str]]]:
        """The probe sets operators registered, by name: their (text, label) pairs."""
        return {
            p.name: [tuple(e) for e in p.examples] for p in self.probes.probes() if p.source == REGISTERED
        }

    def summary(self) -> dict[str, float | None]:
        """Mean accuracy and largest forgetting over the probes, as of the last evaluation."""
        return self.tracker.summary()

    def remove_labels(self, labels: list[str]) -> list[str]:
        """Take labels out of the model, as an operator does with labels junk feedback added: their head
        rows and optimizer state, their replayed examples and held-out sets go; a registered set holding
        one starts its history again. Feedback that names a label later adds it anew. The labels removed."""
        gone = set(labels) & set(self.model.labels)
        if not gone:
            return []
        old = [self.model.head.weight, self.model.head.bias]
        kept = self.model.remove_labels(gone)
        for before, after in zip(old, [self.model.head.weight, self.model.head.bias], strict=True):
            if before is not None:
                keep_parameter_rows(self.optimizer, before, after, kept)
        self.strategy.forget_labels(gone)
        for label in gone:
            self.at_risk.pop(label, None)
        for label in gone:
            for name in self.probes.remove_label(label):
                self.tracker.forget(name)
        for probe in self.probes.probes():
            if any(label in gone for _, label in probe.examples):
                self.tracker.forget(probe.name)
        return sorted(gone)

    def register_probe(self, name: str, examples: list[tuple[str, str]]) -> None:
        """Add or replace a user probe set; a replaced probe's history starts again."""
        self.probes.register(name, examples, self.counters.updates)
        self.tracker.forget(name)

    def remove_probe(self, name: str) -> bool:
        self.tracker.forget(name)
        return self.probes.remove(name)

    def train_step(self, texts: list[str], labels: list[str]) -> LearnReport:
        """One update on a micro-batch (plus replayed examples), taken only when its loss carries signal and
        moving only the head rows that loss touched; a non-finite loss or gradient skips it. Each incoming
        example is scored by the model as it stands before the update (prequential accuracy)."""
        if not texts:
            return LearnReport()
        new_labels = self.model.unseen(labels)
        all_texts, all_labels = self.strategy.batch(texts, labels)
        is_replayed = torch.arange(len(all_texts), device=self.model.device) >= len(texts)

        self.model.train()
        batch = self.model.tokenize(all_texts)
        passes = _passes(batch["attention_mask"], self.config.pass_size)
        # A model that will still hold one label learns nothing from a loss, but keeps the examples.
        if len(passes) == 1 or len(self.model.labels) + len(new_labels) < 2:
            return self._step_in_one_pass(texts, labels, new_labels, batch, all_labels, is_replayed)
        if new_labels and not self._score_and_grow(texts, labels, new_labels, batch):
            return self._skip()
        scored = bool(new_labels)
        return self._step_in_passes(texts, labels, batch, all_labels, is_replayed, passes, scored)

    def _step_in_one_pass(
        self,
        texts: list[str],
        labels: list[str],
        new_labels: list[str],
        batch: BatchEncoding,
        all_labels: list[str],
        is_replayed: Tensor,
    ) -> LearnReport:
        embeddings = self._encode(batch, decide=True)
        if not torch.isfinite(embeddings).all():
            return self._skip()
        self._score_before_learning(embeddings[: len(texts)], labels)
        if new_labels:
            self._grow(new_labels, embeddings[: len(texts)], labels)
        logits = self.model.head(embeddings)
        step = classification_loss(logits, self.model.label_ids(all_labels), self.config.loss, is_replayed)
        if step.loss is None:
            return self._without_a_step(texts, labels)
        if not torch.isfinite(step.loss):
            return self._skip()
        step.loss.backward()
        return self._update(texts, labels, step.touched, step.loss.item())

    def _score_and_grow(
        self, texts: list[str], labels: list[str], new_labels: list[str], batch: BatchEncoding
    ) -> bool:
        """Before a step in passes that brings new labels: imprinting needs the incoming embeddings before
        any loss, so a forward pass without gradients gives them, to score the examples and grow the head
        (in one pass, such a step's activations would be the largest the learner holds). False, and
        nothing grown, when an embedding is not finite."""
        incoming = torch.arange(len(texts), device=self.model.device)
        with torch.no_grad(), autocast(self.model.device, self.precision):
            embeddings = self.model.embed(_rows_of(batch, incoming)).float()
        if not torch.isfinite(embeddings).all():
            return False
        self._score_before_learning(embeddings, labels)
        self._grow(new_labels, embeddings, labels)
        return True

    def _step_in_passes(
        self,
        texts: list[str],
        labels: list[str],
        batch: BatchEncoding,
        all_labels: list[str],
        is_replayed: Tensor,
        passes: list[Tensor],
        scored: bool = False,
    ) -> LearnReport:
        """The same step in several forward and backward passes: only one pass's activations are held at
        a time, texts of like length share a pass, and the gradients add up to the one-pass step's (the
        gate measures real tokens only, unless `gate_padding` counts the padding that passes cut)."""
        targets = self.model.label_ids(all_labels)
        plan = plan_loss(targets, self.config.loss, is_replayed, len(self.model.labels))
        assert plan is not None, "a model of one label learns in one pass"
        incoming = torch.empty(len(texts), self.model.head.weight.shape[1], device=self.model.device)
        loss = 0.0
        for rows in passes:
            embeddings = self._encode(_rows_of(batch, rows), decide=False)
            if not torch.isfinite(embeddings).all():
                return self._skip()
            new = rows < len(texts)
            incoming[rows[new]] = embeddings[new].detach()
            part = pass_loss(plan, self.model.head(embeddings), targets[rows], is_replayed[rows])
            if not torch.isfinite(part):
                return self._skip()
            part.backward()
            loss += part.item()
        if not scored:
            # The head moves only in the update, so every pass saw the model these examples are scored by.
            self._score_before_learning(incoming, labels)
        return self._update(texts, labels, plan.touched, loss)

    def _encode(self, batch: BatchEncoding, decide: bool) -> Tensor:
        with (
            self.strategy.measuring(batch["attention_mask"], decide),
            autocast(self.model.device, self.precision),
        ):
            embeddings = self.model.embed(batch)
        # The head, imprinting and the loss take float32 whatever the encoder's precision.
        return embeddings.float()

    def _update(self, texts: list[str], labels: list[str], touched: Tensor, loss: float) -> LearnReport:
        """Apply the step whose gradients backward left, unless one of them is not finite."""
        if not self._gradients_finite():
            return self._skip()
        self.strategy.step(self.optimizer, self._head_rows(touched))
        self.optimizer.zero_grad(set_to_none=True)
        self.strategy.learned(texts, labels)
        self.counters.updates += 1
        self.counters.examples_trained += len(texts)
        return LearnReport(trained=len(texts), loss=loss)

    def _score_before_learning(self, embeddings: Tensor, labels: list[str]) -> None:
        """Record the model's guess for each incoming example in the prequential accuracy, and mark both
        the labels given and the labels guessed as at risk (see `learner.promotion`)."""
        self.at_risk.update(labels)
        known = list(self.model.labels)
        if not known:
            self.prequential.record([None] * len(labels), labels)
            return
        with torch.no_grad():
            guesses = [known[i] for i in self.model.head(embeddings.detach()).argmax(dim=-1).tolist()]
        self.prequential.record(guesses, labels)
        self.at_risk.update(guesses)

    def _head_rows(self, touched: Tensor) -> dict[nn.Parameter, Tensor]:
        """Row masks that keep the optimizer off the head rows no loss term touched."""
        if bool(touched.all()):
            return {}
        head = self.model.head
        return {param: touched for param in (head.weight, head.bias) if param is not None}

    def _without_a_step(self, texts: list[str], labels: list[str]) -> LearnReport:
        """A step that would carry no signal (one label known): the examples are kept (a new label's row
        was imprinted from them, replay holds them) but no weight and no optimizer state moves."""
        self.optimizer.zero_grad(set_to_none=True)
        self.strategy.discard()
        self.strategy.learned(texts, labels)
        self.counters.examples_trained += len(texts)
        return LearnReport(trained=len(texts))

    def _grow(self, new_labels: list[str], embeddings: Tensor, labels: list[str]) -> None:
        old = [self.model.head.weight, self.model.head.bias]
        self.model.add_labels(new_labels, embeddings, labels)
        for before, after in zip(old, [self.model.head.weight, self.model.head.bias], strict=True):
            if before is not None:
                swap_parameter(self.optimizer, before, after)

    def _gradients_finite(self) -> bool:
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        return bool(torch.isfinite(torch.stack(torch._foreach_norm(grads))).all()) if grads else True

    def _skip(self) -> LearnReport:
        self.optimizer.zero_grad(set_to_none=True)
        self.strategy.discard()
        self.counters.skipped_steps += 1
        return LearnReport(skipped=True)

    def keep_rates(self) -> dict[str, float]:
        """Share of rows the last step updated, per gated layer (empty for an ungated strategy)."""
        return self.strategy.keep_rates()

    def keep_rate(self) -> float:
        return self.strategy.keep_rate()

    def predict(self, texts: list[str], top_k: int = 1) -> list[Prediction]:
        return self.model.predict(texts, top_k=top_k)

    def evaluate(self) -> list[Alarm]:
        """Accuracy on the probe sets due (`due_for_evaluation`, within `eval_budget` texts); returns the
        forgetting alarms this evaluation raised."""
        probes = due_for_evaluation(
            self.probes.evaluable(), self.config.eval_budget, self.tracker.last_evaluated
        )
        if not probes or not self.model.labels:
            return []
        outcomes = evaluate(probes, lambda texts: [p.label for p in self.model.predict(texts)])
        return self.tracker.record(self.counters.updates, self.counters.model_version, outcomes)

    def check_promotion(self, budget: int) -> Verdict:
        """Whether the current weights may be served: the canaries of the labels most at risk, within
        `budget` texts (`learner.promotion`). A pass clears the labels it judged or could not judge; a
        failure keeps every label at risk, so the next check looks again."""
        ranked = [label for label, _ in self.at_risk.most_common() if label in self.model.labels]
        labels = ranked[: budget // CANARIES]
        chosen = canaries(self.probes.evaluable(), self.tracker.reference, labels)
        verdict = check(
            chosen, lambda texts: [p.label for p in self.model.predict(texts)], self.config.alarm_threshold
        )
        if verdict.passed:
            for label in labels:
                del self.at_risk[label]
        return verdict

    def forgetting_report(self) -> dict[str, Any]:
        probes = self.probes.probes()
        return self.tracker.report(
            sizes={p.name: p.size for p in probes},
            sources={p.name: p.source for p in probes},
            history_limit=HISTORY_POINTS,
        )

    def save(
        self,
        store: SnapshotStore,
        info: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
        version: int | None = None,
    ) -> Manifest:
        """Write a snapshot that holds everything needed to continue exactly.

        `info` goes to the manifest (small, listed without loading); `extra` is the caller's own state,
        returned by `restore`. `version` is the store's next one unless given.
        """
        previous = self.counters.model_version
        version = version or store.max_version() + 1
        tensors, state, details = self.snapshot_contents(version, info, extra)
        latest = store.latest()
        try:
            return store.save(
                tensors, state, info=details, parent=latest.id if latest else None, version=version
            )
        except Exception:
            self.counters.model_version = previous
            raise

    def snapshot_contents(
        self, version: int, info: dict[str, Any] | None = None, extra: dict[str, Any] | None = None
    ) -> tuple[dict[str, dict[str, Tensor]], dict[str, Any], dict[str, Any]]:
        """What a snapshot numbered `version` holds (tensors, state, the manifest's info), which becomes the
        learner's version. The tensors are the live ones: serialize them before the next step."""
        self.counters.model_version = version
        tensors, state = self.state()
        state["extra"] = extra
        details = {
            "updates": self.counters.updates,
            "mean_accuracy": self.tracker.summary()["mean_accuracy"],
            "alarms": len(self.tracker.active_alarms()),
            **(info or {}),
        }
        return tensors, state, details

    def publication_contents(self) -> tuple[dict[str, dict[str, Tensor]], dict[str, Any], dict[str, Any]]:
        """What a publication holds: the live weights (serialize them before the next step), the state a
        replica needs, and the manifest's info."""
        state = {
            "config": asdict(self.config),
            "labels": self.model.labels,
            "counters": asdict(self.counters),
        }
        return {MODEL: self.model.state_dict()}, state, {"updates": self.counters.updates}

    def state(self) -> tuple[dict[str, dict[str, Tensor]], dict[str, Any]]:
        optimizer_tensors, optimizer_state = split_optimizer_state(self.optimizer.state_dict())
        trainer = {f"optim.{key}": value for key, value in optimizer_tensors.items()}
        trainer["rng.torch"] = torch.get_rng_state()
        device_rng = rng_state(self.model.device)
        if device_rng is not None:
            trainer[f"rng.{self.model.device.type}"] = device_rng
        strategy_tensors, strategy_state = self.strategy.state()
        trainer.update(strategy_tensors)
        state = {
            "config": asdict(self.config),
            "labels": self.model.labels,
            "counters": asdict(self.counters),
            "optimizer": optimizer_state,
            "rng": _jsonable_rng(self.rng.getstate()),
            "probe_salt": self.probe_salt.hex(),
            **strategy_state,
            "probes": self.probes.state_dict(),
            "tracker": self.tracker.state_dict(),
            "prequential": self.prequential.state_dict(),
            "at_risk": dict(self.at_risk),
        }
        return {MODEL: self.model.state_dict(), TRAINER: trainer}, state

    def restore(self, snapshot: Snapshot) -> dict[str, Any] | None:
        """Continue from a snapshot taken by a learner with the same strategy, head and encoder.

        Returns the `extra` state saved with it."""
        state, trainer = snapshot.state, snapshot.tensors[TRAINER]
        saved = state["config"]
        for key in ("strategy", "head", "loss"):
            if saved[key] != getattr(self.config, key):
                raise ValueError(
                    f"snapshot {snapshot.id} was trained with {key}={saved[key]!r}, "
                    f"not {getattr(self.config, key)!r}"
                )
        self.model.set_labels(state["labels"])
        self.model.load_state_dict(snapshot.tensors[MODEL])
        self.optimizer = self._make_optimizer()
        self.optimizer.load_state_dict(join_optimizer_state(_strip(trainer, "optim."), state["optimizer"]))
        self.strategy.load_state(trainer, state)
        torch.set_rng_state(trainer["rng.torch"])
        # A snapshot from another kind of device leaves this device's generator where it is.
        device_rng = trainer.get(f"rng.{self.model.device.type}")
        if device_rng is not None:
            set_rng_state(self.model.device, device_rng)
        self.rng.setstate(_rng_from_json(state["rng"]))
        # A snapshot from before salted routing keeps this learner's new salt: texts it held out stay in
        # their probe sets, and `ProbeRegistry.holds` keeps them out of training.
        self.probe_salt = bytes.fromhex(state.get("probe_salt", self.probe_salt.hex()))
        self.probes.load_state_dict(state["probes"])
        self.tracker.load_state_dict(state["tracker"])
        self.counters = Counters(**state["counters"])
        self.prequential = PrequentialAccuracy()
        if "prequential" in state:
            self.prequential.load_state_dict(state["prequential"])
        self.at_risk = Counter(state.get("at_risk", {}))
        return state.get("extra")


def _passes(attention_mask: Tensor, size: int) -> list[Tensor]:
    """A step's rows in passes of at most `size` examples (0: one pass), as even as can be, the longest
    texts together so that each pass pads little."""
    count = attention_mask.shape[0]
    if size <= 0 or count <= size:
        return [torch.arange(count, device=attention_mask.device)]
    order = attention_mask.sum(dim=1).argsort(descending=True, stable=True)
    return list(order.tensor_split(math.ceil(count / size)))


def _rows_of(batch: BatchEncoding, rows: Tensor) -> BatchEncoding:
    """These rows of a padded batch, without the token positions that are padding in all of them."""
    mask = batch["attention_mask"][rows]
    used = mask.any(dim=0)
    return BatchEncoding({"input_ids": batch["input_ids"][rows][:, used], "attention_mask": mask[:, used]})


def _strip(tensors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {key.removeprefix(prefix): value for key, value in tensors.items() if key.startswith(prefix)}


def _jsonable_rng(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _rng_from_json(state: list) -> tuple:
    version, internal, gauss = state
    return version, tuple(internal), gauss
