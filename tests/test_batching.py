"""Dynamic batching: whole requests share forward passes, and every submitter gets exactly its own answers."""

from __future__ import annotations

import asyncio
import math
import time

import pytest
import torch

from app.batching import BatcherClosedError, PredictBatcher, PredictTimeout, QueueFull
from learner.classifier import TextClassifier
from learner.encoder import tiny_bert


class FakeModel:
    """Records the batches it is called with; answers `text:top_k` per text, tagged with its call number."""

    def __init__(self, delay_s: float = 0.05, fail_on: str | None = None) -> None:
        self.delay_s = delay_s
        self.fail_on = fail_on
        self.batches: list[list[str]] = []
        self.top_ks: list[int] = []

    def __call__(self, texts: list[str], top_k: int) -> tuple[int, list[str]]:
        self.batches.append(list(texts))
        self.top_ks.append(top_k)
        time.sleep(self.delay_s)
        if self.fail_on in texts:
            raise ValueError(f"cannot classify {self.fail_on!r}")
        return len(self.batches), [f"{text}:{top_k}" for text in texts]


def answers(texts: list[str], top_k: int) -> list[str]:
    return [f"{text}:{top_k}" for text in texts]


def test_concurrent_requests_share_batches_and_get_their_own_results() -> None:
    model = FakeModel()
    sizes: list[int] = []
    batcher = PredictBatcher(model, max_batch=8, max_wait_s=0.01, on_batch=lambda n, _: sizes.append(n))

    async def scenario() -> list[tuple[int, list[str]]]:
        return await asyncio.gather(*(batcher.submit([f"t{i}"], 1) for i in range(20)))

    results = asyncio.run(scenario())

    assert len(model.batches) == math.ceil(20 / 8)
    assert all(len(batch) <= 8 for batch in model.batches)
    assert sorted(text for batch in model.batches for text in batch) == sorted(f"t{i}" for i in range(20))
    for i, (call, predictions) in enumerate(results):
        assert predictions == [f"t{i}:1"]
        assert f"t{i}" in model.batches[call - 1]
    assert sizes == [len(batch) for batch in model.batches]


def test_requests_are_never_split_across_batches() -> None:
    model = FakeModel()
    batcher = PredictBatcher(model, max_batch=8, max_wait_s=0.01)
    requests = [[f"r{r}-{i}" for i in range(size)] for r, size in enumerate([3, 2, 4, 1, 5, 3, 2])]

    async def scenario() -> list[tuple[int, list[str]]]:
        return await asyncio.gather(*(batcher.submit(texts, 1) for texts in requests))

    results = asyncio.run(scenario())

    assert all(len(batch) <= 8 for batch in model.batches)
    for texts, (call, predictions) in zip(requests, results, strict=True):
        assert predictions == answers(texts, 1)
        batch = model.batches[call - 1]
        start = batch.index(texts[0])
        assert batch[start : start + len(texts)] == texts


def test_a_lone_request_is_answered_after_the_wait() -> None:
    model = FakeModel(delay_s=0.0)
    batcher = PredictBatcher(model, max_batch=8, max_wait_s=0.05)

    result = asyncio.run(asyncio.wait_for(batcher.submit(["solo"], 2), timeout=5))

    assert result == (1, ["solo:2"])
    assert model.batches == [["solo"]]


class VersionedModel:
    """Answers with the version it serves as context; `swap_after` calls, a new version takes over."""

    def __init__(self, swap_after: int | None = None) -> None:
        self.versions = [object(), object()]
        self.swap_after = swap_after
        self.batches: list[list[str]] = []

    def __call__(self, texts: list[str], top_k: int) -> tuple[object, list[str]]:
        self.batches.append(list(texts))
        swapped = self.swap_after is not None and len(self.batches) > self.swap_after
        return self.versions[swapped], answers(texts, top_k)


def test_a_request_larger_than_max_batch_is_split_into_batches_and_answered_in_order() -> None:
    model = VersionedModel()
    batcher = PredictBatcher(model, max_batch=4, max_wait_s=0.01)
    big = [f"big{i}" for i in range(10)]

    async def scenario() -> list[tuple[object, list[str]]]:
        return await asyncio.gather(
            batcher.submit(["a"], 1), batcher.submit(big, 1), batcher.submit(["b"], 1)
        )

    small_a, whole, small_b = asyncio.run(scenario())

    assert whole == (model.versions[0], answers(big, 1))
    assert all(len(batch) <= 4 for batch in model.batches)
    assert [text for batch in model.batches for text in batch if text.startswith("big")] == big
    assert small_a[1] == ["a:1"] and small_b[1] == ["b:1"]


def test_a_split_request_whose_parts_met_two_versions_is_answered_again_by_one() -> None:
    model = VersionedModel(swap_after=1)
    batcher = PredictBatcher(model, max_batch=4, max_wait_s=0.01)
    big = [f"big{i}" for i in range(10)]

    version, predictions = asyncio.run(batcher.submit(big, 2))

    assert (version, predictions) == (model.versions[1], answers(big, 2))
    assert model.batches[-1] == big  # the second time whole, in one batch


def test_an_error_reaches_every_submitter_of_its_batch_and_later_batches_still_run() -> None:
    model = FakeModel(fail_on="bad")
    batcher = PredictBatcher(model, max_batch=8, max_wait_s=0.01)

    async def scenario() -> tuple[list[object], tuple[int, list[str]]]:
        failed = await asyncio.gather(
            batcher.submit(["a"], 1),
            batcher.submit(["bad"], 1),
            batcher.submit(["c", "d"], 1),
            return_exceptions=True,
        )
        return failed, await batcher.submit(["later"], 1)

    failed, later = asyncio.run(scenario())

    assert model.batches[0] == ["a", "bad", "c", "d"]
    assert all(isinstance(err, ValueError) and "bad" in str(err) for err in failed)
    assert later == (2, ["later:1"])


def test_cancelled_submitters_do_not_disturb_the_others() -> None:
    model = FakeModel()
    batcher = PredictBatcher(model, max_batch=2, max_wait_s=0.01)

    async def scenario() -> list[tuple[int, list[str]]]:
        running = [asyncio.create_task(batcher.submit([f"t{i}"], 1)) for i in range(2)]
        await asyncio.sleep(0.01)
        queued = [asyncio.create_task(batcher.submit([f"t{i}"], 1)) for i in range(2, 5)]
        await asyncio.sleep(0)
        assert batcher.queue_depth == 3
        running[1].cancel()
        queued[1].cancel()
        await asyncio.sleep(0)
        assert batcher.queue_depth == 2
        with pytest.raises(asyncio.CancelledError):
            await running[1]
        with pytest.raises(asyncio.CancelledError):
            await queued[1]
        return await asyncio.gather(running[0], queued[0], queued[2])

    results = asyncio.run(scenario())

    assert [predictions for _, predictions in results] == [["t0:1"], ["t2:1"], ["t4:1"]]
    assert model.batches == [["t0", "t1"], ["t2", "t4"]]


def test_run_gets_the_largest_top_k_of_the_batch() -> None:
    model = FakeModel()
    batcher = PredictBatcher(model, max_batch=8, max_wait_s=0.01)

    async def scenario() -> list[tuple[int, list[str]]]:
        return await asyncio.gather(*(batcher.submit([f"k{k}"], k) for k in (1, 3, 2)))

    results = asyncio.run(scenario())

    assert model.top_ks == [3]
    assert [predictions for _, predictions in results] == [["k1:3"], ["k3:3"], ["k2:3"]]


def test_close_fails_queued_and_later_requests() -> None:
    model = FakeModel()
    batcher = PredictBatcher(model, max_batch=1, max_wait_s=0.01)

    async def scenario() -> None:
        running = asyncio.create_task(batcher.submit(["first"], 1))
        await asyncio.sleep(0.01)
        queued = asyncio.create_task(batcher.submit(["second"], 1))
        await asyncio.sleep(0)
        await batcher.close()
        assert await running == (1, ["first:1"])
        with pytest.raises(BatcherClosedError):
            await queued
        with pytest.raises(BatcherClosedError):
            await batcher.submit(["third"], 1)
        assert batcher.queue_depth == 0

    asyncio.run(scenario())

    assert model.batches == [["first"]]


def test_batched_predictions_equal_predictions_one_text_at_a_time() -> None:
    tokenizer, encoder = tiny_bert(seed=0)
    classifier = TextClassifier(tokenizer, encoder)
    seeds = ["the match ended late", "rain all week", "stocks fell sharply today", "a new phone launched"]
    labels = ["sports", "weather", "finance", "tech"]
    with torch.no_grad():
        embeddings = classifier.embed(classifier.tokenize(seeds))
    classifier.add_labels(classifier.unseen(labels), embeddings, labels)
    classifier.eval()
    texts = [
        "goal",
        "the striker scored twice in the second half and the crowd went wild",
        "snow tomorrow",
        "shares of the chip maker rose after a strong quarter, beating every forecast by analysts",
        "battery life is poor",
        "a thunderstorm warning was issued for the whole coast until friday evening",
        "markets",
        "the referee sent off two players",
    ]
    top_ks = [1, 2, 4, 3, 1, 2, 4, 3]
    sizes: list[int] = []
    batcher = PredictBatcher(
        lambda batch, k: (0, classifier.predict(batch, k)),
        max_batch=8,
        max_wait_s=0.01,
        on_batch=lambda n, _: sizes.append(n),
    )

    async def scenario() -> list[tuple[int, list]]:
        return await asyncio.gather(*(batcher.submit([t], k) for t, k in zip(texts, top_ks, strict=True)))

    batched = asyncio.run(scenario())

    assert sizes == [len(texts)]
    for text, top_k, (_, (got,)) in zip(texts, top_ks, batched, strict=True):
        (alone,) = classifier.predict([text], top_k)
        assert got.label == alone.label
        assert got.score == pytest.approx(alone.score, abs=1e-5)
        trimmed = got.top[:top_k]
        assert [s.label for s in trimmed] == [s.label for s in alone.top]
        assert [s.score for s in trimmed] == pytest.approx([s.score for s in alone.top], abs=1e-5)


def test_a_full_queue_refuses_at_once_and_takes_requests_again_once_it_drains() -> None:
    model = FakeModel(delay_s=0.2)
    batcher = PredictBatcher(model, max_batch=2, max_wait_s=0.0, max_queue=4)

    async def scenario() -> tuple[list[tuple[int, list[str]]], tuple[int, list[str]]]:
        running = asyncio.create_task(batcher.submit(["r0", "r1"], 1))
        while not model.batches:
            await asyncio.sleep(0.01)
        queued = [asyncio.create_task(batcher.submit([f"q{i}"] * 2, 1)) for i in range(2)]
        await asyncio.sleep(0)
        assert batcher.queue_depth == 4
        with pytest.raises(QueueFull, match="4 texts are waiting"):
            await batcher.submit(["refused"], 1)
        done = await asyncio.gather(running, *queued)
        return done, await batcher.submit(["later"], 1)

    done, later = asyncio.run(scenario())
    assert [predictions for _, predictions in done] == [["r0:1", "r1:1"], ["q0:1"] * 2, ["q1:1"] * 2]
    assert later[1] == ["later:1"] and all("refused" not in batch for batch in model.batches)


def test_a_request_that_waits_past_its_timeout_gives_up_and_costs_no_forward_pass() -> None:
    model = FakeModel(delay_s=0.5)
    batcher = PredictBatcher(model, max_batch=1, max_wait_s=0.0, timeout_s=0.2)

    async def scenario() -> list[object]:
        running = asyncio.create_task(batcher.submit(["slow"], 1))
        while not model.batches:
            await asyncio.sleep(0.01)
        behind = asyncio.create_task(batcher.submit(["behind"], 1))
        answers = await asyncio.gather(running, behind, return_exceptions=True)
        assert batcher.queue_depth == 0
        return answers

    answers = asyncio.run(scenario())
    assert all(isinstance(a, PredictTimeout) and "not answered within 0.2 s" in str(a) for a in answers)
    assert model.batches == [["slow"]], "the request that gave up in the queue never reached the model"
