"""The state every route shares (one :class:`Service` per app), and the dependencies that hand it out.

Two bounded thread pools do the blocking work: one inference thread (model calls never run concurrently;
the micro-batcher feeds it) and a few decoding threads (an upload is decoded and preprocessed in one hop).
Decoding gets threads of its own rather than the event loop's default pool of up to 40: a photo of a few
megapixels needs tens of MB while it is decoded, which the C allocator keeps per thread for reuse, so the
memory a server holds grows with the number of threads that ever decoded one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, FastAPI, Request
from PIL import Image

from ..data.images import EMPTY, TOO_LARGE, UnreadableImage, decode_image
from .backends import Backend
from .batcher import MicroBatcher, Overloaded
from .handlers import RequestError
from .metrics import Metrics

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

MAX_BYTES = 20 * 1024 * 1024
TOP_K_MAX = 1000  # the most classes a request may ask for (fewer when the model has fewer)


@dataclass(frozen=True)
class ServeOptions:
    """How the service batches and what it accepts. ``decode_threads``: threads decoding uploads (0: one
    per CPU core this process may use, at most 4)."""

    max_batch: int = 8
    max_wait_ms: float = 5.0
    max_bytes: int = MAX_BYTES
    timeout_s: float = 30.0
    top_k: int = 5
    max_queue: int = 1024
    decode_threads: int = 0

    def problems(self) -> list[str]:
        """What is out of range, as ``name ≥ bound`` phrases (empty when all is well)."""
        checks = {"max_batch ≥ 1": self.max_batch >= 1, "max_wait_ms ≥ 0": self.max_wait_ms >= 0,
                  "max_bytes ≥ 1": self.max_bytes >= 1, "timeout_s > 0": self.timeout_s > 0,
                  f"1 ≤ top_k ≤ {TOP_K_MAX}": 1 <= self.top_k <= TOP_K_MAX, "max_queue ≥ 1": self.max_queue >= 1,
                  "decode_threads ≥ 0": self.decode_threads >= 0}
        return [rule for rule, ok in checks.items() if not ok]


def _decode_threads(asked: int) -> int:
    if asked > 0:
        return asked
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(4, cores))


def decode(data: bytes, channels: int) -> Image.Image:
    """Bytes → image, or the :class:`RequestError` that says why not (same reasons as the data package)."""
    try:
        return decode_image(data, channels, name="upload")
    except UnreadableImage as err:
        kind = err.reason.replace(" ", "_")
        if err.reason == EMPTY:
            raise RequestError(400, "empty", "the request carries no image bytes") from None
        status = 413 if err.reason == TOO_LARGE else 400
        detail = f" ({err.detail})" if err.detail else ""
        raise RequestError(status, kind, f"the upload is unusable: {err.reason}{detail}") from None


class Service:
    """What the routes share: the backend, the options, the metrics, the thread pools and, while the server
    runs, the micro-batcher feeding the model."""

    def __init__(self, served: Backend, opts: ServeOptions, transform: Callable[[Any], torch.Tensor]) -> None:
        self.served, self.opts, self.transform = served, opts, transform
        self.metrics = Metrics()
        self.executor, self.decoders = self._pools()
        self.batcher: MicroBatcher | None = None
        self.ready = False

    def _pools(self) -> tuple[concurrent.futures.ThreadPoolExecutor, concurrent.futures.ThreadPoolExecutor]:
        """The inference thread and the decoding threads (started on first use)."""
        return (concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="xception-infer"),
                concurrent.futures.ThreadPoolExecutor(_decode_threads(self.opts.decode_threads),
                                                      thread_name_prefix="xception-decode"))

    async def warm_up(self) -> None:
        loop = asyncio.get_running_loop()
        sizes = tuple(sorted({1, self.opts.max_batch}))
        try:
            await loop.run_in_executor(self.executor, self.served.warm_up, sizes)
        except Exception:  # the service still answers; /readyz stays 503 and says so in the log
            log.exception("warming up failed")
            return
        self.ready = True
        log.info("ready: %s", self.served.describe())

    @asynccontextmanager
    async def lifespan(self, _: FastAPI) -> AsyncIterator[None]:
        """The batcher and the warm-up run while the server does."""
        opts = self.opts
        batcher = MicroBatcher(self.served.run, self.executor, max_batch=opts.max_batch, max_wait_ms=opts.max_wait_ms,
                               max_queue=opts.max_queue, on_batch=self.metrics.batch)
        batcher.start()
        self.batcher = batcher
        warming = asyncio.get_running_loop().create_task(self.warm_up())
        try:
            yield
        finally:
            warming.cancel()
            await batcher.stop()  # uvicorn has finished the requests in flight by now
            self.batcher = None
            self.ready = False
            self.executor.shutdown(wait=True)
            self.decoders.shutdown(wait=True)
            self.executor, self.decoders = self._pools()  # the app may be started again
            self.metrics.close()

    async def image(self, data: bytes) -> Image.Image:
        """The upload decoded (in a decoding thread)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.decoders, decode, data, self.served.preprocessing.channels)

    async def tensor(self, data: bytes) -> torch.Tensor:
        """The upload decoded and preprocessed for the model, in one hop to a decoding thread."""
        def prepare() -> torch.Tensor:
            return self.transform(decode(data, self.served.preprocessing.channels))

        return await asyncio.get_running_loop().run_in_executor(self.decoders, prepare)

    def top_k(self, asked: int | None) -> int:
        """The classes to return: as asked (default: the options'), at most as many as the model has."""
        return min(asked or self.opts.top_k, len(self.served.class_names))

    async def within_deadline(self, work: Awaitable[Any]) -> Any:
        timeout_s = self.opts.timeout_s
        try:
            return await asyncio.wait_for(work, timeout_s)
        except TimeoutError:
            raise RequestError(504, "timeout", f"no answer within {timeout_s:g} s; try again later") from None
        except Overloaded as err:
            raise RequestError(503, "overloaded", f"the server is busy ({err}); try again later") from None


def get_service(request: Request) -> Service:
    """Dependency: the app's service."""
    service: Service = request.app.state.service
    return service


ServiceDep = Annotated[Service, Depends(get_service)]
