"""The typed boundary: messages in and out of any bus."""

import pytest

from flowact.bus import typed
from flowact.bus.memory import MemoryBus
from flowact.schemas import messages as m
from flowact.schemas import streams
from flowact.schemas.streams import stream_name


async def test_typed_publish_keeps_streams_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(streams.RETENTION, "events", 20)
    bus = MemoryBus()
    for i in range(200):
        await typed.publish(bus, "demo", m.StateEvent(state="idle", frame=i))
    kept = await bus.length(stream_name("demo", "events"))
    assert 20 <= kept < 60  # trimmed approximately, never below what is asked
    await typed.publish(bus, "demo", m.StateEvent(state="idle"), maxlen=500)
    assert await bus.length(stream_name("demo", "events")) == kept + 1
