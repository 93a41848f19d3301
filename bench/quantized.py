"""The int8 served copy (RETENTIVE_SERVE_QUANTIZE) against the float model it is made from.

On RETENTIVE_API_THREADS torch threads, as a replica predicts. A learner with the defaults learns a
cl_stream order (`train_per_task` shuffled examples of each task, in micro-batches); its float weights and
their int8 copy then answer each task's test texts, one text per forward pass for the timing (interleaved
rounds, so both see the same machine) and in batches for the accuracy. The accuracy difference is paired
(same texts), with a 95% interval from the texts on which they differ.
"""

from __future__ import annotations

import copy
import math
import random
import statistics
import time
from typing import Any

import torch

from bench.data import read_scoring, read_train, task_orders
from learner.classifier import TextClassifier
from learner.encoder import load_encoder
from learner.online import Example, LearnerConfig, OnlineLearner
from learner.quantization import quantized

ORDER = "order1"
TIMED_TEXTS = 200
ROUNDS = 3


def quantized_figures(
    model: str, batch: int, threads: int, train_per_task: int = 200, test_per_task: int = 300, seed: int = 0
) -> dict[str, Any]:
    """`quantized_vs_bare` (int8 forward time over float, per text), both accuracies and their difference."""
    torch.set_num_threads(threads)
    float_model = _trained_classifier(model, batch, train_per_task, seed)
    int8_model = quantized(copy.deepcopy(float_model))
    tasks = task_orders()[ORDER]
    records = [record for task in tasks for record in read_scoring(task, "test", test_per_task)]
    texts = [record["text"] for record in records]
    timed = texts[:: max(1, len(texts) // TIMED_TEXTS)][:TIMED_TEXTS]
    float_ms, int8_ms = [], []
    for _ in range(ROUNDS):
        float_ms.append(forward_ms(float_model, timed))
        int8_ms.append(forward_ms(int8_model, timed))
    truth = [record["label"] for record in records]
    said_float = [p.label for p in float_model.predict(texts)]
    said_int8 = [p.label for p in int8_model.predict(texts)]
    right_float = [said == label for said, label in zip(said_float, truth, strict=True)]
    right_int8 = [said == label for said, label in zip(said_int8, truth, strict=True)]
    difference, half_width = _paired_difference(right_int8, right_float)
    return {
        "quantized_vs_bare": statistics.median(int8_ms) / statistics.median(float_ms),
        "quantized_forward_ms": statistics.median(int8_ms),
        "float_forward_ms": statistics.median(float_ms),
        "float_accuracy": sum(right_float) / len(truth),
        "quantized_accuracy": sum(right_int8) / len(truth),
        "quantized_accuracy_difference": difference,
        "quantized_accuracy_difference_95": half_width,
        "same_label": sum(a == b for a, b in zip(said_float, said_int8, strict=True)) / len(truth),
        "setup": {
            "order": ORDER,
            "train_per_task": train_per_task,
            "test_per_task": test_per_task,
            "timed_texts": len(timed),
            "rounds": ROUNDS,
            "seed": seed,
            "threads": torch.get_num_threads(),
        },
    }


def _trained_classifier(model: str, batch: int, per_task: int, seed: int) -> TextClassifier:
    rng = random.Random(seed)
    examples = []
    for task in task_orders()[ORDER]:
        portion = [Example(r["text"], r["label"]) for r in read_train(task, per_task)]
        rng.shuffle(portion)
        examples += portion
    tokenizer, encoder = load_encoder(model)
    learner = OnlineLearner(tokenizer, encoder, LearnerConfig(seed=seed, probe_fraction=0.0))
    for start in range(0, len(examples), batch):
        learner.learn(examples[start : start + batch])
    return learner.model.eval()


def forward_ms(classifier: TextClassifier, texts: list[str]) -> float:
    """Median milliseconds of one text's bare forward pass."""
    return statistics.median(forward_timings(classifier, texts))


def forward_timings(classifier: TextClassifier, texts: list[str]) -> list[float]:
    """Milliseconds of each text's bare forward pass `head(encoder(batch))`, tokenized beforehand."""
    batches = [classifier.tokenize([text]) for text in texts]
    timings = []
    with torch.inference_mode():
        for tokens in batches:
            began = time.perf_counter()
            classifier.head(classifier.embed(tokens))
            timings.append((time.perf_counter() - began) * 1000)
    return timings


def _paired_difference(first: list[bool], second: list[bool]) -> tuple[float, float]:
    """Accuracy of `first` minus `second` on the same texts, and the half width of its 95% interval."""
    gains = [int(a) - int(b) for a, b in zip(first, second, strict=True)]
    return statistics.mean(gains), 1.96 * statistics.stdev(gains) / math.sqrt(len(gains))
