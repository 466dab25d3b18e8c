"""The retrieval service's dynamic batcher."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import pytest

from services.common.errors import NotReadyError
from services.retrieval.batching import DynamicBatcher


class Recorder:
    """A ``process`` that records its batches; can be held to keep the worker busy."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release = threading.Event()
        self.release.set()
        self.started = threading.Event()

    def __call__(self, items: Sequence[int]) -> list[int]:
        self.started.set()
        self.release.wait(timeout=5)
        self.batches.append(list(items))
        if any(i < 0 for i in items):
            raise ValueError("negative item")
        return [i * 10 for i in items]


async def test_concurrent_items_meet_in_one_batch_in_order() -> None:
    rec = Recorder()
    batcher = DynamicBatcher(rec, max_batch_size=8, max_queue_delay=0.05)
    batcher.start()
    results = await asyncio.gather(*(batcher.submit(i) for i in range(5)))
    await batcher.close()
    assert results == [0, 10, 20, 30, 40]
    assert rec.batches == [[0, 1, 2, 3, 4]]


async def test_queue_waits_are_reported_per_request() -> None:
    rec = Recorder()
    waits: list[float] = []
    batcher = DynamicBatcher(rec, max_batch_size=8, max_queue_delay=0.02, on_queue=waits.append)
    batcher.start()
    await asyncio.gather(*(batcher.submit(i) for i in range(5)))
    await batcher.close()
    assert len(waits) == 5 and all(w >= 0 for w in waits)
    assert max(waits) >= 0.015, "the batch waited for company up to max_queue_delay"


async def test_batches_never_exceed_max_size() -> None:
    rec = Recorder()
    batcher = DynamicBatcher(rec, max_batch_size=3, max_queue_delay=0.05)
    batcher.start()
    results = await asyncio.gather(*(batcher.submit(i) for i in range(7)))
    await batcher.close()
    assert results == [i * 10 for i in range(7)]
    assert max(len(b) for b in rec.batches) <= 3
    assert sorted(i for b in rec.batches for i in b) == list(range(7))


async def test_zero_delay_runs_at_once_and_batches_what_queued_meanwhile() -> None:
    rec = Recorder()
    rec.release.clear()
    batcher = DynamicBatcher(rec, max_batch_size=16, max_queue_delay=0.0)
    batcher.start()
    first = asyncio.ensure_future(batcher.submit(1))
    # The lone first item is taken without waiting for company ...
    await asyncio.to_thread(rec.started.wait, 5)
    rest = [asyncio.ensure_future(batcher.submit(i)) for i in (2, 3, 4)]
    await asyncio.sleep(0.01)
    rec.release.set()
    # ... and the items that arrived while it decoded form the next batch.
    assert await first == 10
    assert await asyncio.gather(*rest) == [20, 30, 40]
    await batcher.close()
    assert rec.batches == [[1], [2, 3, 4]]


async def test_items_are_grouped_by_key() -> None:
    rec = Recorder()
    batcher = DynamicBatcher(rec, max_batch_size=8, max_queue_delay=0.05, key=lambda i: i % 2)
    batcher.start()
    await asyncio.gather(*(batcher.submit(i) for i in range(6)))
    await batcher.close()
    assert sorted(rec.batches) == [[0, 2, 4], [1, 3, 5]]


async def test_a_failing_batch_fails_only_its_items() -> None:
    rec = Recorder()
    batcher = DynamicBatcher(rec, max_batch_size=8, max_queue_delay=0.05, key=lambda i: i < 0)
    batcher.start()
    outcomes = await asyncio.gather(
        batcher.submit(1), batcher.submit(-1), batcher.submit(2), return_exceptions=True
    )
    await batcher.close()
    assert outcomes[0] == 10 and outcomes[2] == 20
    assert isinstance(outcomes[1], ValueError)


async def test_close_fails_queued_items_and_refuses_new_ones() -> None:
    rec = Recorder()
    rec.release.clear()
    batcher = DynamicBatcher(rec, max_batch_size=1, max_queue_delay=0.0)
    batcher.start()
    running = asyncio.ensure_future(batcher.submit(1))
    await asyncio.to_thread(rec.started.wait, 5)
    queued = asyncio.ensure_future(batcher.submit(2))
    await asyncio.sleep(0.01)
    closing = asyncio.ensure_future(batcher.close())
    await asyncio.sleep(0.01)
    rec.release.set()
    await closing
    with pytest.raises(NotReadyError):
        await queued
    with pytest.raises(NotReadyError):
        await batcher.submit(3)
    running.cancel()
