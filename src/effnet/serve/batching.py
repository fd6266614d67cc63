"""Dynamic batching: items submitted by concurrent requests run together in one model call.

A :class:`Batcher` keeps a bounded queue of items. Its worker takes the oldest item, waits
at most ``max_wait_s`` for more to arrive (or until ``max_batch`` are there), and runs the
batch in one dedicated thread, so the event loop keeps accepting and decoding requests
while the model computes. Each submitter gets its own items' results back, in order.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

from ..errors import ConfigError

Item = TypeVar("Item")
"""What one caller submits: an input of the batched function."""
Result = TypeVar("Result")
"""What the batched function returns for one item."""


class QueueFullError(Exception):
    """The queue cannot take these items now; try again in ``retry_after`` seconds."""

    def __init__(self, waiting: int, capacity: int, retry_after: int = 1) -> None:
        super().__init__(f"the queue holds {waiting} of {capacity} images; try again in {retry_after} s")
        self.retry_after = retry_after


class Batcher(Generic[Item, Result]):
    """Runs ``run(items) -> results`` (one result per item, same order) on batches of up to
    ``max_batch`` items, each batch formed within ``max_wait_s`` of its first item.

    At most ``max_queue`` items wait at a time; :meth:`submit` raises :class:`QueueFullError`
    beyond that. ``on_batch(size)`` is called for every batch run (for metrics).
    """

    def __init__(self, run: Callable[[list[Item]], Sequence[Result]], max_batch: int, max_wait_s: float,
                 max_queue: int, on_batch: Callable[[int], None] | None = None) -> None:
        if max_batch < 1 or max_queue < 1 or max_wait_s < 0:
            raise ConfigError(f"max_batch ({max_batch}) and max_queue ({max_queue}) must be at least 1 and "
                              f"max_wait_s ({max_wait_s}) at least 0")
        self.run = run
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.on_batch = on_batch
        self._pending: deque[tuple[Item, asyncio.Future]] = deque()
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="effnet-batch")
        self._worker: asyncio.Task | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def depth(self) -> int:
        """Items waiting for a batch (not counting the batch running now)."""
        return len(self._pending)

    def start(self) -> None:
        """Start the worker (call from the running event loop)."""
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._work(), name="effnet-batcher")

    async def close(self) -> None:
        """Finish every item already submitted, then stop the worker and its thread."""
        while self._pending or not self._idle.is_set():
            await self._idle.wait()
            await asyncio.sleep(0)
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
        self._executor.shutdown(wait=True)

    async def call(self, function: Callable[[], Result]) -> Result:
        """Run ``function`` in the batch thread (e.g. a warm-up), between batches."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, function)

    def check_room(self, count: int) -> None:
        """Raise :class:`QueueFullError` unless ``count`` more items fit in the queue now."""
        if len(self._pending) + count > self.max_queue:
            raise QueueFullError(len(self._pending), self.max_queue)

    async def submit(self, items: Sequence[Item]) -> list[Result]:
        """The results of ``items``, once the batches holding them have run."""
        if self._worker is None or self._worker.done():
            raise RuntimeError("the batcher is not running (call start() first)")
        self.check_room(len(items))
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        self._pending.extend(zip(items, futures, strict=True))
        self._idle.clear()
        self._arrived.set()
        return list(await asyncio.gather(*futures))

    async def _collect(self) -> list[tuple[Item, asyncio.Future]]:
        loop = asyncio.get_running_loop()
        while not self._pending:
            self._idle.set()
            self._arrived.clear()
            await self._arrived.wait()
        deadline = loop.time() + self.max_wait_s
        while len(self._pending) < self.max_batch and (remaining := deadline - loop.time()) > 0:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:  # TimeoutError from Python 3.11 on
                break
        count = min(self.max_batch, len(self._pending))
        batch = [self._pending.popleft() for _ in range(count)]
        return [(item, future) for item, future in batch if not future.done()]  # done: its request was cancelled

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            if not batch:
                continue
            if self.on_batch is not None:
                self.on_batch(len(batch))
            try:
                results = await loop.run_in_executor(self._executor, self.run, [item for item, _ in batch])
            except Exception as error:  # the model failed: every request in the batch learns why
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
