"""Dynamic micro-batching: concurrent requests share one encoder pass and one index search.

One worker thread takes every request that queued up while it was busy (up to `max_batch`), so
batches grow with load and a lone request is not held back; `max_wait` holds a batch open a little
longer for company, but only while requests have been arriving together (the previous batch had
more than one), so a client asking one question at a time never waits for others.

Items have a weight (a batch of 50 questions weighs 50): `max_batch` and `max_queue` count weight,
so a batch request cannot slip past the bounds a single question obeys. An item heavier than
`max_batch` is processed alone; one heavier than `max_queue` is admitted only into an empty queue.
When the queue is full, `submit` fails at once with `Overloaded`, which the HTTP layer turns into
503 with Retry-After instead of letting latency grow without bound.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Generic, TypeVar

from app.core.errors import Unavailable

logger = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")


class Overloaded(Unavailable):
    """The queue is full (or the answer did not come in time); try again shortly."""

    counter = "overloaded"

    def __init__(self, reason: str):
        super().__init__(f"too busy, retry shortly ({reason})")


class MicroBatcher(Generic[Item, Result]):
    """`process` maps a batch of items to one result per item; a result that is an exception is
    raised to that item's caller alone, an exception raised by `process` to every caller."""

    def __init__(
        self,
        process: Callable[[Sequence[Item]], Sequence[Result]],
        *,
        max_batch: int,
        max_wait_seconds: float,
        max_queue: int,
        name: str = "batcher",
        on_batch: Callable[[int], None] | None = None,
    ):
        if max_batch < 1 or max_queue < 1:
            raise ValueError("max_batch and max_queue must be at least 1")
        self._process = process
        self._max_batch = max_batch
        self._max_wait = max_wait_seconds
        self._max_queue = max_queue
        self._on_batch = on_batch
        self._queue: deque[tuple[Item, Future, int]] = deque()
        self._queued_weight = 0
        self._ready = threading.Condition()
        self._stopping = False
        self._last_batch_size = 1
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        """Queued weight (questions waiting)."""
        return self._queued_weight

    def _enqueue(self, item: Item, weight: int) -> Future:
        future: Future = Future()
        with self._ready:
            if self._stopping:
                raise Overloaded("shutting down")
            if self._queue and self._queued_weight + weight > self._max_queue:
                raise Overloaded(f"{self._queued_weight} questions already queued")
            self._queue.append((item, future, weight))
            self._queued_weight += weight
            self._ready.notify()
        return future

    def submit(self, item: Item, timeout: float | None = None, weight: int = 1) -> Result:
        """Blocks until the item's batch is processed; re-raises the item's exception."""
        future = self._enqueue(item, weight)
        try:
            return future.result(timeout=timeout)
        except FutureTimeout:
            future.cancel()
            raise Overloaded(f"not answered within {timeout:.1f} s") from None

    async def submit_async(self, item: Item, timeout: float | None = None, weight: int = 1) -> Result:
        """The same for an event loop: waits without holding a thread."""
        future = self._enqueue(item, weight)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout)
        except TimeoutError:
            future.cancel()
            raise Overloaded(f"not answered within {timeout:.1f} s") from None

    def stop(self, timeout: float = 5.0) -> None:
        with self._ready:
            self._stopping = True
            self._ready.notify_all()
        self._thread.join(timeout)

    def _take_batch(self) -> list[tuple[Item, Future]]:
        with self._ready:
            while not self._queue and not self._stopping:
                self._ready.wait()
            if not self._queue:
                return []
            if self._max_wait > 0 and self._queued_weight < self._max_batch and self._last_batch_size > 1:
                deadline = time.monotonic() + self._max_wait
                while self._queued_weight < self._max_batch and not self._stopping:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._ready.wait(remaining)
            batch = []
            weight = 0
            while self._queue and (not batch or weight + self._queue[0][2] <= self._max_batch):
                item, future, item_weight = self._queue.popleft()
                self._queued_weight -= item_weight
                if future.set_running_or_notify_cancel():
                    batch.append((item, future))
                    weight += item_weight
            self._last_batch_size = max(1, weight)
            return batch

    def _run(self) -> None:
        while True:
            batch = self._take_batch()
            if not batch:
                if self._stopping:
                    return
                continue
            if self._on_batch:
                self._on_batch(len(batch))
            try:
                results = self._process([item for item, _ in batch])
            except BaseException as error:  # the callers get it, the worker lives on
                for _, future in batch:
                    future.set_exception(error)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)
