"""MicroBatcher: what queues up while a batch is scored goes out together; failures stay alone."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from serving.batcher import MicroBatcher, Queued

pytestmark = pytest.mark.unit


class GatedScorer:
    """Doubles numbers; the first batch waits until released, so the next ones queue up."""

    def __init__(self, poison: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.release = asyncio.Event()
        self.poison = poison

    async def __call__(self, batch: Sequence[Queued[int, int]]) -> list[int]:
        items = [q.item for q in batch]
        self.batches.append(items)
        if len(self.batches) == 1:
            await self.release.wait()
        if self.poison in items:
            raise ValueError(f"cannot score {self.poison}")
        return [2 * i for i in items]


async def _while_first_batch_runs(
    later: list[int], *, poison: int | None = None, max_size: int = 100, by_value: bool = False
) -> tuple[list[object], GatedScorer, MicroBatcher[int, int]]:
    """Submit 0, then `later` while 0 is being scored; release; gather everything."""
    scorer = GatedScorer(poison)
    size_of = (lambda i: i) if by_value else (lambda _: 1)
    batcher: MicroBatcher[int, int] = MicroBatcher(scorer, max_size=max_size, size_of=size_of)
    first = asyncio.ensure_future(batcher.submit(0))
    await asyncio.sleep(0)  # the drain task starts and takes [0]
    await asyncio.sleep(0)
    rest = [asyncio.ensure_future(batcher.submit(i)) for i in later]
    await asyncio.sleep(0)
    scorer.release.set()
    results = await asyncio.gather(first, *rest, return_exceptions=True)
    return results, scorer, batcher


def test_requests_queued_behind_a_running_batch_are_scored_together() -> None:
    results, scorer, batcher = asyncio.run(_while_first_batch_runs([1, 2, 3]))
    assert results == [0, 2, 4, 6]
    assert scorer.batches == [[0], [1, 2, 3]]
    assert (batcher.batches, batcher.items) == (2, 4)


def test_requests_arriving_together_form_one_batch_without_waiting() -> None:
    async def scenario() -> tuple[list[int], GatedScorer]:
        scorer = GatedScorer()
        scorer.release.set()
        batcher: MicroBatcher[int, int] = MicroBatcher(scorer, max_size=100)
        results = await asyncio.gather(*(batcher.submit(i) for i in (4, 5, 6)))
        return results, scorer

    results, scorer = asyncio.run(scenario())
    assert results == [8, 10, 12]
    assert scorer.batches == [[4, 5, 6]]


def test_batch_size_is_bounded_by_the_size_of_its_items() -> None:
    results, scorer, _ = asyncio.run(
        _while_first_batch_runs([3, 2, 4, 1, 9], max_size=5, by_value=True)
    )
    assert results == [0, 6, 4, 8, 2, 18]
    # 3+2 fill a batch of 5, then 4+1; an item larger than the bound still goes, alone.
    assert scorer.batches == [[0], [3, 2], [4, 1], [9]]


def test_a_failing_request_fails_alone_and_its_batch_mates_are_answered() -> None:
    results, scorer, _ = asyncio.run(_while_first_batch_runs([1, 2, 3], poison=2))
    assert [results[0], results[1], results[3]] == [0, 2, 6]
    assert isinstance(results[2], ValueError)
    assert "cannot score 2" in str(results[2])
    assert scorer.batches == [[0], [1, 2, 3], [1], [2], [3]]


def test_drain_waits_for_everything_queued() -> None:
    async def scenario() -> tuple[list[int], list[list[int]]]:
        scorer = GatedScorer()
        batcher: MicroBatcher[int, int] = MicroBatcher(scorer, max_size=100)
        pending = [asyncio.ensure_future(batcher.submit(i)) for i in (0, 5, 6)]
        await asyncio.sleep(0)
        draining = asyncio.ensure_future(batcher.drain())
        await asyncio.sleep(0)
        assert not draining.done()
        scorer.release.set()
        await draining
        assert all(p.done() for p in pending)
        return [p.result() for p in pending], scorer.batches

    results, batches = asyncio.run(scenario())
    assert results == [0, 10, 12]
    assert batches == [[0, 5, 6]]


def test_a_caller_that_went_away_does_not_break_the_batch() -> None:
    async def scenario() -> tuple[int, GatedScorer]:
        scorer = GatedScorer()
        batcher: MicroBatcher[int, int] = MicroBatcher(scorer, max_size=100)
        first = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        gone = asyncio.ensure_future(batcher.submit(1))
        stays = asyncio.ensure_future(batcher.submit(2))
        await asyncio.sleep(0)
        gone.cancel()  # client disconnected while queued
        scorer.release.set()
        await first
        return await stays, scorer

    result, scorer = asyncio.run(scenario())
    assert result == 4
    assert scorer.batches == [[0], [1, 2]]
