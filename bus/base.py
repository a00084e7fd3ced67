"""The `Bus` role: flat field maps moved over append-only streams, with consumer groups.

The bus never knows what a message means. A message is a flat map of field names to bytes
(`Entry.fields`); the schemas codec turns messages into fields and back. Two implementations keep
one contract: `RedisStreamsBus` (Redis Streams) and `MemoryBus` (in-process, same semantics).

Delivery is at least once. A handler may see an entry again after a crash or a transient error,
so handlers are idempotent or deduplicate on a producer id carried in the fields.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

FieldValue = bytes | str | int | float

DEAD_SUFFIX = ":dead"
DELIVERY_LIMIT = "delivery limit"


@dataclass(frozen=True)
class Entry:
    """One stream entry.

    `id` is the stream id ("<ms>-<seq>"). `deliveries` counts how many times the consumer group
    handed this entry out, this delivery included (1 on first delivery); 0 for entries read
    without a group (`Bus.read`, `Bus.entries`).
    """

    stream: str
    id: str
    fields: dict[str, bytes]
    deliveries: int


class Rejected(Exception):
    """Raised by a handler for input that can never succeed (a validation error).

    The consumer acknowledges the entry, copies it to the dead-letter stream and calls
    `on_reject`; it is not retried. `field` names the offending field when one is to blame.
    """

    def __init__(self, reason: str, field: str | None = None) -> None:
        super().__init__(f"{field}: {reason}" if field else reason)
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class ConsumerOptions:
    """How one consumer reads a set of streams as a member of a consumer group.

    Times are milliseconds. `block_ms` is the longest a read waits for new entries (it must stay
    below the client's socket timeout). `batch` is how many entries one read takes per stream.
    A handler sees an entry at most `max_deliveries` times; then it is dead-lettered with reason
    "delivery limit". Entries pending longer than `claim_idle_ms` (their consumer died or their
    handler failed) are reclaimed by a pass that runs every `reclaim_every_ms`; a running handler
    renews its claim every `claim_idle_ms / 3` so nobody reclaims it while it works.
    """

    group: str
    consumer: str
    block_ms: int = 1000
    batch: int = 64
    max_deliveries: int = 5
    claim_idle_ms: int = 30_000
    reclaim_every_ms: int = 5_000

    def __post_init__(self) -> None:
        if not self.group or not self.consumer:
            raise ValueError("ConsumerOptions needs a group and a consumer name")
        for name in ("block_ms", "batch", "max_deliveries", "claim_idle_ms", "reclaim_every_ms"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ConsumerOptions.{name} must be positive")


Handler = Callable[[Entry], Awaitable[None]]
RejectHandler = Callable[[Entry, Rejected], Awaitable[None]]


@runtime_checkable
class Bus(Protocol):
    """Streams of flat entries with consumer groups. Delivery is at least once.

    Stream names are opaque strings (FlowAct uses `flowact:{sid}:audio` and friends). Entry ids
    are strings "<ms>-<seq>", increasing within a stream.
    """

    async def publish(
        self,
        stream: str,
        fields: Mapping[str, FieldValue],
        *,
        dedupe: str | None = None,
        maxlen: int | None = None,
    ) -> str:
        """Append one entry; return its id.

        Values are stored as bytes: str as UTF-8, int and float as their decimal text. With
        `dedupe` (a producer id such as f"{session}:{seq}"), a publish that repeats a key already
        used on this stream within the dedupe TTL adds nothing and returns the first id; the
        check and the append are atomic. `maxlen` trims the stream to about that many entries
        (approximately: the stream may keep somewhat more), as video streams do.
        """
        ...

    async def consume(
        self,
        streams: Sequence[str],
        options: ConsumerOptions,
        handler: Handler,
        *,
        on_reject: RejectHandler | None = None,
        stop: asyncio.Event | None = None,
    ) -> None:
        """Consume `streams` as `options.consumer` in `options.group` until `stop` or cancel.

        Groups are created if missing, starting at the stream's beginning, so entries published
        before the group existed are read. Entries are handled one at a time, in stream order per
        stream; an entry is acknowledged only after `handler` returned. `Rejected` from the
        handler: acknowledge, dead-letter, `on_reject(entry, rejected)`. Any other exception: log
        it and leave the entry pending, to be retried by the reclaim pass after `claim_idle_ms`.
        The reclaim pass also takes over entries that a dead consumer left pending. After
        `max_deliveries` the entry is dead-lettered with reason "delivery limit" and `on_reject`
        gets a `Rejected` with that reason. Transport failures are retried with backoff; the
        loop survives a restart of the server. Returns when `stop` is set.
        """
        ...

    async def read(
        self, stream: str, after: str = "$", *, count: int = 100, block_ms: int = 1000
    ) -> list[Entry]:
        """Entries with ids after `after`, without a group (tails, viewers); [] on timeout.

        `after="$"` means entries added after the call. Waits up to `block_ms` for the first
        entry; `block_ms=0` returns at once. A loop that reads in turns must not pass "$" on
        every turn (entries added between two calls would be lost): it starts from
        `last_id(stream)` and goes on from the last entry it got.
        """
        ...

    async def last_id(self, stream: str) -> str:
        """Id of the stream's newest entry; "0-0" when it is empty or does not exist."""
        ...

    async def entries(
        self, stream: str, start: str = "-", end: str = "+", count: int | None = None
    ) -> list[Entry]:
        """Entries with start <= id <= end, oldest first ("(" before an id excludes it)."""
        ...

    async def length(self, stream: str) -> int:
        """Number of entries the stream holds now (0 when it does not exist)."""
        ...

    async def pending(self, stream: str, group: str) -> int:
        """Entries delivered to `group` and not acknowledged yet (0 without such a group)."""
        ...

    async def delete(self, streams: Sequence[str]) -> None:
        """Delete streams with their groups and pending lists (session cleanup)."""
        ...

    async def close(self) -> None:
        """Release connections. Consumers should be stopped first."""
        ...


def dead_letter_stream(stream: str) -> str:
    """The stream that receives entries of `stream` that could not be handled."""
    return f"{stream}{DEAD_SUFFIX}"


def dead_letter_fields(
    entry: Entry, reason: str, field: str | None = None, error: str | None = None
) -> dict[str, bytes]:
    """The original fields plus where the entry came from and why it died.

    Field names starting with `dead_` in the original are overwritten.
    """
    fields = dict(entry.fields)
    fields["dead_stream"] = entry.stream.encode()
    fields["dead_id"] = entry.id.encode()
    fields["dead_reason"] = reason.encode()
    fields["dead_deliveries"] = str(entry.deliveries).encode()
    if field is not None:
        fields["dead_field"] = field.encode()
    if error is not None:
        fields["dead_error"] = error.encode()
    return fields


def encode_fields(fields: Mapping[str, FieldValue]) -> dict[str, bytes]:
    """Field values as the bytes stored on the stream."""
    if not fields:
        raise ValueError("an entry needs at least one field")
    out: dict[str, bytes] = {}
    for name, value in fields.items():
        if isinstance(value, bytes):
            out[name] = value
        elif isinstance(value, str):
            out[name] = value.encode()
        elif isinstance(value, bool):
            # True would become "True", which no reader expects; say what is meant instead.
            raise TypeError(f"field {name!r}: bool is not a stream value; use 0/1 or text")
        elif isinstance(value, int | float):
            out[name] = repr(value).encode()
        else:
            raise TypeError(f"field {name!r}: {type(value).__name__} is not a stream value")
    return out
