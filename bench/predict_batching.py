"""Prediction throughput through PredictBatcher, against one text per forward pass and against full batches.

    python -m bench.predict_batching [--model tiny|default] [--clients 32] [--requests 256] [--max-batch 32]
                                     [--max-wait-ms 0] [--out bench/results/predict_batching.json]

The same texts go through the same model three ways in one run, on one torch thread as the API uses by
default: (a) `predict` on one text at a time, one call after another; (b) `--clients` concurrent submitters,
each sending one text at a time through the batcher; (c) `predict` on consecutive chunks of `--max-batch`
texts, one forward pass each, the most that batching can give (b).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from pathlib import Path

import torch

from app.batching import PredictBatcher
from app.settings import Settings
from bench.meta import run_metadata
from learner.classifier import TextClassifier
from learner.encoder import default_model_path, load_encoder, tiny_bert

# fmt: off
WORDS = [
    "the", "a", "an", "this", "that", "every", "some", "our", "their", "new", "old", "late", "early",
    "quick", "slow", "bright", "dark", "cold", "warm", "loud", "quiet", "team", "match", "game", "goal",
    "season", "coach", "player", "crowd", "market", "price", "share", "stock", "bank", "rate", "loan",
    "budget", "phone", "screen", "battery", "update", "app", "server", "network", "storm", "rain", "snow",
    "wind", "sun", "forecast", "city", "river", "road", "train", "flight", "hotel", "meal", "chef", "recipe",
    "film", "song", "album", "show", "story", "report", "court", "law", "vote", "council", "school",
    "student", "scored", "won", "lost", "rose", "fell", "opened", "closed", "launched", "cancelled",
    "delayed", "announced", "reported", "said", "found", "made", "broke", "fixed", "moved", "raised", "cut",
    "signed", "played", "sang", "cooked", "tested", "shipped", "after", "before", "during", "since", "while",
    "because", "although", "and", "but", "or", "so", "then", "today", "yesterday", "tomorrow", "again",
    "still", "never", "always", "quickly", "slowly", "nearly", "almost", "very", "really", "quite", "in",
    "on", "at", "with", "without", "over", "under", "near", "across", "through", "for", "from", "to", "of"
]
# fmt: on
LABELS = ["sports", "finance", "tech", "weather"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=["tiny", "default"], default="tiny")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=Settings().predict_max_wait_ms)
    parser.add_argument("--out", type=Path, default=Path("bench/results/predict_batching.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)

    classifier = _classifier(args.model)
    texts = _texts(args.requests, seed=0)
    classifier.predict(texts[: args.max_batch], batch_size=args.max_batch)
    for text in texts[:4]:
        classifier.predict([text])

    sequential = _sequential(classifier, texts)
    batched = asyncio.run(
        _through_batcher(classifier, texts, args.clients, args.max_batch, args.max_wait_ms / 1000)
    )
    chunked = _chunked(classifier, texts, args.max_batch)

    result = {
        **run_metadata("bench.predict_batching"),
        "model": "tiny" if args.model == "tiny" else "all-MiniLM-L6-v2",
        "texts": len(texts),
        "clients": args.clients,
        "max_batch": args.max_batch,
        "max_wait_ms": args.max_wait_ms,
        "texts_per_s": {
            "sequential": sequential["texts_per_s"],
            "batcher": batched["texts_per_s"],
            "chunked": chunked["texts_per_s"],
        },
        "latency_ms": {
            "sequential": {"p50": sequential["p50_ms"], "p95": sequential["p95_ms"]},
            "batcher": {"p50": batched["p50_ms"], "p95": batched["p95_ms"]},
        },
        "batcher_batches": batched["batches"],
        "batcher_mean_batch": batched["mean_batch"],
        "ratio_batcher_to_sequential": batched["texts_per_s"] / sequential["texts_per_s"],
        "ratio_batcher_to_chunked": batched["texts_per_s"] / chunked["texts_per_s"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    _print_table(result)


def _classifier(model: str) -> TextClassifier:
    tokenizer, encoder = tiny_bert() if model == "tiny" else load_encoder(str(default_model_path()))
    classifier = TextClassifier(tokenizer, encoder)
    examples = _texts(2 * len(LABELS), seed=1)
    labels = [LABELS[i % len(LABELS)] for i in range(len(examples))]
    with torch.inference_mode():
        embeddings = classifier.embed(classifier.tokenize(examples))
    classifier.add_labels(classifier.unseen(labels), embeddings, labels)
    classifier.eval()
    return classifier


def _texts(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    sentences = []
    for _ in range(count):
        words = rng.choices(WORDS, k=rng.randint(8, 40))
        sentences.append(" ".join(words).capitalize() + ".")
    return sentences


def _sequential(classifier: TextClassifier, texts: list[str]) -> dict[str, float]:
    latencies = []
    began = time.perf_counter()
    for text in texts:
        start = time.perf_counter()
        classifier.predict([text])
        latencies.append(time.perf_counter() - start)
    return {"texts_per_s": len(texts) / (time.perf_counter() - began), **_percentiles(latencies)}


async def _through_batcher(
    classifier: TextClassifier, texts: list[str], clients: int, max_batch: int, max_wait_s: float
) -> dict[str, float]:
    sizes: list[int] = []
    batcher = PredictBatcher(
        lambda batch, top_k: (None, classifier.predict(batch, top_k, batch_size=max_batch)),
        max_batch,
        max_wait_s,
        on_batch=lambda size, _: sizes.append(size),
    )
    latencies: list[float] = []

    async def client(own: list[str]) -> None:
        for text in own:
            start = time.perf_counter()
            await batcher.submit([text], 1)
            latencies.append(time.perf_counter() - start)

    began = time.perf_counter()
    await asyncio.gather(*(client(texts[i::clients]) for i in range(clients)))
    elapsed = time.perf_counter() - began
    await batcher.close()
    return {
        "texts_per_s": len(texts) / elapsed,
        **_percentiles(latencies),
        "batches": len(sizes),
        "mean_batch": statistics.mean(sizes),
    }


def _chunked(classifier: TextClassifier, texts: list[str], max_batch: int) -> dict[str, float]:
    began = time.perf_counter()
    for start in range(0, len(texts), max_batch):
        classifier.predict(texts[start : start + max_batch], batch_size=max_batch)
    return {"texts_per_s": len(texts) / (time.perf_counter() - began)}


def _percentiles(seconds: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(seconds, n=20)
    return {"p50_ms": statistics.median(seconds) * 1000, "p95_ms": cuts[18] * 1000}


def _print_table(result: dict) -> None:
    rate, latency = result["texts_per_s"], result["latency_ms"]
    print(
        f"model {result['model']}, {result['texts']} texts of 8-40 words, "
        f"torch threads {result['torch_threads']} (the API's default)"
    )
    print(f"{'way':<36}{'texts/s':>10}{'p50 ms':>10}{'p95 ms':>10}")
    rows = [
        ("(a) sequential, 1 text per call", rate["sequential"], latency["sequential"]),
        (f"(b) batcher, {result['clients']} clients", rate["batcher"], latency["batcher"]),
        (f"(c) chunks of {result['max_batch']}", rate["chunked"], None),
    ]
    for name, texts_per_s, ms in rows:
        p50, p95 = (f"{ms['p50']:.1f}", f"{ms['p95']:.1f}") if ms else ("-", "-")
        print(f"{name:<36}{texts_per_s:>10.1f}{p50:>10}{p95:>10}")
    print(
        f"b/a {result['ratio_batcher_to_sequential']:.2f}x, b/c {result['ratio_batcher_to_chunked']:.2f}x; "
        f"batcher ran {result['batcher_batches']} batches of {result['batcher_mean_batch']:.1f} texts on "
        f"average (max {result['max_batch']}, max wait {result['max_wait_ms']:g} ms)"
    )


if __name__ == "__main__":
    main()
