import pytest
import torch
from torch import nn

from learner.gated_adamw import GatedAdamW
from learner.migu import MiguGate

WIDTH = 10


def _model() -> nn.Sequential:
    """An identity first layer, so its row magnitudes are exactly the input's column sums."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.ReLU(), nn.Linear(WIDTH, 5), nn.Linear(5, 3))
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(WIDTH))
        model[0].bias.zero_()
    return model


def _batch(pad_value: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Real tokens carry value i + 1 in column i; the last token of every sequence is padding.

    Padding puts ``pad_value`` in the three lowest columns, which would make them the
    largest rows if padding were counted.
    """
    x = torch.arange(1, WIDTH + 1, dtype=torch.float32).expand(2, 4, WIDTH).clone()
    attention_mask = torch.ones(2, 4, dtype=torch.long)
    attention_mask[:, -1] = 0
    x[:, -1] = 0.0
    x[:, -1, :3] = pad_value
    return x, attention_mask


def _measured_step(gate: MiguGate, model: nn.Module, x: torch.Tensor, attention_mask: torch.Tensor):
    with gate.measuring(attention_mask):
        loss = (model(x) ** 2 * attention_mask[..., None]).sum()
    loss.backward()
    return gate.row_masks()


def _expected_keep(output: torch.Tensor, attention_mask: torch.Tensor, quantile: float) -> torch.Tensor:
    magnitude = (output.abs() * attention_mask[..., None]).sum(dim=(0, 1))
    return magnitude >= torch.quantile(magnitude, quantile)


def _kept_rows(masks: dict, layer: nn.Linear) -> list[int]:
    return torch.nonzero(masks[layer.weight]).flatten().tolist()


def test_full_step_changes_exactly_the_rows_above_the_quantile() -> None:
    model = _model()
    gate = MiguGate(model, exclude=[model[3]], warmup_steps=1)
    opt = GatedAdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    x, attention_mask = _batch()

    opt.step(_measured_step(gate, model, x, attention_mask))  # warmup: moments become non-zero
    opt.zero_grad()

    with torch.no_grad():
        hidden = model[0](x)
        expected = {
            model[0]: _expected_keep(hidden, attention_mask, 0.7),
            model[2]: _expected_keep(model[2](model[1](hidden)), attention_mask, 0.7),
        }
    snapshot = {
        p: (p.detach().clone(), opt.state[p]["exp_avg"].clone(), opt.state[p]["exp_avg_sq"].clone())
        for p in model.parameters()
    }
    masks = _measured_step(gate, model, x, attention_mask)
    opt.step(masks)

    assert _kept_rows(masks, model[0]) == [7, 8, 9]
    for layer, keep in expected.items():
        assert torch.equal(masks[layer.weight], keep)
        assert torch.equal(masks[layer.bias], keep)
        for p in (layer.weight, layer.bias):
            weight, exp_avg, exp_avg_sq = snapshot[p]
            assert torch.equal(p[~keep], weight[~keep])
            assert torch.equal(opt.state[p]["exp_avg"][~keep], exp_avg[~keep])
            assert torch.equal(opt.state[p]["exp_avg_sq"][~keep], exp_avg_sq[~keep])
            assert (p[keep] != weight[keep]).all()
    # The excluded head is not gated and trains as usual.
    assert model[3].weight not in masks
    assert not torch.equal(model[3].weight, snapshot[model[3].weight][0])


def test_padding_is_ignored_only_when_excluded() -> None:
    model = _model()
    x, attention_mask = _batch(pad_value=1e4)
    clean_x, _ = _batch()

    masks = _measured_step(MiguGate(model), model, x, attention_mask)
    clean = _measured_step(MiguGate(model), model, clean_x, attention_mask)
    counted = _measured_step(MiguGate(model, exclude_padding=False), model, x, attention_mask)

    assert _kept_rows(masks, model[0]) == [7, 8, 9]
    for p in masks:
        assert torch.equal(masks[p], clean[p])
    assert _kept_rows(counted, model[0]) == [0, 1, 2]


def test_hooks_live_only_inside_the_block() -> None:
    model = _model()
    gate = MiguGate(model)
    x, attention_mask = _batch()
    reference = MiguGate(model)
    with reference.measuring(attention_mask):
        model(x)
    expected = reference.row_masks()

    with gate.measuring(attention_mask):
        model(x)
    assert all(not layer._forward_hooks for layer in model.modules())
    model(torch.full((3, 7, WIDTH), 100.0))  # an evaluation forward of another shape
    model(torch.full((5, WIDTH), -100.0))
    masks = gate.row_masks()
    for p in expected:
        assert torch.equal(masks[p], expected[p])
    assert gate.last_stats() == reference.last_stats()


def test_hooks_are_removed_when_the_block_raises() -> None:
    model = _model()
    gate = MiguGate(model)
    with pytest.raises(RuntimeError, match="boom"), gate.measuring(None):
        raise RuntimeError("boom")
    assert all(not layer._forward_hooks for layer in model.modules())


def test_forwards_accumulate_within_one_block() -> None:
    model = _model()
    x, attention_mask = _batch()
    once, twice = MiguGate(model), MiguGate(model)
    with once.measuring(attention_mask):
        model(x)
    with twice.measuring(attention_mask):
        model(x)
        model(x)
    once.row_masks()
    twice.row_masks()
    name = "0"
    assert twice.last_stats()[name]["mean"] == pytest.approx(2 * once.last_stats()[name]["mean"])


def test_rows_without_token_axis_sum_over_the_batch() -> None:
    model = _model()
    gate = MiguGate(model)
    pooled = torch.arange(1, WIDTH + 1, dtype=torch.float32).flip(0).expand(3, WIDTH)
    with gate.measuring(torch.ones(3, 4)):
        model(pooled)
    masks = gate.row_masks()
    assert _kept_rows(masks, model[0]) == [0, 1, 2]
    assert gate.last_stats()["0"]["max"] == pytest.approx(3 * WIDTH)


def test_discard_forgets_a_skipped_step() -> None:
    model = _model()
    x, attention_mask = _batch()
    gate, reference = MiguGate(model, warmup_steps=1), MiguGate(model, warmup_steps=1)
    with gate.measuring(attention_mask):
        model(x.flip(-1))
    gate.discard()
    assert gate.steps == 0
    for g in (gate, reference):
        with g.measuring(attention_mask):
            model(x)
        g.row_masks()
    assert gate.last_stats() == reference.last_stats()


def test_excluded_modules_are_not_gated() -> None:
    model = _model()
    gate = MiguGate(model, exclude=[model[2], model[3]])
    masks = _measured_step(gate, model, *_batch())
    assert set(masks) == {model[0].weight, model[0].bias}
    assert set(gate.last_stats()) == {"0"}


def test_warmup_keeps_every_row() -> None:
    model = _model()
    gate = MiguGate(model, warmup_steps=2)
    x, attention_mask = _batch()
    for _ in range(2):
        masks = _measured_step(gate, model, x, attention_mask)
        assert all(keep.all() for keep in masks.values())
        assert gate.keep_rate() == 1.0
    masks = _measured_step(gate, model, x, attention_mask)
    assert _kept_rows(masks, model[0]) == [7, 8, 9]
    assert gate.keep_rate() < 1.0


def test_ema_smooths_magnitudes_across_steps() -> None:
    model = _model()
    rising = torch.arange(1, WIDTH + 1, dtype=torch.float32).expand(2, 4, WIDTH)
    # Magnitudes falling with the row index, and ten times smaller.
    falling = 0.1 * rising.flip(-1)
    attention_mask = torch.ones(2, 4)
    smoothed, raw = MiguGate(model, ema=0.5), MiguGate(model)
    for gate in (smoothed, raw):
        for x in (rising, falling):
            with gate.measuring(attention_mask):
                model(x)
            masks = gate.row_masks()
        if gate is smoothed:
            assert _kept_rows(masks, model[0]) == [7, 8, 9]
        else:
            assert _kept_rows(masks, model[0]) == [0, 1, 2]
    magnitude = 0.5 * rising[0, 0] * 8 + 0.5 * falling[0, 0] * 8
    assert smoothed.last_stats()["0"]["mean"] == pytest.approx(magnitude.mean().item())
    assert smoothed.last_stats()["0"]["max"] == pytest.approx(magnitude.max().item())


def test_quantile_zero_keeps_every_row() -> None:
    model = _model()
    masks = _measured_step(MiguGate(model, quantile=0.0), model, *_batch())
    assert all(keep.all() for keep in masks.values())


@pytest.mark.parametrize("quantile", [-0.1, 1.0, 1.5])
def test_invalid_quantile_raises(quantile: float) -> None:
    with pytest.raises(ValueError, match="quantile"):
        MiguGate(_model(), quantile=quantile)


def test_mask_bias_off_leaves_biases_ungated() -> None:
    model = _model()
    masks = _measured_step(MiguGate(model, mask_bias=False), model, *_batch())
    assert model[0].bias not in masks
    assert model[0].weight in masks


def test_stats_and_keep_rate() -> None:
    model = _model()
    gate = MiguGate(model, exclude=[model[2], model[3]])
    assert gate.keep_rate() == 1.0
    _measured_step(gate, model, *_batch())
    stats = gate.last_stats()["0"]
    assert stats["keep_rate"] == pytest.approx(0.3)
    assert stats["threshold"] == pytest.approx(7.3 * 6)
    assert stats["max"] == pytest.approx(10 * 6)
    assert gate.keep_rate() == pytest.approx(0.3)


def test_state_dict_round_trip_resumes_exactly() -> None:
    model = _model()
    x, attention_mask = _batch()
    gate = MiguGate(model, ema=0.9, warmup_steps=2)
    _measured_step(gate, model, x, attention_mask)
    state = gate.state_dict()
    assert int(state["step"]) == 1

    resumed = MiguGate(model, ema=0.9, warmup_steps=2)
    resumed.load_state_dict(state)
    assert resumed.steps == 1
    # A resumed learner reports the keep-rates of the step its weights came from, not "no step yet".
    assert resumed.last_stats() == gate.last_stats() and resumed.keep_rate() == gate.keep_rate()
    second = 0.5 * x
    for g in (gate, resumed):
        masks = _measured_step(g, model, second, attention_mask)
        assert all(keep.all() for keep in masks.values())  # still inside warmup
    third = [_measured_step(g, model, x.flip(-1), attention_mask) for g in (gate, resumed)]
    for p in third[0]:
        assert torch.equal(third[0][p], third[1][p])
    assert gate.last_stats() == resumed.last_stats()
    for key, value in gate.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key])


def test_load_state_dict_rejects_unknown_layers() -> None:
    gate = MiguGate(_model(), ema=0.5)
    with pytest.raises(KeyError, match="no gated layer"):
        gate.load_state_dict({"step": torch.tensor(0), "ema.missing": torch.zeros(3)})


def test_kept_rows_get_plain_backprop_gradients_and_dropped_rows_none() -> None:
    model, reference = _model(), _model()
    gate = MiguGate(model, quantile=0.5)
    x, attention_mask = _batch()
    masks = _measured_step(gate, model, x, attention_mask)
    (reference(x) ** 2 * attention_mask[..., None]).sum().backward()
    for gated, plain in zip(model.parameters(), reference.parameters(), strict=True):
        keep = masks[gated]
        assert 0 < int(keep.sum()) < len(keep)
        assert torch.allclose(gated.grad[keep], plain.grad[keep], rtol=1e-5, atol=1e-6)
        assert not gated.grad[~keep].any()
    # The layers are plain again outside the block: an evaluation backward computes every row.
    (model(x) ** 2).sum().backward()
    assert all(layer.forward.__func__ is nn.Linear.forward for layer in gate.layers.values())


def test_the_rows_a_backward_pass_keeps_are_those_the_optimizer_is_given() -> None:
    model = _model()
    gate = MiguGate(model, quantile=0.7, ema=0.5)
    x, attention_mask = _batch()
    for step in range(3):
        masks = _measured_step(gate, model, x * (step + 1), attention_mask)
        for param, keep in masks.items():
            assert not param.grad[~keep].any()
            assert param.grad[keep].abs().sum() > 0
            param.grad = None
