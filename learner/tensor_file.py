"""A group of tensors as the bytes of one safetensors file, built with a single copy of the data.

`safetensors.torch.save` builds the file in a buffer of its own and then copies that into the `bytes` it
returns, so for a moment a snapshot's tensors exist three times: live, in the buffer and in the result. For
the learner's optimizer state (180 MB on the default model) that was the highest point of its memory. Here
the file is laid out first and each tensor copied once into its place; `safetensors.torch.load` reads it.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping

import torch

_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
# The header's length is a multiple of this, so data that follows it in order of falling item size stays
# aligned for readers that map the file.
_ALIGNMENT = 8


def tensor_file(tensors: Mapping[str, torch.Tensor]) -> bytearray:
    """The safetensors file holding `tensors` (contiguous CPU tensors)."""
    names = sorted(tensors, key=lambda name: (-tensors[name].element_size(), name))
    header: dict[str, dict[str, object]] = {}
    starts: dict[str, int] = {}
    offset = 0
    for name in names:
        tensor = tensors[name]
        size = tensor.numel() * tensor.element_size()
        header[name] = {
            "dtype": _dtype(tensor),
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        starts[name] = offset
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % _ALIGNMENT)
    start = 8 + len(encoded)
    file = bytearray(start + offset)
    file[:start] = struct.pack("<Q", len(encoded)) + encoded
    for name in names:
        _copy_into(file, start + starts[name], tensors[name])
    return file


def _dtype(tensor: torch.Tensor) -> str:
    if tensor.dtype not in _DTYPES:
        raise TypeError(
            f"tensors of type {tensor.dtype} cannot be stored; use one of {sorted(map(str, _DTYPES))}"
        )
    return _DTYPES[tensor.dtype]


def _copy_into(file: bytearray, at: int, tensor: torch.Tensor) -> None:
    if tensor.numel() == 0:
        return
    data = tensor.reshape(-1).view(torch.uint8)
    torch.frombuffer(file, dtype=torch.uint8, count=data.numel(), offset=at).copy_(data)
