"""Typed messages over any `Bus`: encode on the way out, validate on the way in.

This is the one boundary where stream entries become `schemas` messages. An entry that is not a
valid message is rejected: the bus acknowledges it and copies it to the dead-letter stream, and an
`ErrorEvent` naming the field and the reason goes to the session's events stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import structlog

from flowact.bus.base import Bus, ConsumerOptions, Entry, Rejected
from flowact.schemas import codec
from flowact.schemas.messages import ErrorEvent, Message
from flowact.schemas.streams import (
    KIND_OF_TYPE,
    RETENTION,
    StreamKind,
    parse_stream,
    stream_for,
    stream_name,
)

log = structlog.get_logger(__name__)

MessageHandler = Callable[[str, Message], Awaitable[None]]
"""Called with (stream, message); raise `Rejected` for a valid message that cannot be served."""


async def publish(bus: Bus, session: str, message: Message, *, maxlen: int | None = None) -> str:
    """Publish on the stream of the message's type; `producer_id` makes a retry a no-op.

    The stream is trimmed to about `maxlen` entries (default: its kind's `RETENTION`)."""
    kind = KIND_OF_TYPE[message.type]  # type: ignore[attr-defined]
    stream = stream_for(session, message.type)  # type: ignore[attr-defined]
    return await bus.publish(
        stream,
        codec.encode(message),
        dedupe=message.producer_id,
        maxlen=maxlen if maxlen is not None else RETENTION[kind],
    )


async def report_rejected(bus: Bus, entry: Entry, error: Rejected) -> None:
    """Answer a rejected entry with an error event on its session's events stream."""
    session, _ = _session_of(entry.stream)
    log.warning(
        "entry rejected", stream=entry.stream, id=entry.id, field=error.field, reason=error.reason
    )
    if session is None:
        return
    event = ErrorEvent(
        reason=error.reason, field=error.field, stream=entry.stream, entry_id=entry.id
    )
    await publish(bus, session, event)


async def subscribe(
    bus: Bus,
    streams: Sequence[str],
    options: ConsumerOptions,
    handler: MessageHandler,
    *,
    stop: asyncio.Event | None = None,
) -> None:
    """Consume `streams` in a group, handing each valid message to `handler`."""

    async def on_entry(entry: Entry) -> None:
        try:
            message = codec.decode(entry.fields, entry.stream)
        except codec.MessageError as err:
            raise Rejected(err.reason, field=err.field) from None
        await handler(entry.stream, message)

    async def on_reject(entry: Entry, error: Rejected) -> None:
        await report_rejected(bus, entry, error)

    await bus.consume(streams, options, on_entry, on_reject=on_reject, stop=stop)


def session_streams(session: str, kinds: Sequence[StreamKind]) -> list[str]:
    """The streams of `kinds` for `session`."""
    return [stream_name(session, kind) for kind in kinds]


def _session_of(stream: str) -> tuple[str | None, str]:
    try:
        return parse_stream(stream)
    except ValueError:
        return None, ""
