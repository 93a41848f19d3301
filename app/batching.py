"""Dynamic batching of concurrent prediction requests into one forward pass.

Requests wait in a queue; a single worker task takes whole requests from it, up to `max_batch` texts, and runs
them as one call of a synchronous `run` in a worker thread, so forward passes never contend for the CPU. When
the worker is idle, the first request waits at most `max_wait_s` for company; when a backlog built up during
the previous batch, the next batch is formed from it at once.

The queue is bounded: a request that would take it past `max_queue` texts is refused at once (`QueueFull`)
rather than left to wait behind work the machine cannot catch up with; one that waits longer than
`timeout_s` gives up (`PredictTimeout`), and a request that leaves the queue before its batch starts costs no
forward pass.

A request of more than `max_batch` texts is split into parts of at most `max_batch`, queued together, so no
forward pass grows past the batch limit and no request holds the model longer than a batch does. Its parts
must be answered by one model: when `run` returned different contexts for them (the model was swapped
between two parts), the request runs again, whole, as one batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

C = TypeVar("C")
P = TypeVar("P")

log = logging.getLogger("retentive.api")


class BatcherClosedError(RuntimeError):
    """The batcher was closed before the request could run."""


class QueueFull(RuntimeError):  # noqa: N818 - public API name
    """The queue holds too many texts to take this request now."""

    def __init__(self, queued: int, limit: int) -> None:
        super().__init__(f"{queued} texts are waiting (limit {limit}); retry in a moment")
        self.queued = queued
        self.limit = limit


class PredictTimeout(TimeoutError):  # noqa: N818 - public API name
    """The request was not answered within the batcher's `timeout_s`."""


@dataclass(eq=False)
class _Request(Generic[C, P]):
    texts: list[str]
    top_k: int
    future: asyncio.Future[tuple[C, list[P]]] = field(repr=False)


class PredictBatcher(Generic[C, P]):
    """Groups concurrent `submit` calls into batches for `run(texts, top_k) -> (context, results)`.

    `run` gets the texts of whole requests, in queue order, and the largest `top_k` among them; it returns a
    context shared by the batch (such as the model version that answered) and one result per text, in order.
    Each submitter gets the context and its own slice of the results, which were computed with the batch's
    `top_k`: callers trim each result's ranked list to their own `top_k`.

    The worker task starts on the first `submit`, on that call's event loop, so the batcher can be created
    outside a running loop; it is bound to that loop from then on. `on_batch(texts, seconds)` is called after
    every batch with its size in texts and the duration of `run`.
    """

    def __init__(
        self,
        run: Callable[[list[str], int], tuple[C, Sequence[P]]],
        max_batch: int,
        max_wait_s: float,
        on_batch: Callable[[int, float], None] | None = None,
        max_queue: int | None = None,
        timeout_s: float | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must not be negative, got {max_wait_s}")
        self._run = run
        self._max_batch = max_batch
        self._max_wait_s = max_wait_s
        self._on_batch = on_batch
        self._max_queue = max_queue
        self._timeout_s = timeout_s
        self._pending: deque[_Request[C, P]] = deque()
        self._queued = 0
        self._arrived = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def queue_depth(self) -> int:
        """Texts waiting in the queue, not yet in a running batch."""
        return self._queued

    async def submit(self, texts: list[str], top_k: int) -> tuple[C, list[P]]:
        """The batch's context and one result per text, in order; raises what `run` raised for the batch."""
        if self._closed:
            raise BatcherClosedError("the batcher is closed")
        # An empty queue takes any request, so one as large as the request limit is never refused for good.
        if self._max_queue is not None and self._queued and self._queued + len(texts) > self._max_queue:
            raise QueueFull(self._queued, self._max_queue)
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._work())
        size = self._max_batch
        answers = await self._answer(
            [texts[start : start + size] for start in range(0, len(texts), size)], top_k
        )
        if any(context is not answers[0][0] for context, _ in answers):
            answers = await self._answer([texts], top_k)
        return answers[0][0], [result for _, results in answers for result in results]

    async def _answer(self, parts: list[list[str]], top_k: int) -> list[tuple[C, list[P]]]:
        """Queue the parts together and wait for all of them, withdrawing those not started on giving up."""
        loop = asyncio.get_running_loop()
        requests: list[_Request[C, P]] = [_Request(list(part), top_k, loop.create_future()) for part in parts]
        self._pending.extend(requests)
        self._queued += sum(len(request.texts) for request in requests)
        self._arrived.set()
        try:
            async with asyncio.timeout(self._timeout_s):
                return [await request.future for request in requests]
        except TimeoutError:
            self._abandon(requests)
            raise PredictTimeout(f"not answered within {self._timeout_s:g} s; retry later") from None
        except BaseException:
            self._abandon(requests)
            raise

    def _abandon(self, requests: list[_Request[C, P]]) -> None:
        """A caller that went away or gave up before its batch started must not cost a forward pass; the
        answers of its parts already running are dropped."""
        for request in requests:
            if request in self._pending:
                self._pending.remove(request)
                self._queued -= len(request.texts)
            request.future.cancel()

    async def close(self) -> None:
        """Fail queued requests with `BatcherClosedError`, let a running batch finish, and stop the worker."""
        self._closed = True
        while self._pending:
            request = self._pending.popleft()
            if not request.future.done():
                request.future.set_exception(
                    BatcherClosedError("the batcher was closed before this request ran")
                )
        self._queued = 0
        self._arrived.set()
        if self._worker is not None:
            await self._worker

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closed:
            if not self._pending:
                self._arrived.clear()
                await self._arrived.wait()
                await self._fill(loop.time() + self._max_wait_s)
            batch = self._take()
            if batch:
                await self._execute(batch)

    async def _fill(self, deadline: float) -> None:
        """Wait until the queue holds a full batch, the batcher closes, or the deadline passes."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                while self._queued < self._max_batch and not self._closed:
                    self._arrived.clear()
                    await self._arrived.wait()

    def _take(self) -> list[_Request[C, P]]:
        if not self._pending:
            return []
        batch = [self._pending.popleft()]
        size = len(batch[0].texts)
        while self._pending and size + len(self._pending[0].texts) <= self._max_batch:
            batch.append(self._pending.popleft())
            size += len(batch[-1].texts)
        self._queued -= size
        return batch

    async def _execute(self, batch: list[_Request[C, P]]) -> None:
        texts = [text for request in batch for text in request.texts]
        top_k = max(request.top_k for request in batch)
        began = time.perf_counter()
        try:
            context, results = await asyncio.to_thread(self._run, texts, top_k)
            if len(results) != len(texts):
                raise RuntimeError(f"run returned {len(results)} results for {len(texts)} texts")
        except Exception as err:
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(err)
        else:
            start = 0
            for request in batch:
                end = start + len(request.texts)
                if not request.future.done():
                    request.future.set_result((context, list(results[start:end])))
                start = end
        if self._on_batch is not None:
            try:
                self._on_batch(len(texts), time.perf_counter() - began)
            except Exception:
                # A broken metrics hook must not stop predictions.
                log.exception("on_batch failed")
