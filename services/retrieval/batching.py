"""Dynamic batching of concurrent requests, as Triton's dynamic batcher does.

Requests queue up; a batch is cut when it reaches ``max_batch_size`` or when
the oldest request has waited ``max_queue_delay`` seconds (with 0, whatever is
queued when the worker becomes free), and is processed by one worker thread
(the model's intra-op threads do the parallel work; several batches in flight
on 2 cores would only thrash). Requests are grouped by a key
(e.g. beam width) because one array program decodes one shape.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from services.common.errors import NotReadyError

T = TypeVar("T")
R = TypeVar("R")


@dataclass(slots=True)
class _Pending(Generic[T, R]):
    item: T
    future: asyncio.Future[R]
    enqueued: float = field(default_factory=time.perf_counter)


class DynamicBatcher(Generic[T, R]):
    """Collects ``submit``-ted items into batches for ``process(batch) -> results``.

    ``process`` runs in a single worker thread and must return one result per
    item, in order (or raise, failing the whole batch).
    """

    def __init__(
        self,
        process: Callable[[Sequence[T]], Sequence[R]],
        *,
        max_batch_size: int,
        max_queue_delay: float,
        key: Callable[[T], Hashable] = lambda _item: None,
        on_batch: Callable[[int, float], None] | None = None,
        on_queue: Callable[[float], None] | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        self._process = process
        self._max_batch = max_batch_size
        self._max_delay = max_queue_delay
        self._key = key
        self._on_batch = on_batch
        # called with each request's wait from submit() to the start of its batch
        self._on_queue = on_queue
        self._queue: asyncio.Queue[_Pending[T, R]] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch")
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def start(self) -> None:
        """Start the batching loop on the running event loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def submit(self, item: T) -> R:
        """Queue ``item``; resolve with its result once its batch ran."""
        if self._closed or self._task is None:
            raise NotReadyError("batcher is not running")
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(item, future))
        return await future

    async def _collect(self) -> list[_Pending[T, R]]:
        first = await self._queue.get()
        batch = [first]
        deadline = first.enqueued + self._max_delay
        while len(batch) < self._max_batch:
            left = deadline - time.perf_counter()
            if left <= 0:
                # Take whatever else is already waiting, without waiting more.
                while len(batch) < self._max_batch and not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), left))
            except TimeoutError:
                break
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            pending = [p for p in await self._collect() if not p.future.cancelled()]
            groups: dict[Hashable, list[_Pending[T, R]]] = {}
            for p in pending:
                groups.setdefault(self._key(p.item), []).append(p)
            for group in groups.values():
                items = [p.item for p in group]
                start = time.perf_counter()
                if self._on_queue is not None:
                    for p in group:
                        self._on_queue(start - p.enqueued)
                try:
                    results = await loop.run_in_executor(self._executor, self._process, items)
                except Exception as exc:
                    for p in group:
                        if not p.future.done():
                            p.future.set_exception(exc)
                    continue
                if self._on_batch is not None:
                    self._on_batch(len(items), time.perf_counter() - start)
                for p, result in zip(group, results, strict=True):
                    if not p.future.done():
                        p.future.set_result(result)

    async def close(self) -> None:
        """Stop the loop; queued requests fail with UNAVAILABLE."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while not self._queue.empty():
            p = self._queue.get_nowait()
            if not p.future.done():
                p.future.set_exception(NotReadyError("service is shutting down"))
        # Wait for a batch still decoding without blocking the event loop.
        await asyncio.to_thread(self._executor.shutdown, wait=True)
