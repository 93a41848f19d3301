"""Where the learner and the replicas compute: `auto` takes CUDA where there is a GPU, else the CPU.

The model, its batches, masks and targets, the gate's statistics and the optimizer state live on the
device; snapshots are written from CPU copies (`learner.snapshots`), so a GPU learner's snapshot loads on a
CPU replica unchanged. Each device has its own random generator, saved and restored beside the CPU's so
that a resumed run repeats exactly on the device it ran on.

The precision of a training step's encoder forward is `fp32` or `bf16` (autocast: the matrix products in
bfloat16, which needs no loss scaling); `auto` takes bf16 where the device multiplies bfloat16 natively and
fp32 elsewhere, where emulated bfloat16 can be slower than float32. Weights, optimizer state, the gate's
magnitudes, the head, the loss and every evaluation stay float32, so a bf16 learner's snapshot is the same
kind of file as any other.
"""

from __future__ import annotations

import os
import re
from contextlib import AbstractContextManager
from typing import Literal

import torch
from torch import Tensor

Precision = Literal["auto", "fp32", "bf16"]

CHOICES = "auto, cpu, cuda, cuda:N or mps"
_FORM = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def check_device_name(name: str) -> str:
    """`name` if it is one of the forms a device setting takes; ValueError naming them otherwise."""
    if not _FORM.fullmatch(name):
        raise ValueError(f"{name!r} is not a device: use {CHOICES}")
    return name


def resolve_device(name: str) -> torch.device:
    """The device `name` means on this machine; ValueError saying what to set when it is not here."""
    check_device_name(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            raise ValueError(f"{name!r}: this machine has {count} CUDA devices; use cpu or auto")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{name!r} asks for Apple's MPS, which this machine lacks: use cpu or auto")
    return device


def rng_state(device: torch.device) -> Tensor | None:
    """The device's own random generator state; None for the CPU, whose state is saved anyway."""
    if device.type == "cuda":
        return torch.cuda.get_rng_state(device)
    if device.type == "mps":
        return torch.mps.get_rng_state()
    return None


def set_rng_state(device: torch.device, state: Tensor) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    elif device.type == "mps":
        torch.mps.set_rng_state(state)


def describe(device: torch.device) -> str:
    """The device and its memory, in words."""
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        return f"{device} ({properties.name}, {properties.total_memory / 2**30:.1f} GiB)"
    if device.type == "mps":
        return "mps (Apple GPU, memory shared with the CPU)"
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return f"cpu ({os.cpu_count()} cores, {memory / 2**30:.1f} GiB)"


def resolve_precision(precision: Precision, device: torch.device) -> Precision:
    """`fp32` or `bf16`: `auto` is bf16 where `device` has bfloat16 units, fp32 elsewhere."""
    if precision != "auto":
        return precision
    return "bf16" if has_bf16_units(device) else "fp32"


def has_bf16_units(device: torch.device) -> bool:
    """Whether `device` multiplies bfloat16 natively: a GPU with bf16 units, a CPU with AVX512-BF16 or AMX."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        # torch's own CPU feature checks; private, so a torch without them counts as no units.
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(getattr(torch.cpu, name, lambda: False)() for name in checks)
    return False


def autocast(device: torch.device, precision: Precision) -> AbstractContextManager[None]:
    """The context a training forward runs in: bf16 autocast on `device`, or plain float32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
