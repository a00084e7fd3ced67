"""`MemoryBus`: the `Bus` inside one process, with the semantics of Redis Streams.

Streams, consumer groups, pending entries with delivery counts and idle times, reclaim,
dead-letter streams, dedupe and trimming all behave as on Redis, so that code written against
the in-process default runs unchanged on Redis. Ids are "<ms>-<seq>" from the wall clock, as
Redis makes them. Blocking reads park on futures woken by `publish`.

Use it from one event loop at a time (it keeps no locks); it never loses entries, since it keeps
nothing outside the process.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from flowact.bus.base import (
    ConsumerOptions,
    Entry,
    FieldValue,
    Handler,
    RejectHandler,
    dead_letter_fields,
    dead_letter_stream,
    encode_fields,
)
from flowact.bus.consumer import Backoff, GroupMissing, run_consumer

StreamId = tuple[int, int]
MAX_SEQ = 2**64 - 1


def parse_id(text: str, *, end: bool = False) -> StreamId:
    """ "<ms>-<seq>" or "<ms>" (seq 0 as a start, the largest seq as an end)."""
    ms, _, seq = text.partition("-")
    return int(ms), int(seq) if seq else (MAX_SEQ if end else 0)


def format_id(sid: StreamId) -> str:
    return f"{sid[0]}-{sid[1]}"


@dataclass
class _Pending:
    consumer: str
    delivered_at: float  # monotonic seconds of the last delivery or claim
    deliveries: int


@dataclass
class _Group:
    last_delivered: StreamId = (0, 0)
    pending: dict[StreamId, _Pending] = field(default_factory=dict)


@dataclass
class _Stream:
    ids: list[StreamId] = field(default_factory=list)  # ascending
    fields: dict[StreamId, dict[str, bytes]] = field(default_factory=dict)
    last_id: StreamId = (0, 0)
    groups: dict[str, _Group] = field(default_factory=dict)

    def add(self, fields: dict[str, bytes]) -> StreamId:
        ms = max(time.time_ns() // 1_000_000, self.last_id[0])
        sid = (ms, self.last_id[1] + 1) if ms == self.last_id[0] else (ms, 0)
        self.ids.append(sid)
        self.fields[sid] = fields
        self.last_id = sid
        return sid

    def trim(self, maxlen: int) -> None:
        extra = len(self.ids) - maxlen
        if extra > 0:
            for sid in self.ids[:extra]:
                del self.fields[sid]
            del self.ids[:extra]

    def after(self, sid: StreamId, count: int) -> list[StreamId]:
        start = bisect.bisect_right(self.ids, sid)
        return self.ids[start : start + count]

    def entry(self, name: str, sid: StreamId, deliveries: int) -> Entry:
        return Entry(name, format_id(sid), dict(self.fields[sid]), deliveries)


class MemoryBus:
    """The `Bus` in-process. `dedupe_ttl_ms` and `dead_maxlen` as in `RedisStreamsBus`."""

    def __init__(self, *, dedupe_ttl_ms: int = 600_000, dead_maxlen: int | None = 10_000) -> None:
        self.dedupe_ttl_ms = dedupe_ttl_ms
        self.dead_maxlen = dead_maxlen
        self._streams: dict[str, _Stream] = {}
        self._dedupe: dict[tuple[str, str], tuple[str, float]] = {}  # -> (id, expiry)
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._sweep_at = 1024
        self._ops = _MemoryGroupOps(self)

    async def publish(
        self,
        stream: str,
        fields: Mapping[str, FieldValue],
        *,
        dedupe: str | None = None,
        maxlen: int | None = None,
    ) -> str:
        data = encode_fields(fields)
        now = time.monotonic()
        if dedupe is not None:
            known = self._dedupe.get((stream, dedupe))
            if known is not None and known[1] > now:
                return known[0]
        entry_id = self.append(stream, data, maxlen)
        if dedupe is not None:
            self._expire_dedupe(now)
            self._dedupe[(stream, dedupe)] = (entry_id, now + self.dedupe_ttl_ms / 1000)
        return entry_id

    async def consume(
        self,
        streams: Sequence[str],
        options: ConsumerOptions,
        handler: Handler,
        *,
        on_reject: RejectHandler | None = None,
        stop: asyncio.Event | None = None,
    ) -> None:
        await run_consumer(
            self._ops, streams, options, handler, on_reject=on_reject, stop=stop, backoff=Backoff()
        )

    async def read(
        self, stream: str, after: str = "$", *, count: int = 100, block_ms: int = 1000
    ) -> list[Entry]:
        start = self._streams[stream].last_id if after == "$" and stream in self._streams else None
        if start is None:
            start = (0, 0) if after == "$" else parse_id(after)
        deadline = time.monotonic() + block_ms / 1000
        while True:
            s = self._streams.get(stream)
            found = s.after(start, count) if s else []
            if found or not await self.wait([stream], deadline):
                return [s.entry(stream, sid, 0) for sid in found] if s else []

    async def last_id(self, stream: str) -> str:
        s = self._streams.get(stream)
        return format_id(s.last_id) if s is not None else "0-0"

    async def entries(
        self, stream: str, start: str = "-", end: str = "+", count: int | None = None
    ) -> list[Entry]:
        s = self._streams.get(stream)
        if s is None:
            return []
        lo = 0 if start == "-" else _bound(s.ids, start, end=False)
        hi = len(s.ids) if end == "+" else _bound(s.ids, end, end=True)
        chosen = s.ids[lo:hi] if count is None else s.ids[lo:hi][:count]
        return [s.entry(stream, sid, 0) for sid in chosen]

    async def length(self, stream: str) -> int:
        s = self._streams.get(stream)
        return len(s.ids) if s else 0

    async def pending(self, stream: str, group: str) -> int:
        s = self._streams.get(stream)
        g = s.groups.get(group) if s else None
        return len(g.pending) if g else 0

    async def delete(self, streams: Sequence[str]) -> None:
        for stream in streams:
            self._streams.pop(stream, None)

    async def close(self) -> None:
        """Nothing to release: entries live as long as the bus object."""

    # -- internals shared with the group operations -----------------------------------------

    def append(self, stream: str, data: dict[str, bytes], maxlen: int | None) -> str:
        s = self._streams.setdefault(stream, _Stream())
        sid = s.add(data)
        if maxlen:
            s.trim(maxlen)
        for waiter in self._waiters.pop(stream, ()):
            _wake(waiter)
        return format_id(sid)

    def stream(self, name: str, group: str) -> tuple[_Stream, _Group]:
        s = self._streams.get(name)
        g = s.groups.get(group) if s else None
        if s is None or g is None:
            raise GroupMissing(f"no stream {name!r} with group {group!r}")
        return s, g

    async def wait(self, streams: Sequence[str], deadline: float) -> bool:
        """Park until one of `streams` gets an entry or `deadline`; True when woken by one."""
        timeout = deadline - time.monotonic()
        if timeout <= 0:
            return False
        waiter = asyncio.get_running_loop().create_future()
        for stream in streams:
            self._waiters.setdefault(stream, set()).add(waiter)
        try:
            await asyncio.wait_for(waiter, timeout)
            return True
        except asyncio.TimeoutError:
            return False
        finally:
            for stream in streams:
                self._waiters.get(stream, set()).discard(waiter)

    def _expire_dedupe(self, now: float) -> None:
        # Amortized: sweep only when the table has doubled since the last sweep.
        if len(self._dedupe) >= self._sweep_at:
            self._dedupe = {k: v for k, v in self._dedupe.items() if v[1] > now}
            self._sweep_at = max(1024, 2 * len(self._dedupe))


def _wake(waiter: asyncio.Future[None]) -> None:
    if waiter.done():
        return
    loop = waiter.get_loop()
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if loop is running:
        waiter.set_result(None)
    elif not loop.is_closed():
        loop.call_soon_threadsafe(lambda: waiter.done() or waiter.set_result(None))


def _bound(ids: list[StreamId], text: str, *, end: bool) -> int:
    """Slice index for an XRANGE bound; "(" before the id makes it exclusive."""
    exclusive = text.startswith("(")
    sid = parse_id(text[1:] if exclusive else text, end=end and not exclusive)
    if end:
        return bisect.bisect_left(ids, sid) if exclusive else bisect.bisect_right(ids, sid)
    return bisect.bisect_right(ids, sid) if exclusive else bisect.bisect_left(ids, sid)


class _MemoryGroupOps:
    """`GroupOps` on the in-process streams."""

    def __init__(self, bus: MemoryBus) -> None:
        self.bus = bus

    async def ensure_group(self, stream: str, group: str) -> None:
        s = self.bus._streams.setdefault(stream, _Stream())
        s.groups.setdefault(group, _Group())

    async def read_group(
        self, streams: Sequence[str], group: str, consumer: str, count: int, block_ms: int
    ) -> list[Entry]:
        deadline = time.monotonic() + block_ms / 1000
        while True:
            out: list[Entry] = []
            for name in streams:
                s, g = self.bus.stream(name, group)
                now = time.monotonic()
                for sid in s.after(g.last_delivered, count):
                    g.pending[sid] = _Pending(consumer, now, 1)
                    g.last_delivered = sid
                    out.append(s.entry(name, sid, 1))
            if out or not await self.bus.wait(streams, deadline):
                return out

    async def autoclaim(
        self, stream: str, group: str, consumer: str, min_idle_ms: int, cursor: str, count: int
    ) -> tuple[str, list[Entry]]:
        s, g = self.bus.stream(stream, group)
        now = time.monotonic()
        start = parse_id(cursor)
        claimed: list[Entry] = []
        for sid in sorted(p for p in g.pending if p >= start):
            if len(claimed) == count:
                return format_id(sid), claimed
            p = g.pending[sid]
            if (now - p.delivered_at) * 1000 < min_idle_ms:
                continue
            if sid not in s.fields:  # trimmed while pending: Redis drops it from the list
                del g.pending[sid]
                continue
            g.pending[sid] = _Pending(consumer, now, p.deliveries + 1)
            claimed.append(s.entry(stream, sid, p.deliveries + 1))
        return "0-0", claimed

    async def renew(self, entry: Entry, group: str, consumer: str) -> bool:
        _, g = self.bus.stream(entry.stream, group)
        p = g.pending.get(parse_id(entry.id))
        if p is None or p.consumer != consumer:
            return False
        p.delivered_at = time.monotonic()
        return True

    async def ack(self, entry: Entry, group: str) -> None:
        s = self.bus._streams.get(entry.stream)
        g = s.groups.get(group) if s else None
        if g is not None:
            g.pending.pop(parse_id(entry.id), None)

    async def dead_letter(
        self, entry: Entry, group: str, reason: str, field: str | None, error: str | None
    ) -> None:
        fields = dead_letter_fields(entry, reason, field, error)
        self.bus.append(dead_letter_stream(entry.stream), fields, self.bus.dead_maxlen)
        await self.ack(entry, group)
