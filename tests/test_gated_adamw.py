import copy
import io

import pytest
import torch
from torch import nn

from learner.gated_adamw import GatedAdamW

HYPER = {"lr": 1e-2, "betas": (0.9, 0.99), "eps": 1e-8, "weight_decay": 0.1}


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3), nn.LayerNorm(3))


def _grads(model: nn.Module, n_steps: int, seed: int = 1) -> list[list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [[torch.randn(p.shape, generator=generator) for p in model.parameters()] for _ in range(n_steps)]


def _set_grads(model: nn.Module, grads: list[torch.Tensor]) -> None:
    for p, g in zip(model.parameters(), grads, strict=True):
        p.grad = g.clone()


def _assert_close(a: nn.Module, b: nn.Module) -> None:
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, atol=1e-6, rtol=0)


@pytest.mark.parametrize("all_true_masks", [False, True])
def test_matches_adamw_without_gating(all_true_masks: bool) -> None:
    gated_model, ref_model = _model(), _model()
    gated = GatedAdamW(gated_model.parameters(), **HYPER)
    ref = torch.optim.AdamW(ref_model.parameters(), **HYPER)
    for grads in _grads(gated_model, 6):
        _set_grads(gated_model, grads)
        _set_grads(ref_model, grads)
        masks = None
        if all_true_masks:
            masks = {p: torch.ones(p.shape[0], dtype=torch.bool) for p in gated_model.parameters()}
        gated.step(masks)
        ref.step()
        _assert_close(gated_model, ref_model)
    for pg, pr in zip(gated_model.parameters(), ref_model.parameters(), strict=True):
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(gated.state[pg][key], ref.state[pr][key], atol=1e-6, rtol=0)


def test_masked_rows_keep_weights_and_state_bit_for_bit() -> None:
    model = _model()
    layer = model[0]
    opt = GatedAdamW(model.parameters(), **HYPER)
    grads = _grads(model, 2)
    _set_grads(model, grads[0])
    opt.step()  # non-zero moments, so "state untouched" is a real check
    keep = torch.tensor([True, False, False, True, False, True])
    before = {
        name: (p.detach().clone(), opt.state[p]["exp_avg"].clone(), opt.state[p]["exp_avg_sq"].clone())
        for name, p in (("weight", layer.weight), ("bias", layer.bias))
    }
    _set_grads(model, grads[1])
    opt.step({layer.weight: keep, layer.bias: keep})
    for name, p in (("weight", layer.weight), ("bias", layer.bias)):
        w0, m0, v0 = before[name]
        state = opt.state[p]
        assert torch.equal(p[~keep], w0[~keep])
        assert torch.equal(state["exp_avg"][~keep], m0[~keep])
        assert torch.equal(state["exp_avg_sq"][~keep], v0[~keep])
        changed = (p != w0).reshape(p.shape[0], -1).all(dim=1)
        assert changed[keep].all()
        assert torch.equal(state["step"], torch.where(keep, 2.0, 1.0))


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_each_row_follows_adamw_over_the_steps_it_took(weight_decay: float) -> None:
    hyper = {**HYPER, "weight_decay": weight_decay}
    generator = torch.Generator().manual_seed(0)
    weight = nn.Parameter(torch.randn(6, 3, generator=generator))
    # One AdamW per row, stepped only when that row is kept.
    row_params = [nn.Parameter(weight[r : r + 1].detach().clone()) for r in range(6)]
    row_optimizers = [torch.optim.AdamW([q], **hyper) for q in row_params]
    opt = GatedAdamW([weight], **hyper)
    for step in range(6):
        grad = torch.randn(6, 3, generator=generator)
        # The last step keeps every row, which runs the in-place path on per-row state.
        keep = torch.rand(6, generator=generator) < 0.5 if step < 5 else torch.ones(6, dtype=torch.bool)
        weight.grad = grad.clone()
        opt.step({weight: keep})
        for r in torch.nonzero(keep).flatten().tolist():
            row_params[r].grad = grad[r : r + 1].clone()
            row_optimizers[r].step()
    for r, q in enumerate(row_params):
        torch.testing.assert_close(weight[r : r + 1], q, atol=1e-6, rtol=0)
        ref_state = row_optimizers[r].state.get(q, {})
        assert opt.state[weight]["step"][r] == float(ref_state.get("step", 0.0))


def test_dense_state_turns_per_row_when_a_mask_arrives() -> None:
    model = _model()
    layer = model[2]
    opt = GatedAdamW(model.parameters(), **HYPER)
    grads = _grads(model, 2)
    _set_grads(model, grads[0])
    opt.step()
    assert opt.state[layer.weight]["step"].ndim == 0
    before = layer.weight.detach().clone()
    keep = torch.tensor([False, True, False])
    _set_grads(model, grads[1])
    opt.step({layer.weight: keep})
    assert torch.equal(opt.state[layer.weight]["step"], torch.tensor([1.0, 2.0, 1.0]))
    assert torch.equal(layer.weight[~keep], before[~keep])


def test_state_dict_round_trip_continues_identically() -> None:
    model = _model()
    opt = GatedAdamW(model.parameters(), **HYPER)
    grads = _grads(model, 4)

    def masks_for(m: nn.Module, i: int) -> dict[nn.Parameter, torch.Tensor] | None:
        return [
            {m[0].weight: torch.tensor([True, False, True, True, False, False])},
            None,
            {
                m[0].weight: torch.tensor([False, True, True, False, False, True]),
                m[2].bias: torch.tensor([True, False, True]),
            },
            {m[2].weight: torch.tensor([False, False, True])},
        ][i]

    for i in range(2):
        _set_grads(model, grads[i])
        opt.step(masks_for(model, i))

    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer)
    clone = _model(seed=5)
    clone.load_state_dict(saved["model"])
    clone_opt = GatedAdamW(clone.parameters(), **HYPER)
    clone_opt.load_state_dict(saved["opt"])
    assert clone_opt.state[clone[0].weight]["step"].shape == (6,)

    for i in range(2, 4):
        _set_grads(model, grads[i])
        _set_grads(clone, grads[i])
        opt.step(masks_for(model, i))
        clone_opt.step(masks_for(clone, i))
    for p, q in zip(model.parameters(), clone.parameters(), strict=True):
        assert torch.equal(p, q)


def test_deep_copy_keeps_training() -> None:
    model = _model()
    opt = GatedAdamW(model.parameters(), **HYPER)
    grads = _grads(model, 2)
    keep = torch.tensor([True, False, True, True, False, False])
    _set_grads(model, grads[0])
    opt.step({model[0].weight: keep})
    twin_model, twin = copy.deepcopy((model, opt))
    for m, o in ((model, opt), (twin_model, twin)):
        _set_grads(m, grads[1])
        o.step({m[0].weight: keep})
    for p, q in zip(model.parameters(), twin_model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_params_without_grad_are_skipped() -> None:
    model = _model()
    opt = GatedAdamW(model.parameters(), **HYPER)
    frozen = model[0].weight
    before = frozen.detach().clone()
    for p in model.parameters():
        p.grad = None if p is frozen else torch.ones_like(p)
    opt.step({frozen: torch.ones(frozen.shape[0], dtype=torch.bool)})
    assert torch.equal(frozen, before)
    assert frozen not in opt.state


def test_mask_of_wrong_shape_raises() -> None:
    weight = nn.Parameter(torch.zeros(4, 3))
    weight.grad = torch.ones(4, 3)
    opt = GatedAdamW([weight])
    with pytest.raises(ValueError, match="row mask"):
        opt.step({weight: torch.ones(3, dtype=torch.bool)})


def test_closure_is_evaluated() -> None:
    weight = nn.Parameter(torch.ones(2, 2))
    opt = GatedAdamW([weight])

    def closure() -> float:
        opt.zero_grad()
        loss = (weight**2).sum()
        loss.backward()
        return float(loss.detach())

    assert opt.step(closure=closure) == 4.0
    assert (weight < 1.0).all()


def test_a_zero_learning_rate_moves_no_weight_and_still_tracks_the_moments() -> None:
    model = _model()
    layer = model[0]
    opt = GatedAdamW(model.parameters(), **{**HYPER, "lr": 0.0})
    before = [p.detach().clone() for p in model.parameters()]
    keep = torch.tensor([True, False, False, True, False, True])
    # Dense state first, then per-row state through a partial and a full mask; a row whose gradient is
    # zero (an unused token's embedding) has no second moment to divide by.
    masks_per_step = [None, {layer.weight: keep}, {layer.weight: keep | ~keep}]
    for grads, masks in zip(_grads(model, 3), masks_per_step, strict=True):
        grads[0][0] = 0.0
        _set_grads(model, grads)
        opt.step(masks)
    for p, p0 in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, p0)
    assert torch.equal(opt.state[layer.weight]["step"], torch.where(keep, 3.0, 2.0))
    assert (opt.state[layer.weight]["exp_avg_sq"][1:] > 0).all()
