"""The optimizer's state as the learner keeps it: grown with the head, and split for a snapshot into tensors
(safetensors) and scalars (JSON)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


def swap_parameter(optimizer: torch.optim.Optimizer, old: nn.Parameter, new: nn.Parameter) -> None:
    """Point the optimizer at a grown parameter, keeping the old rows' state and fresh state for new rows.

    Fresh includes the step count: a new row is bias-corrected from its own first step, as a new AdamW would
    be (with the old rows' count its first update would be up to several times the learning rate). That
    needs an optimizer with per-row steps (`GatedAdamW`), which every strategy uses."""
    _repoint(optimizer, old, new)
    state = optimizer.state.pop(old, None)
    if state is None:
        return
    grown = {key: _grow_rows(value, old.shape[0], new.shape[0]) for key, value in state.items()}
    step = state.get("step")
    if isinstance(step, Tensor) and step.ndim == 0:
        fresh = step.new_zeros(new.shape[0] - old.shape[0], dtype=torch.float32)
        grown["step"] = torch.cat([step.float().expand(old.shape[0]), fresh])
    optimizer.state[new] = grown


def keep_parameter_rows(
    optimizer: torch.optim.Optimizer, old: nn.Parameter, new: nn.Parameter, rows: Tensor
) -> None:
    """Point the optimizer at a parameter cut down to `rows` of `old`, keeping exactly those rows' state."""
    _repoint(optimizer, old, new)
    state = optimizer.state.pop(old, None)
    if state is not None:
        optimizer.state[new] = {key: _kept_rows(value, old.shape[0], rows) for key, value in state.items()}


def _repoint(optimizer: torch.optim.Optimizer, old: nn.Parameter, new: nn.Parameter) -> None:
    for group in optimizer.param_groups:
        for i, param in enumerate(group["params"]):
            if param is old:
                group["params"][i] = new


def _kept_rows(value: object, old_rows: int, rows: Tensor) -> object:
    if not isinstance(value, torch.Tensor) or value.ndim == 0 or value.shape[0] != old_rows:
        return value
    return value[rows.to(value.device)].clone()


def _grow_rows(value: object, old_rows: int, new_rows: int) -> object:
    if not isinstance(value, torch.Tensor) or value.ndim == 0 or value.shape[0] != old_rows:
        return value
    padding = value.new_zeros((new_rows - old_rows, *value.shape[1:]))
    return torch.cat([value, padding])


def split_optimizer_state(state_dict: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Tensors go to safetensors, the rest (hyper-parameters, python scalars) to JSON."""
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, param_state in state_dict["state"].items():
        for key, value in param_state.items():
            if isinstance(value, Tensor):
                tensors[f"{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def join_optimizer_state(tensors: dict[str, Tensor], saved: dict[str, Any]) -> dict[str, Any]:
    """The state dict `split_optimizer_state` was given."""
    per_param: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        index, key = name.split(".", 1)
        per_param.setdefault(int(index), {})[key] = value
    for index, values in saved["scalars"].items():
        per_param.setdefault(int(index), {}).update(values)
    return {"state": per_param, "param_groups": saved["param_groups"]}
