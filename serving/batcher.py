"""Adaptive micro-batching on the event loop: requests that arrive while a batch is being scored
go out together in the next one.

No thread and no timer: the first request starts a drain task; everything the event loop has
queued by the time it runs (and while it awaits the feature store) forms the batch. At low
traffic a batch is one request; under load it grows, so the per-call cost of Feast and
scikit-learn is paid once per batch instead of once per request and queueing stays bounded.
Keeping the hot path on one thread also avoids GIL hand-offs between threads, which cost more
than the work itself at a few milliseconds per request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass
class Queued(Generic[Item, Result]):
    """One submitted item, when it arrived (perf_counter) and the future its caller awaits."""

    item: Item
    enqueued_at: float
    future: asyncio.Future[Result]


Scorer = Callable[[Sequence[Queued[Item, Result]]], Awaitable[list[Result]]]


class MicroBatcher(Generic[Item, Result]):
    """Feeds queued items to `score` in batches of at most `max_size` (by `size_of`).

    `score` gets the queued entries (items and arrival times) and returns one result per
    entry, in order. If a whole batch raises, its entries are scored one by one, so one bad
    request fails alone instead of failing the requests it happened to share a batch with.
    Must be used from one event loop.
    """

    def __init__(
        self, score: Scorer, *, max_size: int, size_of: Callable[[Item], int] = lambda _: 1
    ) -> None:
        self._score = score
        self._max_size = max_size
        self._size_of = size_of
        self._pending: deque[Queued[Item, Result]] = deque()
        self._drainer: asyncio.Task[None] | None = None
        self.batches = 0
        self.items = 0

    async def submit(self, item: Item) -> Result:
        """Queue an item and wait for its result (raises what scoring it raised)."""
        loop = asyncio.get_running_loop()
        entry = Queued(item, time.perf_counter(), loop.create_future())
        self._pending.append(entry)
        if self._drainer is None or self._drainer.done():
            self._drainer = loop.create_task(self._drain(), name="micro-batcher")
        return await entry.future

    async def drain(self) -> None:
        """Wait until everything queued so far has been answered (shutdown)."""
        while self._drainer is not None and not self._drainer.done():
            await asyncio.shield(self._drainer)

    async def _drain(self) -> None:
        while self._pending:
            await self._settle(self._take())

    def _take(self) -> list[Queued[Item, Result]]:
        """The oldest entry plus those behind it, up to max_size."""
        batch = [self._pending.popleft()]
        size = self._size_of(batch[0].item)
        while self._pending and size + self._size_of(self._pending[0].item) <= self._max_size:
            entry = self._pending.popleft()
            batch.append(entry)
            size += self._size_of(entry.item)
        return batch

    async def _settle(self, batch: list[Queued[Item, Result]]) -> None:
        """Score a batch and resolve its futures; isolate the failure if the batch raises."""
        self.batches += 1
        self.items += len(batch)
        try:
            results = await self._score(batch)
        except Exception as exc:
            if len(batch) == 1:
                log.exception("Scoring a request failed")
                _resolve(batch[0], exc)
                return
            log.warning("A batch of %d requests failed; scoring them one by one", len(batch))
            for entry in batch:
                await self._settle([entry])
            return
        for entry, result in zip(batch, results, strict=True):
            _resolve(entry, result)


def _resolve(entry: Queued[Item, Result], outcome: Result | BaseException) -> None:
    """Answer the caller unless it has gone (client disconnected: its future was cancelled)."""
    if entry.future.done():
        return
    if isinstance(outcome, BaseException):
        entry.future.set_exception(outcome)
    else:
        entry.future.set_result(outcome)
