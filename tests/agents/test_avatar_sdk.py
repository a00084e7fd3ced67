import asyncio
import inspect
import io

import numpy as np
from PIL import Image

from flowact.agents.clock import ManualClock
from flowact.agents.sdk import AvatarClient
from flowact.bus import typed
from flowact.bus.memory import MemoryBus
from flowact.schemas import codec
from flowact.schemas import timebase as tb
from flowact.schemas.agent_settings import AgentSettings
from flowact.schemas.messages import StateEvent, VideoChunk
from flowact.schemas.pcm import float_to_s16
from flowact.schemas.streams import SESSIONS_STREAM, stream_name

SID = "room"


def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 32), (90, 60, 200)).save(out, format="PNG")
    return out.getvalue()


def tone(seconds: float, rate: int, level: float = 0.3) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    voiced = np.sin(2 * np.pi * 150 * t) + 0.4 * np.sin(2 * np.pi * 450 * t)
    return float_to_s16(level * voiced)


async def read(bus: MemoryBus, kind: str) -> list:
    return [codec.decode(e.fields) for e in await bus.entries(stream_name(SID, kind))]


async def wait(check, timeout: float = 5.0) -> None:
    """Wait until `check()` (sync or async) is true."""
    for _ in range(int(timeout / 0.01)):
        result = check()
        if await result if inspect.isawaitable(result) else result:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out waiting")


def client(bus: MemoryBus, clock: ManualClock) -> AvatarClient:
    settings = AgentSettings(vad="energy", tick_ms=10, lead_ms=5_000)
    return AvatarClient(bus, SID, settings=settings, clock=clock, block_ms=50)


async def agent_states(bus: MemoryBus) -> list[str]:
    events = await read(bus, "events")
    return [e.state for e in events if e.type == "state" and e.actor == "agent"]


async def test_a_voice_assistant_turn_through_the_sdk() -> None:
    bus, clock = MemoryBus(), ManualClock()
    async with client(bus, clock) as avatar:
        await avatar.start(image=png(), seed=3)
        (request,) = [codec.decode(e.fields) for e in await bus.entries(SESSIONS_STREAM)]
        assert (request.session, request.image, request.seed) == (SID, png(), 3)

        mic = tone(0.6, 48_000)
        for i in range(0, len(mic), 2 * 960):  # 20 ms pieces at 48 kHz
            await avatar.push_user_audio(mic[i : i + 2 * 960], 48_000)
        await wait(lambda: _has(agent_states(bus), "listening"))
        await avatar.push_transcript("How is the weather?")
        await wait(lambda: _has(agent_states(bus), "thinking"))

        await avatar.push_transcript("It is sunny today.", speaker="agent")
        speech = tone(1.5, 24_000)
        for i in range(0, len(speech), 2 * 4800):  # 200 ms pieces at 24 kHz
            await avatar.push_audio(speech[i : i + 2 * 4800], 24_000)
        await avatar.push_audio(b"", 24_000, end=True)

        async def published() -> bool:
            return any(s.end for s in await read(bus, "audio"))

        await wait(published)
        segments = await read(bus, "audio")
        assert {s.rate for s in segments} == {tb.SAMPLE_RATE}
        assert sum(s.samples for s in segments) == int(1.5 * tb.SAMPLE_RATE)
        for a, b in zip(segments, segments[1:], strict=False):
            assert b.start_sample == a.start_sample + a.samples
        assert avatar.state == "speaking"
        transcripts = [
            (e.speaker, e.text) for e in await read(bus, "events") if e.type == "transcript"
        ]
        assert transcripts == [("user", "How is the weather?"), ("agent", "It is sunny today.")]
        assert any(p.source == "planner" for p in await read(bus, "behavior"))

        await avatar.interrupt()
        await wait(lambda: _has(agent_states(bus), "idle"))
        assert [c.type for c in await read(bus, "control")] == ["interrupt"]
    assert [c.type for c in await read(bus, "control")] == ["interrupt", "stop"]


async def test_video_and_events_are_iterated_and_the_clock_follows_the_renderer() -> None:
    bus, clock = MemoryBus(), ManualClock()
    avatar = client(bus, clock)
    await avatar.start()
    # A renderer stand-in: it reports its playhead and publishes two chunks.
    await typed.publish(bus, SID, StateEvent(actor="renderer", state="started", frame=240))
    for index in (20, 21):
        chunk = VideoChunk(
            index=index,
            first_frame=index * tb.FRAMES_PER_CHUNK,
            width=2,
            height=2,
            codec="raw",
            frames=[bytes(12)] * tb.FRAMES_PER_CHUNK,
            audio=bytes(2 * tb.SAMPLES_PER_CHUNK),
        )
        await typed.publish(bus, SID, chunk)

    async def first(iterator, count: int) -> list:
        out = []
        async for item in iterator:
            out.append(item)
            if len(out) == count:
                break
        return out

    chunks = await asyncio.wait_for(first(avatar.video(), 2), 5)
    assert [c.index for c in chunks] == [20, 21]
    (event,) = await asyncio.wait_for(first(avatar.events(), 1), 5)
    assert event.type == "state" and event.frame == 240
    await wait(lambda: clock.now_sample() == 240 * tb.SAMPLES_PER_FRAME)
    await avatar.stop()


async def _has(states, state: str) -> bool:
    return state in await states
