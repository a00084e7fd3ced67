"""Batch the DiT forwards of concurrent sessions into one forward.

Every session of a worker runs its own render loop and calls its buffer forward from its own
thread. A `ForwardBatcher` gives each session a `BatchClient` with the model's signature; a call
blocks until one batched forward that includes it has run on the batcher's thread. Sessions of
one preset have the same buffer shape, so their inputs stack along the batch axis and the
forward is the same function on a larger batch (batch items never mix in the model).

When a forward runs (the scheduling rule, `ready_batch`):

- every live client is waiting: run now (a single session never waits);
- `max_batch` calls wait: run that many now;
- the oldest call has waited `max_wait_s`: run what is there (a session that is slow to come
  back, paced or starved of a thread, costs the others at most that);

and only calls with the same shapes, context length and guidance presence share a forward (a
memory-refinement forward has fewer frames than a buffer forward).
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import structlog
import torch
from torch import Tensor

from flowact.renderer.stream import ForwardFn

log = structlog.get_logger(__name__)


@dataclass(eq=False)
class ForwardCall:
    """One session's forward, waiting for its batch."""

    tensors: tuple[Tensor, ...]  # x, t, audio, text, text_mask; each [B, ...]
    n_context: int
    guidance: Tensor | None  # [B] or None
    arrived: float
    done: threading.Event = field(default_factory=threading.Event)
    result: Tensor | None = None
    error: BaseException | None = None

    @property
    def key(self) -> tuple:
        shapes = tuple((tuple(t.shape[1:]), t.dtype) for t in self.tensors)
        return shapes, self.n_context, self.guidance is None

    @property
    def size(self) -> int:
        return self.tensors[0].shape[0]


def ready_batch(
    waiting: Sequence[ForwardCall], live_clients: int, now: float, max_batch: int, max_wait_s: float
) -> tuple[list[ForwardCall], float | None]:
    """The scheduling rule: the calls to run now (oldest first, one key), or none and how long
    to wait before asking again (None: until the next call arrives)."""
    if not waiting:
        return [], None
    oldest = waiting[0]
    group = [c for c in waiting if c.key == oldest.key]
    if len(group) >= max_batch:
        return group[:max_batch], None
    if len(waiting) >= live_clients or now - oldest.arrived >= max_wait_s:
        return group, None
    return [], oldest.arrived + max_wait_s - now


def stack_calls(calls: Sequence[ForwardCall]) -> tuple[tuple[Tensor, ...], Tensor | None]:
    """The calls' inputs concatenated along the batch axis (guidance too, where given)."""
    tensors = tuple(torch.cat(parts) for parts in zip(*(c.tensors for c in calls), strict=True))
    guidance = None if calls[0].guidance is None else torch.cat([c.guidance for c in calls])
    return tensors, guidance


@dataclass
class BatchStats:
    forwards: int = 0
    calls: int = 0
    sizes: Counter[int] = field(default_factory=Counter)  # forwards by batch size

    @property
    def mean_batch(self) -> float:
        return self.calls / self.forwards if self.forwards else 0.0


class ForwardBatcher:
    """Runs `forward` (the model, or a CUDA-graph runner) on batches of its clients' calls."""

    def __init__(
        self,
        forward: ForwardFn,
        *,
        max_batch: int = 64,
        max_wait_s: float = 0.02,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_batch < 1 or max_wait_s < 0:
            raise ValueError("max_batch must be positive and max_wait_s not negative")
        self.forward = forward
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.clock = clock
        self.stats = BatchStats()
        self._clients: weakref.WeakSet[BatchClient] = weakref.WeakSet()
        self._waiting: list[ForwardCall] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    def client(self) -> BatchClient:
        """A forward callable for one session; it counts as live until closed or collected."""
        client = BatchClient(self)
        with self._cond:
            self._clients.add(client)
        weakref.finalize(client, self._wake)
        return client

    @property
    def live_clients(self) -> int:
        return len(self._clients)

    def close(self) -> None:
        """Stop the batcher's thread; waiting and later calls fail."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()

    # -- called from the sessions' threads

    def submit(
        self, tensors: tuple[Tensor, ...], n_context: int, guidance: Tensor | None
    ) -> Tensor:
        call = ForwardCall(tensors, n_context, guidance, self.clock())
        with self._cond:
            if self._closed:
                raise RuntimeError("the forward batcher is closed")
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="forward-batcher", daemon=True
                )
                self._thread.start()
            self._waiting.append(call)
            self._cond.notify_all()
        call.done.wait()
        if call.error is not None:
            raise call.error
        assert call.result is not None
        return call.result

    def _remove(self, client: BatchClient) -> None:
        with self._cond:
            self._clients.discard(client)
            self._cond.notify_all()

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    # -- the batcher's thread

    def _loop(self) -> None:
        while True:
            with self._cond:
                batch = self._next_batch()
                if batch is None:
                    return
            self._run(batch)

    def _next_batch(self) -> list[ForwardCall] | None:
        """Block (holding the condition) until a batch is ready; None once closed."""
        while True:
            if self._closed:
                for call in self._waiting:
                    call.error = RuntimeError("the forward batcher is closed")
                    call.done.set()
                self._waiting.clear()
                return None
            batch, wait = ready_batch(
                self._waiting, len(self._clients), self.clock(), self.max_batch, self.max_wait_s
            )
            if batch:
                taken = {id(c) for c in batch}
                self._waiting = [c for c in self._waiting if id(c) not in taken]
                return batch
            self._cond.wait(timeout=wait)

    def _run(self, batch: list[ForwardCall]) -> None:
        try:
            with torch.inference_mode():
                tensors, guidance = stack_calls(batch)
                out = self.forward(*tensors, batch[0].n_context, guidance=guidance)
            start = 0
            for call in batch:
                call.result = out[start : start + call.size]
                start += call.size
        except BaseException as err:  # every waiting session gets the error, none hangs
            log.exception("batched forward failed", size=len(batch))
            for call in batch:
                call.error = err
        self.stats.forwards += 1
        self.stats.calls += len(batch)
        self.stats.sizes[sum(c.size for c in batch)] += 1
        for call in batch:
            call.done.set()


class BatchClient:
    """One session's handle on a `ForwardBatcher`, called like the model."""

    def __init__(self, batcher: ForwardBatcher) -> None:
        self._batcher = batcher

    def __call__(
        self,
        x: Tensor,
        t: Tensor,
        audio: Tensor,
        text: Tensor,
        text_mask: Tensor,
        n_context: int,
        guidance: Tensor | None = None,
    ) -> Tensor:
        return self._batcher.submit((x, t, audio, text, text_mask), n_context, guidance)

    def close(self) -> None:
        """No longer live: the batcher stops waiting for this session."""
        self._batcher._remove(self)
