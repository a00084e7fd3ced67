"""A two-agent scene end to end on the `tiny` preset, one of its renderers slowed down.

One RendererService with two slots renders both agents' sessions; two `serve_agent`s (scripted
replies, espeak-ng), the director and the compositor run on one MemoryBus. A wrapper around the
bus holds back three of Bo's video chunks, as a renderer that stalls would.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from flowact.agents.scene import run_scene
from flowact.bus.memory import MemoryBus
from flowact.renderer.compositor import chunk_frames
from flowact.renderer.engine import RendererParts
from flowact.renderer.media import encode_png
from flowact.schemas import codec
from flowact.schemas import timebase as tb
from flowact.schemas.agent_settings import AgentSettings
from flowact.schemas.messages import TranscriptEvent, VideoChunk
from flowact.schemas.scene import CompositorSettings, Layout, Opening, Scene, SceneAgent
from flowact.schemas.settings import BusSettings, RendererSettings
from flowact.schemas.streams import stream_name

SLOW = range(6, 9)  # Bo's chunks held back
DELAY_S = 0.8  # each: three chunk periods late in all, far past the allowance
GAP = 4
BACKGROUND = (16, 32, 48)


class StallingBus:
    """A bus on which publishing chunks `chunks` of `session`'s video first waits `delay_s`:
    that session's renderer stalls there, and then catches up."""

    def __init__(self, bus: MemoryBus, session: str, chunks: range, delay_s: float) -> None:
        self.bus = bus
        self.stream = stream_name(session, "video")
        self.chunks = chunks
        self.delay_s = delay_s

    async def publish(self, stream, fields, **kw):  # noqa: ANN001, ANN201
        if stream == self.stream and int(fields["index"]) in self.chunks:
            await asyncio.sleep(self.delay_s)
        return await self.bus.publish(stream, fields, **kw)

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self.bus, name)


async def messages(bus: MemoryBus, session: str, kind: str) -> list:
    stream = stream_name(session, kind)
    return [codec.decode(e.fields, stream) for e in await bus.entries(stream)]


def image(colour: tuple[int, int, int]) -> bytes:
    return encode_png(np.full((32, 32, 3), colour, np.uint8))


@pytest.mark.skipif(not Path("/usr/bin/espeak-ng").exists(), reason="needs espeak-ng")
async def test_two_agents_talk_and_the_composed_stream_keeps_step(tmp_path: Path) -> None:
    for name, colour in (("ada.png", (220, 60, 60)), ("bo.png", (60, 60, 220))):
        (tmp_path / name).write_bytes(image(colour))
    scene = Scene(
        session="duo",
        agents=[
            SceneAgent(id="ada", name="Ada", image=tmp_path / "ada.png"),
            SceneAgent(id="bo", name="Bo", image=tmp_path / "bo.png", voice="en-gb"),
        ],
        opening=Opening(to="ada", text="Hello Ada! How are you?"),
        turns=2,
        duration_s=40,
        layout=Layout(gap=GAP, background="#102030"),
        compositor=CompositorSettings(codec="raw", allowance_ms=480),
    )
    memory = MemoryBus()
    bus = StallingBus(memory, "duo-bo", SLOW, DELAY_S)
    renderer = RendererSettings(preset="tiny", text_encoder="hash", worker="w")
    parts = RendererParts.build("tiny", text_encoder="hash")
    async with asyncio.timeout(60):
        result = await run_scene(
            scene, bus, bus_settings=BusSettings(url="memory://"), renderer=renderer,
            agent=AgentSettings(), parts=parts,
        )  # fmt: skip

    # The conversation: Ada answers the opening, Bo answers Ada with Ada's words as his cue.
    assert [(x.agent, x.to) for x in result.lines] == [("ada", "bo"), ("bo", "ada")]
    cues = [m.text for m in await messages(memory, "duo-bo", "events")
            if isinstance(m, TranscriptEvent) and m.speaker == "user"]  # fmt: skip
    assert cues == [result.lines[0].text]

    composed: list[VideoChunk] = await messages(memory, "duo", "video")
    tiles = {name: {c.index: c for c in await messages(memory, f"duo-{name}", "video")}
             for name in ("ada", "bo")}  # fmt: skip
    first = composed[0].index
    assert [c.index for c in composed] == list(range(first, first + len(composed)))
    assert len(composed) == result.compositor.chunks >= 20

    width, height = tiles["ada"][first].width, tiles["ada"][first].height
    origins = {"ada": (GAP, GAP), "bo": (2 * GAP + width, GAP)}
    shown = {"ada": [], "bo": []}
    background = np.empty((height, width, 3), np.uint8)
    background[:] = BACKGROUND
    last = {"ada": background, "bo": background}  # held before a first chunk: the background
    for chunk in composed:
        frames = chunk_frames(chunk)  # [T, H, W, 3]
        assert frames.shape == (tb.FRAMES_PER_CHUNK, height + 2 * GAP, 3 * GAP + 2 * width, 3)
        assert (frames[:, :GAP] == BACKGROUND).all()
        assert (frames[:, GAP:-GAP, GAP + width : 2 * GAP + width] == BACKGROUND).all()
        mixed = np.zeros(tb.SAMPLES_PER_CHUNK, np.int32)
        for name, (x, y) in origins.items():
            region = frames[:, y : y + height, x : x + width]
            own = tiles[name].get(chunk.index)
            if own is not None and np.array_equal(region, chunk_frames(own)):
                shown[name].append(chunk.index)  # chunk k of the tile in composed chunk k
                mixed += np.frombuffer(own.audio, "<i2")
            else:  # held: its last frame shown, still
                assert (region == last[name]).all(), (name, chunk.index)
            last[name] = region[-1]
        expected = np.clip(mixed, -32768, 32767).astype("<i2")
        assert np.array_equal(np.frombuffer(chunk.audio, "<i2"), expected)

    bo_held = [c.index for c in composed if c.index not in shown["bo"]]
    assert set(SLOW) <= set(bo_held)  # the stalled chunks were held, the stream went on
    assert result.compositor.tiles["bo"].held == len(bo_held)
    assert result.compositor.tiles["bo"].dropped >= len(SLOW)  # they came, too late
    assert len(shown["ada"]) >= len(composed) - 2
    assert any("'bo'" in reason for reason in result.reports)

    def loud(name: str) -> int:
        return sum(np.abs(np.frombuffer(tiles[name][k].audio, "<i2")).max() > 1000
                   for k in shown[name])  # fmt: skip

    assert loud("ada") >= 3 and loud("bo") >= 3  # both voices are in the mix
