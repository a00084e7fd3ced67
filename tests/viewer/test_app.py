"""The viewer's HTTP and WebSocket side on a real uvicorn server over a MemoryBus."""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from flowact.bus.memory import MemoryBus
from flowact.bus.typed import publish
from flowact.renderer.media import encode_jpeg
from flowact.schemas import codec
from flowact.schemas import timebase as tb
from flowact.schemas.messages import (
    BehaviorPrompt,
    StateEvent,
    TranscriptEvent,
    VideoChunk,
)
from flowact.schemas.streams import stream_name
from flowact.viewer.wire import pack_chunk, unpack_chunk


def chunk(index: int, codec_name: str = "jpeg") -> VideoChunk:
    frames = np.full((tb.FRAMES_PER_CHUNK, 8, 6, 3), index * 10, np.uint8)
    data = encode_jpeg(frames, 90) if codec_name == "jpeg" else [f.tobytes() for f in frames]
    audio = np.arange(tb.SAMPLES_PER_CHUNK, dtype="<i2") * (index + 1)
    return VideoChunk(
        index=index,
        first_frame=index * tb.FRAMES_PER_CHUNK,
        width=6,
        height=8,
        codec=codec_name,
        frames=data,
        audio=audio.tobytes(),
        state="speaking",
    )


def test_a_chunk_message_carries_frames_and_audio_unchanged() -> None:
    for codec_name in ("jpeg", "raw"):
        original = chunk(3, codec_name)
        header, frames, pcm = unpack_chunk(pack_chunk(original))
        assert frames == original.frames and pcm == original.audio
        assert (header["index"], header["first_frame"], header["samples"]) == (
            3,
            3 * tb.FRAMES_PER_CHUNK,
            tb.SAMPLES_PER_CHUNK,
        )
        assert (header["width"], header["height"], header["codec"]) == (6, 8, codec_name)


async def test_page_and_config(viewer) -> None:
    async with httpx.AsyncClient(base_url=viewer.url) as client:
        page = await client.get("/")
        script = await client.get("/static/viewer.js")
        config = (await client.get("/api/config")).json()
    assert page.status_code == 200 and "/static/viewer.js" in page.text
    assert script.status_code == 200 and "getOutputTimestamp" in script.text
    assert config["session"] == "s1" and config["jitter_chunks"] == 2
    assert config["timebase"]["samples_per_chunk"] == tb.SAMPLES_PER_CHUNK
    assert {"text", "channel", "duration_frames"} <= set(config["behaviors"][0])


async def test_typed_text_and_behaviors_are_published(viewer) -> None:
    async with httpx.AsyncClient(base_url=viewer.url) as client:
        said = await client.post("/api/sessions/s7/transcript", json={"text": "hello there"})
        acted = await client.post(
            "/api/sessions/s7/behavior",
            json={"text": "nods slowly", "channel": "gaze", "duration_frames": 25},
        )
        bad_channel = await client.post(
            "/api/sessions/s7/behavior", json={"text": "nods", "channel": "legs"}
        )
        not_json = await client.post("/api/sessions/s7/transcript", content=b"{")
        bad_session = await client.post("/api/sessions/a:b/transcript", json={"text": "x"})
    assert said.status_code == 200 and acted.status_code == 200
    assert bad_channel.status_code == 422 and bad_channel.json()["field"] == "channel"
    assert not_json.status_code == 400 and bad_session.status_code == 400

    events = [
        codec.decode(e.fields, e.stream)
        for e in await viewer.bus.entries(stream_name("s7", "events"))
    ]
    behaviors = [
        codec.decode(e.fields, e.stream)
        for e in await viewer.bus.entries(stream_name("s7", "behavior"))
    ]
    assert len(events) == 1 and isinstance(events[0], TranscriptEvent)
    assert (events[0].speaker, events[0].text, events[0].final) == ("user", "hello there", True)
    assert len(behaviors) == 1 and isinstance(behaviors[0], BehaviorPrompt)
    assert (
        behaviors[0].text,
        behaviors[0].channel,
        behaviors[0].duration_frames,
        behaviors[0].source,
    ) == ("nods slowly", "gaze", 25, "viewer")


async def test_the_socket_forwards_new_chunks_and_events(viewer) -> None:
    await publish(viewer.bus, "s1", chunk(0))  # before the page connected: not sent
    async with connect(f"{viewer.ws_url}/ws/s1") as ws:
        hello = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert hello == {"type": "hello", "session": "s1"}
        await asyncio.sleep(0.2)  # the pumps are reading from "$" now
        await publish(viewer.bus, "s1", chunk(1))
        await viewer.bus.publish(stream_name("s1", "video"), {"index": "x"})  # skipped
        await publish(viewer.bus, "s1", chunk(2, "raw"))
        await publish(viewer.bus, "s1", StateEvent(actor="agent", state="thinking"))
        got = [await asyncio.wait_for(ws.recv(), 5) for _ in range(3)]
    chunks = [unpack_chunk(m)[0]["index"] for m in got if isinstance(m, bytes)]
    events = [json.loads(m) for m in got if isinstance(m, str)]
    assert chunks == [1, 2]
    assert events == [{"schema_version": 1, "type": "state", "actor": "agent", "state": "thinking"}]


class PublishingBetweenReads(MemoryBus):
    """A bus on which a chunk lands right after the viewer's first video read that timed out,
    before its next read: the moment a tail that re-reads from "$" would lose it."""

    def __init__(self) -> None:
        super().__init__()
        self.published = False

    async def read(self, stream: str, after: str = "$", **kwargs) -> list:  # noqa: ANN003
        got = await super().read(stream, after, **kwargs)
        if not got and stream == stream_name("s1", "video") and not self.published:
            self.published = True
            await publish(self, "s1", chunk(5))
        return got


async def test_a_chunk_published_between_two_reads_still_reaches_the_page(viewer_over) -> None:
    bus = PublishingBetweenReads()
    async with viewer_over(bus) as viewer, connect(f"{viewer.ws_url}/ws/s1") as ws:
        hello = json.loads(await asyncio.wait_for(ws.recv(), 5))
        got = await asyncio.wait_for(ws.recv(), 5)
    assert hello["type"] == "hello" and bus.published
    assert unpack_chunk(got)[0]["index"] == 5


async def test_a_bad_session_id_is_refused(viewer) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(f"{viewer.ws_url}/ws/bad%20id"):
            pass
    assert refused.value.response.status_code == 403
