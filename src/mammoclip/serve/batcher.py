"""Micro-batching: image requests that arrive within a few milliseconds share one forward pass.

One asyncio task takes the first queued item, waits at most ``max_wait_ms`` for up to
``max_size - 1`` more, and runs the batch on the model thread (a single-thread executor, so torch
never runs two forward passes at once and the event loop never blocks). Each caller awaits its own
future. A caller that gave up (timeout, disconnect) has its future cancelled: it is skipped, not
computed. :meth:`MicroBatcher.close` drains what is queued before it returns, so a graceful shutdown
finishes the requests already accepted.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class _Item:
    tensor: torch.Tensor  # (1, C, H, W)
    future: asyncio.Future[torch.Tensor]


class MicroBatcher:
    """Collects ``(1, C, H, W)`` inputs into batches for ``forward(batch) -> (B, ...)``.

    Args:
        forward: Runs on the model thread; takes ``(B, C, H, W)`` and returns one row per input.
        executor: The model thread.
        max_size: Largest batch (1: every request alone).
        max_wait_ms: How long the first item waits for others.
        on_batch: Called with each batch's size (metrics).
    """

    def __init__(self, forward: Callable[[torch.Tensor], torch.Tensor], executor: concurrent.futures.Executor, *,
                 max_size: int, max_wait_ms: float, on_batch: Callable[[int], None] | None = None) -> None:
        self.forward = forward
        self.executor = executor
        self.max_size = max_size
        self.max_wait = max_wait_ms / 1000.0
        self.on_batch = on_batch
        self.queue: asyncio.Queue[_Item | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def depth(self) -> int:
        """Items waiting for a forward pass."""
        return self.queue.qsize()

    def start(self) -> None:
        if self._task is None:
            self._closing = False
            self._task = asyncio.get_running_loop().create_task(self._run(), name="mammoclip-batcher")

    async def submit(self, tensor: torch.Tensor) -> torch.Tensor:
        """The model's output row for one ``(1, C, H, W)`` input."""
        if self._task is None or self._task.done() or self._closing:
            raise RuntimeError("the batcher is not running (server starting or shutting down)")
        future: asyncio.Future[torch.Tensor] = asyncio.get_running_loop().create_future()
        await self.queue.put(_Item(tensor, future))
        return await future

    async def close(self) -> None:
        """Finish every queued item, then stop; :meth:`submit` refuses new items from now on."""
        if self._task is None:
            return
        self._closing = True
        await self.queue.put(None)
        await self._task
        self._task = None

    async def _collect(self, first: _Item) -> tuple[list[_Item], bool]:
        """``first`` plus whatever arrives within the wait; True when the stop marker was seen."""
        items = [first]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
        while len(items) < self.max_size:
            try:
                nxt = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    nxt = await asyncio.wait_for(self.queue.get(), left)
                except asyncio.TimeoutError:
                    break
            if nxt is None:
                return items, True
            items.append(nxt)
        return items, False

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        stop = False
        while not stop:
            first = await self.queue.get()
            if first is None:  # the queue is FIFO: everything submitted before close() was answered
                break
            items, stop = await self._collect(first)
            live = [i for i in items if not i.future.done()]
            if not live:
                continue
            batch = torch.cat([i.tensor for i in live])  # (B, C, H, W)
            try:
                out = await loop.run_in_executor(self.executor, self.forward, batch)
            except Exception as err:  # noqa: BLE001 - every waiter gets the error, the loop goes on
                for item in live:
                    if not item.future.done():
                        item.future.set_exception(err)
                continue
            if self.on_batch is not None:
                self.on_batch(len(live))
            for row, item in zip(out, live, strict=True):
                if not item.future.done():
                    item.future.set_result(row)


def run_on(executor: concurrent.futures.Executor, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
    """``fn(*args)`` on ``executor`` (the model thread), awaitable from the event loop."""
    return asyncio.get_running_loop().run_in_executor(executor, fn, *args)
