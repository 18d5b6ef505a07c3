"""Micro-batching: requests that arrive close together share one model call.

Each request puts one preprocessed image on an asyncio queue and awaits its own future. One task takes
the first waiting image, then keeps taking more until it holds ``max_batch`` or ``max_wait_ms`` have passed
since the first, stacks them and runs the model once in the inference thread; each future gets its row.
A request that gave up (its timeout passed) is dropped from the batch it would have joined.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from dataclasses import dataclass

import torch


class Overloaded(Exception):
    """The queue is full: the server is answering as many images as it can hold."""


@dataclass
class _Item:
    image: torch.Tensor
    future: asyncio.Future[torch.Tensor]


_STOP = object()


class MicroBatcher:
    """Collects single images into batches for ``run`` (a batch (N, C, H, W) → (N, classes) function)."""

    def __init__(
        self, run: Callable[[torch.Tensor], torch.Tensor], executor: concurrent.futures.Executor, *,
        max_batch: int = 8, max_wait_ms: float = 5.0, max_queue: int = 1024,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be ≥ 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be ≥ 0, got {max_wait_ms}")
        self.run, self.executor = run, executor
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1000.0
        self.on_batch = on_batch
        self.queue: asyncio.Queue[_Item | object] = asyncio.Queue(max_queue)
        self._getter: asyncio.Future[_Item | object] | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """Answer what is queued, then end the batching task."""
        if self._task is None:
            return
        await self.queue.put(_STOP)
        await self._task
        self._task = None

    async def submit(self, image: torch.Tensor) -> torch.Tensor:
        """The model's output row for one image (C, H, W), computed in some batch."""
        future: asyncio.Future[torch.Tensor] = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait(_Item(image, future))
        except asyncio.QueueFull:
            raise Overloaded(f"{self.queue.maxsize} images are waiting already") from None
        return await future

    async def _next(self, timeout: float | None) -> _Item | object | None:
        """The next queued entry, or None when ``timeout`` passes first. The pending get is kept for the next
        call rather than cancelled, so no entry is ever lost between a timeout and its arrival."""
        if self._getter is None:
            self._getter = asyncio.ensure_future(self.queue.get())
        done, _ = await asyncio.wait({self._getter}, timeout=timeout)
        if not done:
            return None
        item, self._getter = self._getter.result(), None
        return item

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        stopping = False
        while not stopping:
            first = await self._next(None)
            if first is _STOP:
                break
            items = [first]
            deadline = loop.time() + self.max_wait
            while len(items) < self.max_batch:
                remaining = deadline - loop.time()
                entry = await self._next(remaining) if remaining > 0 else None
                if entry is None:
                    break
                if entry is _STOP:
                    stopping = True
                    break
                items.append(entry)
            await self._run([it for it in items if isinstance(it, _Item) and not it.future.done()])

    async def _run(self, items: list[_Item]) -> None:
        if not items:
            return
        if self.on_batch is not None:
            self.on_batch(len(items))
        batch = torch.stack([it.image for it in items])
        try:
            out = await asyncio.get_running_loop().run_in_executor(self.executor, self.run, batch)
        except Exception as err:  # every waiting request learns of it; the loop goes on
            for it in items:
                if not it.future.done():
                    it.future.set_exception(err)
            return
        for i, it in enumerate(items):
            if not it.future.done():
                it.future.set_result(out[i])
