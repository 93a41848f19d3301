"""Snapshot tensor files are plain safetensors, built with one copy of the data."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load

from learner.snapshots import SnapshotStore
from learner.tensor_file import tensor_file


def every_kind() -> dict[str, torch.Tensor]:
    return {
        "f64": torch.randn(3, dtype=torch.float64),
        "f32": torch.randn(4, 5),
        "f16": torch.randn(2, 3).half(),
        "bf16": torch.randn(7).bfloat16(),
        "i64": torch.arange(5),
        "i32": torch.arange(3, dtype=torch.int32),
        "i16": torch.arange(3, dtype=torch.int16),
        "i8": torch.arange(-2, 2, dtype=torch.int8),
        "rng": torch.get_rng_state(),
        "mask": torch.rand(9) > 0.5,
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 3),
    }


def test_safetensors_reads_back_every_kind_of_tensor(tmp_path: Path) -> None:
    tensors = every_kind()
    file = tensor_file(tensors)
    loaded = load(bytes(file))
    (tmp_path / "group.safetensors").write_bytes(file)
    with safe_open(tmp_path / "group.safetensors", "pt") as mapped:
        opened = {name: mapped.get_tensor(name) for name in mapped.keys()}  # noqa: SIM118
    for name, tensor in tensors.items():
        for read in (loaded[name], opened[name]):
            assert read.dtype == tensor.dtype and read.shape == tensor.shape
            assert torch.equal(read, tensor), name


def test_a_tensor_of_a_kind_safetensors_cannot_hold_is_refused_by_name(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    with pytest.raises(TypeError, match="complex64"):
        store.save({"model": {"z": torch.zeros(2, dtype=torch.complex64)}}, {})
    assert store.list() == []


def test_a_file_costs_one_copy_of_its_tensors() -> None:
    """Peak memory while building a 64 MiB file, against the data's own size: one copy, where
    `safetensors.torch.save` needs two."""
    script = textwrap.dedent(
        """
        import torch
        from learner.tensor_file import tensor_file

        def peak_mib():
            with open("/proc/self/status") as status:
                return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024

        tensors = {f"t{i}": torch.randn(1024, 1024) for i in range(16)}
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        before = peak_mib()
        file = tensor_file(tensors)
        print((peak_mib() - before) / (len(file) / 2**20))
        """
    )
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux's peak-memory counter")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    copies = float(result.stdout)
    assert 0.9 < copies < 1.3, f"building the file took {copies:.2f} copies of its data"
