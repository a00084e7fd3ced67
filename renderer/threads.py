"""The threads a renderer worker runs its sessions' GPU work on, each primed before it serves.

A session's forward and decode run in threads beside the event loop. PyTorch keeps cuDNN's conv
plans per thread, so a thread that has never run the VAE plans (and with `cudnn.benchmark`,
times) every one of its convs on its first decode. On an H200, 8 `demo` sessions in one worker
on the loop's default executor waited 11 to 12 s for their first chunks, and stalled again each
time a decode met a thread it had not run on. A `PrimedPool` has a fixed set of threads, and
every one of them has run `prime` (a session's convs, `SessionRenderer.prime`) before it takes
work.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import structlog

log = structlog.get_logger(__name__)

T = TypeVar("T")

PRIME_TIMEOUT_S = 600.0


class PrimedPool:
    """`threads` threads; with `prime`, each has run it once before the pool takes any work."""

    def __init__(
        self, threads: int, prime: Callable[[], None] | None = None, name: str = "renderer"
    ) -> None:
        if threads < 1:
            raise ValueError(f"a pool needs at least one thread, got {threads}")
        self.threads = threads
        self._pool = ThreadPoolExecutor(threads, name)
        self.prime_s = self._prime(prime) if prime is not None else 0.0

    def _prime(self, prime: Callable[[], None]) -> float:
        """Run `prime` on every thread: each task waits at a barrier until all have started,
        so no thread can take a second one and the pool starts all of its threads."""
        started = time.perf_counter()
        barrier = threading.Barrier(self.threads)

        def task() -> None:
            barrier.wait(timeout=PRIME_TIMEOUT_S)
            prime()

        futures = [self._pool.submit(task) for _ in range(self.threads)]
        try:
            for future in futures:
                future.result()
        except BaseException:
            barrier.abort()  # the others stop waiting for a thread that will not come
            self._pool.shutdown(wait=True, cancel_futures=True)
            raise
        seconds = time.perf_counter() - started
        log.info("renderer threads primed", threads=self.threads, seconds=round(seconds, 2))
        return seconds

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """`fn(*args)` on one of the pool's threads, as `asyncio.to_thread` runs it."""
        loop = asyncio.get_running_loop()
        call = functools.partial(contextvars.copy_context().run, fn, *args)
        return await loop.run_in_executor(self._pool, call)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
