"""Magnitude-gated updates (MIGU, arXiv 2406.17245).

While a training forward runs inside ``MiguGate.measuring``, every gated ``nn.Linear``
accumulates, per output row, the L1 magnitude of its output over the real tokens.
``row_masks`` keeps, in each layer, only the rows whose magnitude reaches the layer's
``quantile``-quantile; the optimizer then updates those rows alone (``GatedAdamW.step(masks)``).

The masks are known when the forward pass ends, before backward, so inside ``measuring`` each
gated layer computes its weight gradient for the kept rows only (``_KeptRowsLinear``): the rows
the optimizer would drop cost no matrix product. The input gradient is computed in full, since
earlier layers need it; dropped rows get a zero gradient. A step run in several forward passes,
each with its own backward, is measured with ``decide=False``: its rows are decided only after the
last pass, so its passes compute every row's weight gradient and the optimizer drops the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional
from torch.utils.hooks import RemovableHandle

_STEP_KEY = "step"
_EMA_PREFIX = "ema."
_STATS_PREFIX = "stats."


@dataclass
class _Rows:
    """The rows of one layer the gate keeps on this step; None until the forward pass is over."""

    gated_bias: bool
    keep: Tensor | None = None


class _KeptRowsLinear(torch.autograd.Function):
    """`linear(x, weight, bias)`; its backward computes the weight gradient of the kept rows only, and the
    bias gradient of those rows too when the gate masks biases (whole otherwise: the optimizer updates it)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, rows: _Rows) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.rows, ctx.has_bias = rows, bias is not None
        return functional.linear(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        # Under bf16 autocast the forward multiplied in bfloat16: so does the backward, and each gradient
        # takes its input's dtype (float32 for the weights). In float32 every `to` is a no-op.
        low_x, low_weight = x.to(grad_out.dtype), weight.to(grad_out.dtype)
        grad_x = (grad_out @ low_weight).to(x.dtype) if ctx.needs_input_grad[0] else None
        keep = ctx.rows.keep
        kept = keep.nonzero().squeeze(1) if keep is not None else None
        grad_rows = grad_out.reshape(-1, weight.shape[0])
        grad_bias = grad_rows.sum(0, dtype=weight.dtype) if ctx.has_bias else None
        inputs = low_x.reshape(-1, weight.shape[1])
        if kept is None:
            return grad_x, (grad_rows.T @ inputs).to(weight.dtype), grad_bias, None
        grad_rows = grad_rows.index_select(1, kept)
        grad_weight = weight.new_zeros(weight.shape).index_copy_(
            0, kept, (grad_rows.T @ inputs).to(weight.dtype)
        )
        if grad_bias is not None and ctx.rows.gated_bias:
            grad_bias = grad_bias.masked_fill(~keep, 0.0)
        return grad_x, grad_weight, grad_bias, None


class MiguGate:
    """Measures output-row magnitudes of linear layers and turns them into row masks."""

    def __init__(
        self,
        model: nn.Module,
        quantile: float = 0.7,
        *,
        exclude: Iterable[nn.Module] = (),
        ema: float | None = None,
        warmup_steps: int = 0,
        exclude_padding: bool = True,
        mask_bias: bool = True,
    ) -> None:
        if not 0.0 <= quantile < 1.0:
            raise ValueError(f"quantile must lie in [0, 1) (0 keeps every row), got {quantile}")
        if ema is not None and not 0.0 <= ema < 1.0:
            raise ValueError(f"ema must be None or lie in [0, 1), got {ema}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        self.quantile = float(quantile)
        self.ema = ema
        self.warmup_steps = warmup_steps
        self.exclude_padding = exclude_padding
        self.mask_bias = mask_bias
        # Excluding a container excludes every linear layer inside it.
        excluded = {id(m) for root in exclude for m in root.modules()}
        self.layers: dict[str, nn.Linear] = {
            name: module
            for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and id(module) not in excluded
        }
        self._steps = 0
        self._sums: dict[str, Tensor] = {}
        self._ema_magnitudes: dict[str, Tensor] = {}
        self._stats: dict[str, Tensor] = {}
        self._handles: list[RemovableHandle] = []
        self._token_mask: Tensor | None = None
        self._rows = {name: _Rows(gated_bias=mask_bias) for name in self.layers}
        self._decision: tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]] | None = None

    @property
    def steps(self) -> int:
        """Number of ``row_masks`` calls so far (warmup included)."""
        return self._steps

    @contextmanager
    def measuring(self, attention_mask: Tensor | None, decide: bool = True) -> Iterator[None]:
        """Accumulate row magnitudes of every forward run inside the block.

        ``attention_mask`` is (batch, tokens) of 0/1; tokens where it is 0 are ignored when
        ``exclude_padding`` is set. Hooks exist only inside the block. With ``decide`` the rows are
        decided as the block ends, for the backward that follows; without it, more forward passes of
        the same step are to come, and ``row_masks`` decides.
        """
        if self._handles:
            raise RuntimeError("MiguGate.measuring blocks cannot be nested")
        if attention_mask is not None and self.exclude_padding:
            self._token_mask = attention_mask.detach()
        try:
            for name, layer in self.layers.items():
                self._handles.append(layer.register_forward_hook(self._hook_for(name)))
                self._rows[name].keep = None
                layer.forward = self._kept_rows_forward(layer, self._rows[name])
            yield
        finally:
            for handle in self._handles:
                handle.remove()
            self._handles.clear()
            for layer in self.layers.values():
                del layer.forward
            self._token_mask = None
        if not decide:
            return
        # The forward pass is over: the masks are known before backward needs them, and `row_masks` takes
        # the same decision after it.
        self._decision = self._decide(self._sums)
        for name, rows in self._rows.items():
            rows.keep = self._decision[0][name]

    @staticmethod
    def _kept_rows_forward(layer: nn.Linear, rows: _Rows) -> Callable[[Tensor], Tensor]:
        def forward(x: Tensor) -> Tensor:
            return _KeptRowsLinear.apply(x, layer.weight, layer.bias, rows)

        return forward

    def _hook_for(self, name: str) -> Callable[[nn.Module, tuple, Tensor], None]:
        def hook(_module: nn.Module, _inputs: tuple, output: Tensor) -> None:
            # Magnitudes add up in float32 whatever precision the forward runs in.
            with torch.autocast(output.device.type, enabled=False):
                self._accumulate(name, output.detach().abs().float())

        return hook

    def _accumulate(self, name: str, out: Tensor) -> None:
        """Add one forward's per-row L1 magnitude of a layer's output (over the real tokens) to its sum."""
        mask = self._token_mask
        if mask is not None and out.ndim >= 3 and out.shape[:2] == mask.shape:
            row_sum = torch.einsum("bt...o,bt->o", out, mask.to(device=out.device, dtype=out.dtype))
        else:
            # No token axis (e.g. a pooler) or no mask: every position counts.
            row_sum = out.sum(dim=tuple(range(out.ndim - 1)))
        acc = self._sums.get(name)
        if acc is None:
            self._sums[name] = row_sum
        else:
            acc.add_(row_sum)

    def row_masks(self) -> dict[nn.Parameter, Tensor]:
        """Turn the last measured step into bool row masks, one per gated weight (and bias).

        Call once per optimizer step, after backward. Each call counts as one step and
        clears the accumulated magnitudes; during the first ``warmup_steps`` calls every
        row is kept.
        """
        sums, self._sums = self._sums, {}
        decision, self._decision = self._decision, None
        keep, magnitudes, self._stats = decision or self._decide(sums)
        self._steps += 1
        if self.ema is not None:
            self._ema_magnitudes = magnitudes
        masks: dict[nn.Parameter, Tensor] = {}
        for name, layer in self.layers.items():
            _merge(masks, layer.weight, keep[name])
            if self.mask_bias and layer.bias is not None:
                _merge(masks, layer.bias, keep[name])
        return masks

    def _decide(
        self, sums: dict[str, Tensor]
    ) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
        """The rows kept by a step with these magnitudes, the (EMA) magnitudes judged and the statistics, per
        layer; nothing is changed, so the backward pass and `row_masks` see the same decision."""
        gating = self._steps >= self.warmup_steps
        keep, judged, stats = {}, {}, {}
        for name, layer in self.layers.items():
            # A layer the forward never reached has no magnitude: all zeros, so every row stays kept.
            magnitude = sums.get(name)
            if magnitude is None:
                magnitude = layer.weight.new_zeros(layer.out_features, dtype=torch.float32)
            previous = self._ema_magnitudes.get(name) if self.ema is not None else None
            if previous is not None:
                magnitude = previous * self.ema + magnitude * (1.0 - self.ema)
            if gating:
                threshold = torch.quantile(magnitude, self.quantile)
                keep[name] = magnitude >= threshold
            else:
                threshold = magnitude.new_zeros(())
                keep[name] = torch.ones_like(magnitude, dtype=torch.bool)
            judged[name] = magnitude
            stats[name] = torch.stack(
                [keep[name].float().mean(), threshold, magnitude.mean(), magnitude.max()]
            )
        return keep, judged, stats

    def discard(self) -> None:
        """Drop the magnitudes measured since the last ``row_masks`` (a skipped step); no step is counted."""
        self._sums, self._decision = {}, None

    def last_stats(self) -> dict[str, dict[str, float]]:
        """Per gated layer of the last step: keep_rate, threshold, mean and max magnitude."""
        stats = {}
        for name, values in self._stats.items():
            keep_rate, threshold, mean, peak = values.tolist()
            stats[name] = {"keep_rate": keep_rate, "threshold": threshold, "mean": mean, "max": peak}
        return stats

    def keep_rate(self) -> float:
        """Share of all gated rows kept on the last step (1.0 before any step)."""
        total = sum(layer.out_features for name, layer in self.layers.items() if name in self._stats)
        if total == 0:
            return 1.0
        kept = sum(
            float(self._stats[name][0]) * layer.out_features
            for name, layer in self.layers.items()
            if name in self._stats
        )
        return kept / total

    def state_dict(self) -> dict[str, Tensor]:
        """Step counter and EMA magnitudes, enough to resume gating exactly, and the last step's statistics,
        so that a resumed learner still reports the keep-rates of the weights it serves."""
        state = {_STEP_KEY: torch.tensor(self._steps, dtype=torch.int64)}
        for name, magnitude in self._ema_magnitudes.items():
            state[_EMA_PREFIX + name] = magnitude.detach().clone()
        for name, stats in self._stats.items():
            state[_STATS_PREFIX + name] = stats.detach().clone()
        return state

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore what ``state_dict`` saved; the gated layers must have the same names and sizes."""
        if _STEP_KEY not in state:
            raise KeyError(f"gate state has no '{_STEP_KEY}' entry")
        ema_magnitudes, stats = {}, {}
        for key, value in state.items():
            if key == _STEP_KEY:
                continue
            prefix = next((p for p in (_EMA_PREFIX, _STATS_PREFIX) if key.startswith(p)), None)
            layer = self.layers.get(key.removeprefix(prefix)) if prefix else None
            if layer is None:
                raise KeyError(f"gate state entry '{key}' matches no gated layer")
            expected = (layer.out_features,) if prefix == _EMA_PREFIX else (4,)
            if value.shape != expected:
                raise ValueError(
                    f"gate state entry '{key}' has shape {tuple(value.shape)}, expected {expected}"
                )
            kept = ema_magnitudes if prefix == _EMA_PREFIX else stats
            kept[key.removeprefix(prefix)] = value.detach().to(layer.weight.device, torch.float32).clone()
        self._steps = int(state[_STEP_KEY])
        self._ema_magnitudes = ema_magnitudes
        self._sums, self._decision = {}, None
        self._stats = stats


def _merge(masks: dict[nn.Parameter, Tensor], param: nn.Parameter, keep: Tensor) -> None:
    # A parameter shared by two gated layers may change where either layer keeps the row.
    previous = masks.get(param)
    masks[param] = keep if previous is None else previous | keep
