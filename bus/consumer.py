"""The consumer-group loop, written once over a few stream primitives.

`RedisStreamsBus` and `MemoryBus` implement `GroupOps`; `run_consumer` gives both the same
semantics: read new entries, handle one at a time, acknowledge after success, dead-letter
rejected and exhausted entries, reclaim what others (or this consumer) left pending, renew the
claim of a long handler, and ride out transport failures with capped, jittered backoff.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import structlog

from flowact.bus.base import (
    DELIVERY_LIMIT,
    ConsumerOptions,
    Entry,
    Handler,
    Rejected,
    RejectHandler,
)

log = structlog.get_logger(__name__)
T = TypeVar("T")


class TransportError(Exception):
    """The connection to the bus failed; the same call may succeed later."""


class GroupMissing(Exception):
    """The consumer group (or its stream) vanished, e.g. a server restarted without its data."""


class GroupOps(Protocol):
    """Stream primitives the loop needs. Errors: `TransportError`, `GroupMissing`."""

    async def ensure_group(self, stream: str, group: str) -> None:
        """Create `group` on `stream` (and the stream) at id 0 unless it exists."""
        ...

    async def read_group(
        self, streams: Sequence[str], group: str, consumer: str, count: int, block_ms: int
    ) -> list[Entry]:
        """New entries (never delivered to the group), up to `count` per stream."""
        ...

    async def autoclaim(
        self, stream: str, group: str, consumer: str, min_idle_ms: int, cursor: str, count: int
    ) -> tuple[str, list[Entry]]:
        """Claim entries pending longer than `min_idle_ms`; the next cursor ("0-0": done)."""
        ...

    async def renew(self, entry: Entry, group: str, consumer: str) -> bool:
        """Reset the idle time of an entry this consumer holds; False when it lost it."""
        ...

    async def ack(self, entry: Entry, group: str) -> None: ...

    async def dead_letter(
        self, entry: Entry, group: str, reason: str, field: str | None, error: str | None
    ) -> None:
        """Copy the entry to its dead-letter stream and acknowledge it, atomically."""
        ...


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff, capped, with jitter so that many clients do not retry in step."""

    base_s: float = 0.05
    cap_s: float = 2.0

    def delay(self, attempt: int) -> float:
        ceiling = min(self.cap_s, self.base_s * 2 ** min(attempt, 30))
        return random.uniform(ceiling / 2, ceiling)


async def run_consumer(
    ops: GroupOps,
    streams: Sequence[str],
    options: ConsumerOptions,
    handler: Handler,
    *,
    on_reject: RejectHandler | None,
    stop: asyncio.Event | None,
    backoff: Backoff,
) -> None:
    """The loop behind `Bus.consume` (see its contract in `flowact.bus.base`)."""
    if not streams:
        raise ValueError("consume needs at least one stream")
    loop = _ConsumerLoop(ops, list(streams), options, handler, on_reject, backoff)
    await loop.run(stop)


class _ConsumerLoop:
    def __init__(
        self,
        ops: GroupOps,
        streams: list[str],
        options: ConsumerOptions,
        handler: Handler,
        on_reject: RejectHandler | None,
        backoff: Backoff,
    ) -> None:
        self.ops = ops
        self.streams = streams
        self.opt = options
        self.handler = handler
        self.on_reject = on_reject
        self.backoff = backoff
        self.log = log.bind(group=options.group, consumer=options.consumer)
        self.groups_ready = False
        self.next_reclaim = 0.0  # monotonic seconds; 0 runs a pass at once

    async def run(self, stop: asyncio.Event | None) -> None:
        failures = missing = 0
        while not (stop and stop.is_set()):
            try:
                await self._step(stop)
                if failures:
                    self.log.info("bus.consumer.reconnected", after_failures=failures)
                failures = missing = 0
            except GroupMissing:
                self.log.warning("bus.consumer.group_missing", streams=self.streams)
                self.groups_ready = False
                missing += 1
                if missing > 1:  # recreating did not help at once: do not spin
                    await _sleep_or_stop(self.backoff.delay(missing - 2), stop)
            except TransportError as exc:
                delay = self.backoff.delay(failures)
                failures += 1
                self.groups_ready = False  # the server may have restarted without its data
                self.log.warning(
                    "bus.consumer.transport_error", error=str(exc), retry_in_s=round(delay, 3)
                )
                await _sleep_or_stop(delay, stop)

    async def _step(self, stop: asyncio.Event | None) -> None:
        if not self.groups_ready:
            for stream in self.streams:
                await self.ops.ensure_group(stream, self.opt.group)
            self.groups_ready = True
        now = time.monotonic()
        if now >= self.next_reclaim:
            await self._reclaim(stop)
            self.next_reclaim = time.monotonic() + self.opt.reclaim_every_ms / 1000
        # Wake up for the next reclaim pass even when nothing arrives.
        until_reclaim_ms = max(1, int((self.next_reclaim - time.monotonic()) * 1000))
        block_ms = min(self.opt.block_ms, until_reclaim_ms)
        entries = await _unless_stopped(
            self.ops.read_group(
                self.streams, self.opt.group, self.opt.consumer, self.opt.batch, block_ms
            ),
            stop,
        )
        await self._process_batch(entries or [], time.monotonic(), stop)

    async def _reclaim(self, stop: asyncio.Event | None) -> None:
        for stream in self.streams:
            cursor = "0-0"
            while not (stop and stop.is_set()):
                cursor, entries = await self.ops.autoclaim(
                    stream,
                    self.opt.group,
                    self.opt.consumer,
                    self.opt.claim_idle_ms,
                    cursor,
                    self.opt.batch,
                )
                if entries:
                    self.log.info("bus.consumer.reclaimed", stream=stream, count=len(entries))
                await self._process_batch(entries, time.monotonic(), stop)
                if cursor == "0-0":
                    break

    async def _process_batch(
        self, entries: list[Entry], taken_at: float, stop: asyncio.Event | None
    ) -> None:
        renew_after = self.opt.claim_idle_ms / 3000
        for entry in entries:
            if stop and stop.is_set():
                return  # the rest stay pending and are reclaimed after claim_idle_ms
            # Entries wait in the batch while earlier ones are handled; once they have waited
            # long enough to look abandoned, confirm they are still ours before handling them.
            if time.monotonic() - taken_at > renew_after:
                if not await self.ops.renew(entry, self.opt.group, self.opt.consumer):
                    self.log.info("bus.consumer.skip_taken", stream=entry.stream, id=entry.id)
                    continue
            await self._process(entry)

    async def _process(self, entry: Entry) -> None:
        if entry.deliveries > self.opt.max_deliveries:
            await self._dead(entry, Rejected(DELIVERY_LIMIT), error=None)
            return
        try:
            await self._handle_with_lease(entry)
        except Rejected as rejected:
            await self._dead(entry, rejected, error=None)
            return
        except Exception as exc:  # the handler's failure, not ours: retry later
            self.log.warning(
                "bus.consumer.handler_failed",
                stream=entry.stream,
                id=entry.id,
                deliveries=entry.deliveries,
                error=repr(exc),
                exc_info=True,
            )
            if entry.deliveries >= self.opt.max_deliveries:
                await self._dead(entry, Rejected(DELIVERY_LIMIT), error=repr(exc))
            return
        await self.ops.ack(entry, self.opt.group)

    async def _handle_with_lease(self, entry: Entry) -> None:
        # Most handlers finish long before a renewal is due, so the renewal task is only
        # started by a timer that fires after the first renewal interval.
        interval = self.opt.claim_idle_ms / 3000
        renewer: list[asyncio.Task[None]] = []
        timer = asyncio.get_running_loop().call_later(
            interval, lambda: renewer.append(asyncio.create_task(self._renew(entry, interval)))
        )
        try:
            await self.handler(entry)
        finally:
            timer.cancel()
            for task in renewer:
                task.cancel()

    async def _renew(self, entry: Entry, interval: float) -> None:
        while True:
            try:
                if not await self.ops.renew(entry, self.opt.group, self.opt.consumer):
                    self.log.warning("bus.consumer.claim_lost", stream=entry.stream, id=entry.id)
                    return
            except (TransportError, GroupMissing) as exc:
                self.log.warning("bus.consumer.renew_failed", id=entry.id, error=str(exc))
            await asyncio.sleep(interval)

    async def _dead(self, entry: Entry, rejected: Rejected, error: str | None) -> None:
        await self.ops.dead_letter(entry, self.opt.group, rejected.reason, rejected.field, error)
        self.log.info(
            "bus.consumer.dead_lettered",
            stream=entry.stream,
            id=entry.id,
            reason=rejected.reason,
            field=rejected.field,
            deliveries=entry.deliveries,
        )
        if self.on_reject is None:
            return
        try:
            await self.on_reject(entry, rejected)
        except Exception:
            self.log.exception("bus.consumer.on_reject_failed", stream=entry.stream, id=entry.id)


async def _unless_stopped(coro: Awaitable[T], stop: asyncio.Event | None) -> T | None:
    """Await `coro` unless `stop` is set first; then cancel it and return None."""
    if stop is None:
        return await coro
    read = asyncio.ensure_future(coro)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({read, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not read.done():
            read.cancel()
            await asyncio.wait({read})  # let it unwind (it may still finish with entries)
    if read.cancelled():
        return None
    return read.result()


async def _sleep_or_stop(seconds: float, stop: asyncio.Event | None) -> None:
    if stop is None:
        await asyncio.sleep(seconds)
        return
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except asyncio.TimeoutError:
        pass
