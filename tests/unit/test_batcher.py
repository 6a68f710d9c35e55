"""MicroBatcher: what queues up while a batch is scored goes out together; failures stay alone."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import pytest

from serving.batcher import MicroBatcher, Queued

pytestmark = pytest.mark.unit


class GatedScorer:
    """Doubles numbers; the first batch blocks until released, so the next ones queue up."""

    def __init__(self, poison: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.first_started = threading.Event()
        self.release = threading.Event()
        self.poison = poison

    def __call__(self, batch: Sequence[Queued[int, int]]) -> list[int]:
        items = [q.item for q in batch]
        self.batches.append(items)
        if len(self.batches) == 1:
            self.first_started.set()
            self.release.wait(5)
        if self.poison in items:
            raise ValueError(f"cannot score {self.poison}")
        return [2 * i for i in items]


async def _submit_while_first_batch_runs(
    batcher: MicroBatcher[int, int], scorer: GatedScorer, later: list[int]
) -> list[object]:
    first = asyncio.ensure_future(batcher.submit(0))
    await asyncio.to_thread(scorer.first_started.wait, 5)
    rest = [asyncio.ensure_future(batcher.submit(i)) for i in later]
    await asyncio.sleep(0.05)  # let every submit reach the queue
    scorer.release.set()
    return await asyncio.gather(first, *rest, return_exceptions=True)


def test_requests_queued_behind_a_running_batch_are_scored_together() -> None:
    scorer = GatedScorer()
    batcher: MicroBatcher[int, int] = MicroBatcher(scorer, max_size=100)
    batcher.start()
    try:
        results = asyncio.run(_submit_while_first_batch_runs(batcher, scorer, [1, 2, 3]))
    finally:
        batcher.close()
    assert results == [0, 2, 4, 6]
    assert scorer.batches == [[0], [1, 2, 3]]
    assert (batcher.batches, batcher.items) == (2, 4)


def test_batch_size_is_bounded_by_the_size_of_its_items() -> None:
    scorer = GatedScorer()
    batcher: MicroBatcher[int, int] = MicroBatcher(scorer, max_size=5, size_of=lambda i: i)
    batcher.start()
    try:
        results = asyncio.run(_submit_while_first_batch_runs(batcher, scorer, [3, 2, 4, 1]))
    finally:
        batcher.close()
    assert results == [0, 6, 4, 8, 2]
    # 3+2 fills a batch of 5; 4+1 the next one. A single item over the bound still goes alone.
    assert scorer.batches == [[0], [3, 2], [4, 1]]


def test_a_failing_request_fails_alone_and_its_batch_mates_are_answered() -> None:
    scorer = GatedScorer(poison=2)
    batcher: MicroBatcher[int, int] = MicroBatcher(scorer, max_size=100)
    batcher.start()
    try:
        results = asyncio.run(_submit_while_first_batch_runs(batcher, scorer, [1, 2, 3]))
    finally:
        batcher.close()
    assert [results[0], results[1], results[3]] == [0, 2, 6]
    assert isinstance(results[2], ValueError)
    assert "cannot score 2" in str(results[2])
    assert scorer.batches == [[0], [1, 2, 3], [1], [2], [3]]


def test_close_answers_what_is_queued_before_stopping() -> None:
    scorer = GatedScorer()
    batcher: MicroBatcher[int, int] = MicroBatcher(scorer, max_size=100)
    batcher.start()

    async def scenario() -> list[int]:
        first = asyncio.ensure_future(batcher.submit(0))
        await asyncio.to_thread(scorer.first_started.wait, 5)
        queued = [asyncio.ensure_future(batcher.submit(i)) for i in (5, 6)]
        await asyncio.sleep(0.05)
        closing = asyncio.ensure_future(asyncio.to_thread(batcher.close))
        await asyncio.sleep(0.05)
        scorer.release.set()
        await closing
        return await asyncio.gather(first, *queued)

    assert asyncio.run(scenario()) == [0, 10, 12]
