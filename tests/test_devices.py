"""Where the learner computes: the device setting, every tensor of a step on the model's device, and
snapshots that load on another device. Runs on the CPU; on a GPU machine `auto` exercises CUDA too."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from app.serving import ModelHolder
from learner.devices import Precision, has_bf16_units, resolve_device, resolve_precision
from learner.encoder import tiny_bert
from learner.online import Example, LearnerConfig, OnlineLearner
from learner.snapshots import SnapshotStore

SPORTS = [f"the team won the match {i} with a late goal" for i in range(12)]
FINANCE = [f"shares fell as the bank cut its forecast {i}" for i in range(12)]


class DevicesSeen(TorchDispatchMode):
    """Records the device of every tensor each operation returns, with the operation's name."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, torch.device]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self.seen.append((str(func), leaf.device))
        return out


def learner_on(device: str, precision: Precision = "fp32") -> OnlineLearner:
    tokenizer, encoder = tiny_bert(seed=0)
    config = LearnerConfig(device=device, precision=precision, lr=3e-3, probe_fraction=0.0, eval_every=2)
    return OnlineLearner(tokenizer, encoder, config, probe_salt=b"tests")


def batches() -> Iterator[list[Example]]:
    for start in range(0, 12, 4):
        yield [Example(t, "sports") for t in SPORTS[start : start + 4]] + [
            Example(t, "finance") for t in FINANCE[start : start + 4]
        ]


@pytest.mark.parametrize("device", ["auto", "cpu"])
def test_every_tensor_a_step_creates_is_on_the_models_device(device: str) -> None:
    learner = learner_on(device)
    learner.register_probe("golden", [(SPORTS[-1], "sports"), (FINANCE[-1], "finance")])
    assert learner.model.device == resolve_device(device)
    with DevicesSeen() as hook:
        # New labels, gated steps, replay, an evaluation, the promotion check.
        reports = [learner.learn(batch) for batch in batches()]
        learner.check_promotion(64)
    assert any(report.evaluated for report in reports) and learner.counters.updates >= 2
    # A step's own scalars (the optimizer's step counts, as torch keeps them) stay on the CPU by design;
    # everything of the size of a batch or a weight must be on the device.
    astray = {name for name, where in hook.seen if where != learner.model.device}
    assert not astray - CPU_SCALARS, astray


# AdamW's step counter: a CPU scalar in torch's own optimizers, kept so in GatedAdamW.
# Tensors made from Python data (token ids, scalars) are made on the CPU before they are moved.
CPU_SCALARS = {"aten.add_.Tensor", "aten.lift_fresh.default"}


def test_a_snapshot_written_on_the_learners_device_is_served_on_the_replicas(tmp_path: Path) -> None:
    learner = learner_on("auto")
    for batch in batches():
        learner.learn(batch)
    store = SnapshotStore(tmp_path)
    learner.save(store)
    holder = ModelHolder("unused", store, device=resolve_device("cpu"))
    holder._base = tiny_bert(seed=0)
    assert holder.refresh()
    served = holder.current.predict(SPORTS + FINANCE, top_k=2)
    learned = learner.predict(SPORTS + FINANCE, top_k=2)
    assert [p.label for p in served] == [p.label for p in learned]
    assert [p.score for p in served] == pytest.approx([p.score for p in learned], abs=1e-4)


def test_a_resumed_learner_continues_exactly_with_the_device_setting_exercised(tmp_path: Path) -> None:
    straight = learner_on("cpu")
    for batch in batches():
        straight.learn(batch)

    first = learner_on("cpu")
    steps = list(batches())
    first.learn(steps[0])
    store = SnapshotStore(tmp_path)
    snapshot = store.load(first.save(store).id)
    resumed = learner_on("cpu")
    resumed.restore(snapshot)
    for batch in steps[1:]:
        resumed.learn(batch)
    for name, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name


def test_a_device_this_machine_lacks_is_refused_naming_what_to_set() -> None:
    with pytest.raises(ValueError, match="is not a device: use auto, cpu, cuda, cuda:N or mps"):
        resolve_device("gpu")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(ValueError, match=f"this machine has {count} CUDA devices; use cpu or auto"):
        resolve_device(f"cuda:{count}")


def test_bf16_multiplies_the_encoder_in_bfloat16_and_keeps_every_state_in_float32() -> None:
    learner = learner_on("cpu", "bf16")
    gated = learner.model.encoder.encoder.layer[0].intermediate.dense
    outputs: list[torch.dtype] = []
    gated.register_forward_hook(lambda _module, _inputs, output: outputs.append(output.dtype))
    before = {name: value.clone() for name, value in learner.model.state_dict().items()}
    reports = [learner.learn(batch) for batch in batches()]
    assert all(report.loss is not None and math.isfinite(report.loss) for report in reports)
    assert torch.bfloat16 in outputs, "the training forward ran in float32"
    moved = [
        name for name, value in learner.model.state_dict().items() if not torch.equal(value, before[name])
    ]
    assert any("encoder.layer" in name for name in moved), "the gated encoder did not learn"
    for name, value in learner.model.state_dict().items():
        assert not value.is_floating_point() or value.dtype == torch.float32, name
    moments = [
        v for state in learner.optimizer.state.values() for v in state.values() if v.is_floating_point()
    ]
    assert moments and all(moment.dtype == torch.float32 for moment in moments)
    assert 0.0 < learner.keep_rate() < 1.0


def test_a_bf16_learner_answers_as_a_float32_one_does() -> None:
    learners = {precision: learner_on("cpu", precision) for precision in ("fp32", "bf16")}
    for learner in learners.values():
        for batch in batches():
            learner.learn(batch)
    texts = SPORTS + FINANCE
    answers = {precision: learner.predict(texts) for precision, learner in learners.items()}
    assert [p.label for p in answers["bf16"]] == [p.label for p in answers["fp32"]]
    assert [p.score for p in answers["bf16"]] == pytest.approx([p.score for p in answers["fp32"]], abs=0.05)


def test_auto_precision_is_bf16_exactly_where_the_device_has_bfloat16_units() -> None:
    cpu = resolve_device("cpu")
    assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
    learner = learner_on("cpu", "auto")
    assert learner.precision == ("bf16" if has_bf16_units(cpu) else "fp32")
    dtypes: list[torch.dtype] = []
    layer = learner.model.encoder.encoder.layer[0].output.dense
    layer.register_forward_hook(lambda _module, _inputs, output: dtypes.append(output.dtype))
    learner.learn(next(batches()))
    assert dtypes == [torch.bfloat16 if learner.precision == "bf16" else torch.float32]
