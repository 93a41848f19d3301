"""AdamW that updates only selected rows of a parameter and leaves the rest untouched.

A row-masked parameter keeps, for each row, its own step counter: a row that sat out
some steps is bias-corrected for the steps it actually took, so a masked row's weight,
moments and step count stay exactly as they were.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer, ParamsT

RowMasks = Mapping[torch.nn.Parameter, Tensor]


class GatedAdamW(Optimizer):
    """AdamW (decoupled weight decay, bias correction) with optional per-row gating.

    ``step(row_masks)`` takes, for any parameter, a bool mask over its first dimension;
    only the rows it keeps are decayed and updated, and only their moments and step
    counts advance. Parameters without a mask follow ``torch.optim.AdamW`` exactly.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
    ) -> None:
        if lr < 0.0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        if eps < 0.0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"betas must lie in [0, 1), got {betas}")
        if weight_decay < 0.0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})
        self._scratch: dict[tuple[torch.device, torch.dtype], Tensor] = {}

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._scratch = {}

    @torch.no_grad()
    def step(  # type: ignore[override]
        self,
        row_masks: RowMasks | None = None,
        closure: Callable[[], float] | None = None,
    ) -> float | None:
        """Apply one update; ``row_masks`` maps a parameter to the bool rows it may change."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        masks: RowMasks = row_masks if row_masks is not None else {}
        for group in self.param_groups:
            dense: list[tuple[Tensor, Tensor, dict]] = []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("GatedAdamW does not support sparse gradients")
                keep = masks.get(p)
                rows = None if keep is None else _kept_rows(p, keep)
                if rows is not None and rows.numel() == 0:
                    continue
                if rows is not None and rows.numel() == p.shape[0]:
                    rows = None  # every row kept
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    # A scalar step until some row is first left out; per-row counts from then on.
                    state["step"] = torch.tensor(0.0)
                if rows is None and state["step"].ndim == 0:
                    dense.append((p, p.grad, state))
                else:
                    self._update_rows(p, p.grad, state, rows, group)
            _update_dense(dense, group)
        return loss

    def _row_buffers(self, p: Tensor, n_rows: int, count: int) -> list[Tensor]:
        """``count`` scratch tensors shaped like ``n_rows`` rows of ``p``.

        Reused across steps: fresh row-sized temporaries on every step would cost more in
        allocation (page faults on CPU) than the row update itself.
        """
        shape = (n_rows, *p.shape[1:])
        size = math.prod(shape)
        key = (p.device, p.dtype)
        scratch = self._scratch.get(key)
        if scratch is None or scratch.numel() < count * size:
            scratch = torch.empty(count * size, device=p.device, dtype=p.dtype)
            self._scratch[key] = scratch
        return [scratch[i * size : (i + 1) * size].view(shape) for i in range(count)]

    def _update_rows(self, p: Tensor, grad: Tensor, state: dict, rows: Tensor | None, group: dict) -> None:
        """AdamW on the given rows (all rows when None), with per-row step counts."""
        step = state["step"]
        if step.ndim == 0:
            step = torch.full((p.shape[0],), float(step), dtype=torch.float32, device=p.device)
        elif step.device != p.device:
            step = step.to(p.device)
        state["step"] = step
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        lr, weight_decay = group["lr"], group["weight_decay"]
        beta1, beta2 = group["betas"]

        if rows is None:
            step.add_(1.0)
            p.mul_(1.0 - lr * weight_decay)
            exp_avg.lerp_(grad, 1.0 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
            if lr == 0.0:  # the step size is folded into the denominator, which has no value at lr 0
                return
            (denom,) = self._row_buffers(p, p.shape[0], 1)
            denom_scale, denom_shift = _denominator_factors(step, p, group)
            torch.sqrt(exp_avg_sq, out=denom).div_(denom_scale).add_(denom_shift)
            p.addcdiv_(exp_avg, denom)
            return

        rows_step = step.index_select(0, rows).add_(1.0)
        # Copies of the kept rows are updated, and only their increments are added back with
        # index_add_ (several times cheaper than index_copy_ on CPU); rows left out are never written.
        rows_p, rows_g, rows_m, rows_v, work = self._row_buffers(p, rows.numel(), 5)
        torch.index_select(grad, 0, rows, out=rows_g)
        torch.index_select(exp_avg, 0, rows, out=rows_m)
        torch.index_select(exp_avg_sq, 0, rows, out=rows_v)

        # m += (1 - beta1) * (g - m)
        torch.sub(rows_g, rows_m, out=work)
        rows_m.add_(work, alpha=1.0 - beta1)
        exp_avg.index_add_(0, rows, work, alpha=1.0 - beta1)
        # v += (1 - beta2) * (g * g - v)
        torch.mul(rows_g, rows_g, out=work).sub_(rows_v)
        rows_v.add_(work, alpha=1.0 - beta2)
        exp_avg_sq.index_add_(0, rows, work, alpha=1.0 - beta2)
        step.index_copy_(0, rows, rows_step)
        if lr == 0.0:
            return

        denom_scale, denom_shift = _denominator_factors(rows_step, p, group)
        torch.sqrt(rows_v, out=work).div_(denom_scale).add_(denom_shift)
        if weight_decay != 0.0:
            torch.index_select(p, 0, rows, out=rows_p)
            rows_p.mul_(-lr * weight_decay).addcdiv_(rows_m, work)
        else:
            torch.div(rows_m, work, out=rows_p)
        p.index_add_(0, rows, rows_p)


def _update_dense(items: list[tuple[Tensor, Tensor, dict]], group: dict) -> None:
    """Plain AdamW over whole tensors, batched per (device, dtype) with foreach kernels."""
    buckets: dict[tuple[torch.device, torch.dtype], list[tuple[Tensor, Tensor, dict]]] = {}
    for item in items:
        buckets.setdefault((item[0].device, item[0].dtype), []).append(item)
    lr, eps, weight_decay = group["lr"], group["eps"], group["weight_decay"]
    beta1, beta2 = group["betas"]
    for bucket in buckets.values():
        params = [p for p, _, _ in bucket]
        grads = [g for _, g, _ in bucket]
        exp_avgs = [s["exp_avg"] for _, _, s in bucket]
        exp_avg_sqs = [s["exp_avg_sq"] for _, _, s in bucket]
        steps = [s["step"] for _, _, s in bucket]
        torch._foreach_add_(steps, 1.0)
        # Steps may differ between tensors (a tensor may have had no gradient on some step).
        counts = [float(s) for s in steps]
        if weight_decay != 0.0:
            torch._foreach_mul_(params, 1.0 - lr * weight_decay)
        torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1.0 - beta2)
        step_sizes = [-lr / (1.0 - beta1**n) for n in counts]
        denom = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_div_(denom, [(1.0 - beta2**n) ** 0.5 for n in counts])
        torch._foreach_add_(denom, eps)
        torch._foreach_addcdiv_(params, exp_avgs, denom, step_sizes)


def _kept_rows(p: Tensor, keep: Tensor) -> Tensor:
    """Indices of the rows a bool mask over ``p``'s first dimension keeps."""
    if p.ndim == 0 or keep.shape != (p.shape[0],):
        raise ValueError(
            f"row mask of shape {tuple(keep.shape)} does not fit a parameter of shape {tuple(p.shape)}"
        )
    return torch.nonzero(keep.to(device=p.device, dtype=torch.bool)).flatten()


def _denominator_factors(row_steps: Tensor, p: Tensor, group: dict) -> tuple[Tensor, Tensor]:
    """Per-row (scale, shift) with update = m / (sqrt(v) / scale + shift).

    That is -step_size * m / (sqrt(v) / bc2_sqrt + eps), with the per-row step size folded
    into the denominator so that it costs no extra pass over the rows. The factors are
    computed in double precision, as AdamW computes its scalars from Python floats.
    """
    beta1, beta2 = group["betas"]
    counts = row_steps.double()
    neg_step_size = -group["lr"] / (1.0 - beta1**counts)
    bias_correction2_sqrt = (1.0 - beta2**counts).sqrt()
    shape = (-1,) + (1,) * (p.ndim - 1)
    scale = (bias_correction2_sqrt * neg_step_size).to(p.dtype).view(shape)
    shift = (group["eps"] / neg_step_size).to(p.dtype).view(shape)
    return scale, shift
