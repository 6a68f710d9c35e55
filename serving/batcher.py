"""Adaptive micro-batching: requests that arrive while a batch is being scored go out together.

One worker thread takes the first waiting request, drains whatever else is queued (up to a size
bound) and scores it all with one feature read and one model call per model. Nothing waits for a
batch to fill: at low traffic every batch is one request; under load the batch grows, so the
per-call overhead of Feast and scikit-learn is paid once per batch instead of once per request
and queueing stays bounded. The event loop only enqueues and awaits, so /healthz, /readyz and
/metrics keep answering while a slow feature read is in progress.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass
class Queued(Generic[Item, Result]):
    """One submitted item, the time it arrived and the future its caller awaits."""

    item: Item
    enqueued_at: float = field(default_factory=time.perf_counter)
    future: Future[Result] = field(default_factory=Future)


Scorer = Callable[[Sequence[Queued[Item, Result]]], list[Result]]


class MicroBatcher(Generic[Item, Result]):
    """Feeds queued items to `score` in batches of at most `max_size` (by `size_of`) on a thread.

    `score` gets the queued entries (their items and arrival times) and returns one result per
    entry, in order. If a whole batch raises, its entries are scored one by one, so one bad
    request fails alone instead of failing the requests it happened to share a batch with.
    """

    def __init__(
        self, score: Scorer, *, max_size: int, size_of: Callable[[Item], int] = lambda _: 1
    ) -> None:
        self._score = score
        self._max_size = max_size
        self._size_of = size_of
        self._queue: queue.SimpleQueue[Queued[Item, Result] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.batches = 0
        self.items = 0

    def start(self) -> None:
        """Start the worker thread."""
        self._thread = threading.Thread(target=self._run, name="micro-batcher", daemon=True)
        self._thread.start()

    async def submit(self, item: Item) -> Result:
        """Queue an item and wait for its result (raises what scoring it raised)."""
        entry: Queued[Item, Result] = Queued(item)
        self._queue.put(entry)
        return await asyncio.wrap_future(entry.future)

    def close(self, timeout_s: float = 30.0) -> None:
        """Score what is queued, then stop the worker."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout_s)
            self._thread = None

    # -- worker ----------------------------------------------------------------------------

    def _take(self, first: Queued[Item, Result]) -> tuple[list[Queued[Item, Result]], bool]:
        """The first entry plus whatever is queued behind it, up to max_size; True on stop."""
        batch, size = [first], self._size_of(first.item)
        while size < self._max_size:
            try:
                entry = self._queue.get_nowait()
            except queue.Empty:
                break
            if entry is None:
                return batch, True
            batch.append(entry)
            size += self._size_of(entry.item)
        return batch, False

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                break
            batch, stopping = self._take(first)
            self._settle(batch)
        # Anything queued after the stop signal still gets an answer.
        while (entry := self._next_nowait()) is not None:
            self._settle([entry])

    def _next_nowait(self) -> Queued[Item, Result] | None:
        try:
            return self._queue.get_nowait()
        except queue.Empty:
            return None

    def _settle(self, batch: list[Queued[Item, Result]]) -> None:
        """Score a batch and resolve its futures; isolate the failure if the batch raises."""
        self.batches += 1
        self.items += len(batch)
        try:
            results = self._score(batch)
        except Exception as exc:
            if len(batch) == 1:
                log.exception("Scoring a request failed")
                batch[0].future.set_exception(exc)
                return
            log.warning("A batch of %d requests failed; scoring them one by one", len(batch))
            for entry in batch:
                self._settle([entry])
            return
        for entry, result in zip(batch, results, strict=True):
            entry.future.set_result(result)
