"""int8 dynamic quantization of a served copy, for CPU replicas.

Every `nn.Linear` of the encoder gets int8 weights (one scale per tensor) and quantizes its input at run
time; embeddings, layer norms and the head stay in float32, so a label's row and the scale of the cosine
head are served exactly as the learner wrote them. Only a replica's copy is quantized: the learner trains
and snapshots in float32, and the served copy is rebuilt from the float snapshot at each swap.

It runs on CPUs only (the kernels are fbgemm's and oneDNN's). `bench.speed --only quantized` measures its
speed against the float forward pass and its accuracy beside the float model's on the cl_stream test sets.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from learner.classifier import TextClassifier


def quantized(classifier: TextClassifier) -> TextClassifier:
    """`classifier` with int8 dynamic-quantized encoder linears, in eval mode; it must be on the CPU."""
    if classifier.device.type != "cpu":
        raise ValueError(f"int8 quantization serves on the CPU only, not on {classifier.device}")
    with warnings.catch_warnings():
        # torch.ao's eager quantization is deprecated in favour of torchao, which needs torch.compile to be
        # fast on a CPU; the eager kernels are the ones that speed up a plain CPU forward pass today.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        from torch.ao.quantization import quantize_dynamic

        classifier.encoder = quantize_dynamic(classifier.encoder.eval(), {nn.Linear}, dtype=torch.qint8)
    return classifier.eval()
