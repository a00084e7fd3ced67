"""Raw Redis stream replies (RESP2, bytes, nested lists) into `Entry` objects.

`RedisStreamsBus` turns off redis-py's reply callbacks for the stream commands it sends, so the
shapes below are the server's own and do not change with the client library. This is the only
module that knows them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from flowact.bus.base import Entry

RawEntry = Sequence[Any]  # [id, [field, value, field, value, ...]]; the list is None if deleted


def text(raw: bytes | str) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw


def entry(stream: str, raw: RawEntry, deliveries: int) -> Entry | None:
    """One entry, or None for an id whose entry was deleted (trimmed) while pending."""
    raw_id, flat = raw[0], raw[1]
    if flat is None:
        return None
    fields = {text(flat[i]): bytes(flat[i + 1]) for i in range(0, len(flat), 2)}
    return Entry(stream=stream, id=text(raw_id), fields=fields, deliveries=deliveries)


def entries(stream: str, raws: Sequence[RawEntry] | None, deliveries: int) -> list[Entry]:
    """An XRANGE or XREVRANGE reply, or the entry list of one stream in an XREAD reply."""
    out = []
    for raw in raws or ():
        parsed = entry(stream, raw, deliveries)
        if parsed is not None:
            out.append(parsed)
    return out


def read_reply(raw: Sequence[Any] | None, deliveries: int) -> list[Entry]:
    """An XREAD / XREADGROUP reply: None on timeout, else [[stream, [entry, ...]], ...].

    XREADGROUP with ">" delivers entries for the first time, so their count is 1; plain XREAD
    has no group and no count (0).
    """
    out: list[Entry] = []
    for stream_raw, raws in raw or ():
        out.extend(entries(text(stream_raw), raws, deliveries))
    return out


def autoclaim_reply(stream: str, raw: Sequence[Any]) -> tuple[str, list[Entry]]:
    """An XAUTOCLAIM reply: [next cursor, [entry, ...], [deleted id, ...] (Redis 7+)].

    XAUTOCLAIM does not report delivery counts; they come from `pending_reply` and are filled in
    by `with_deliveries`. Deleted ids are dropped: Redis already removed them from the pending
    list.
    """
    return text(raw[0]), entries(stream, raw[1], deliveries=0)


def pending_reply(raw: Sequence[Any] | None) -> list[tuple[str, str, int, int]]:
    """An extended XPENDING reply: (id, consumer, idle ms, delivery count) per entry."""
    return [(text(r[0]), text(r[1]), int(r[2]), int(r[3])) for r in raw or ()]


def with_deliveries(
    claimed: list[Entry], pending: Sequence[Sequence[tuple[str, str, int, int]]], consumer: str
) -> list[Entry]:
    """Claimed entries with their delivery counts, dropping any this consumer no longer holds.

    `pending[i]` is the extended XPENDING reply for `claimed[i]` alone.
    """
    out = []
    for claimed_entry, rows in zip(claimed, pending, strict=True):
        for entry_id, owner, _idle, count in rows:
            if entry_id == claimed_entry.id and owner == consumer:
                out.append(replace(claimed_entry, deliveries=count))
    return out


def pending_summary_count(raw: Sequence[Any]) -> int:
    """The total of a summary XPENDING reply: [count, smallest id, greatest id, consumers]."""
    return int(raw[0])


def stream_id(raw: bytes | str) -> str:
    """An XADD reply (or the dedupe script's, which returns the same)."""
    return text(raw)
