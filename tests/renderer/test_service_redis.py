"""The renderer service over the real Redis: a session driven from outside, by redis-cli too."""

from __future__ import annotations

import asyncio
import subprocess

import numpy as np
import pytest
from flowact_testing import collect, segments, speech

from flowact.bus.redis import RedisStreamsBus
from flowact.bus.typed import publish
from flowact.renderer.engine import RendererParts
from flowact.renderer.media import decode_jpeg, encode_png
from flowact.renderer.service import RendererService
from flowact.schemas import timebase as tb
from flowact.schemas.messages import SessionRequest, StopControl, UtteranceEvent
from flowact.schemas.settings import BusSettings, RendererSettings
from flowact.schemas.streams import SESSIONS_STREAM, stream_name

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def parts() -> RendererParts:
    return RendererParts.build("tiny", text_encoder="hash")


async def test_session_over_redis_with_redis_cli(redis_url, redis_cli, session_id, parts) -> None:
    bus = RedisStreamsBus(redis_url)
    stop = asyncio.Event()
    settings = RendererSettings(preset="tiny", text_encoder="hash", pace=0, worker=session_id)
    service = RendererService(bus, settings, BusSettings(url=redis_url, block_ms=100), parts)
    worker = asyncio.create_task(service.run(stop))
    try:
        image = np.full((32, 32, 3), 90, np.uint8)
        await publish(bus, session_id, SessionRequest(session=session_id, image=encode_png(image)))
        audio = speech(5.0, seed=3)
        for seg in segments("greeting", audio):
            await publish(bus, session_id, seg)
        behavior = stream_name(session_id, "behavior")
        for args in (
            ["text", "waves with the right hand", "duration", "2"],
            ["text", "nods", "channel", "legs"],
        ):
            subprocess.run(
                [redis_cli, "-u", redis_url, "XADD", behavior, "*", *args],
                check=True,
                capture_output=True,
            )
        video = await collect(bus, session_id, "video", lambda out: len(out) >= 11)
        events = await collect(
            bus,
            session_id,
            "events",
            lambda out: (
                sum(isinstance(e, UtteranceEvent) for e in out) >= 2
                and any(e.type == "error" for e in out)
            ),
        )
        await publish(bus, session_id, StopControl())
    finally:
        stop.set()
        await asyncio.wait_for(worker, 10)
        await bus.redis.xtrim(SESSIONS_STREAM, maxlen=1000, approximate=True)
        await bus.close()

    assert [c.index for c in video[:11]] == list(range(11))
    for chunk in video[:11]:
        assert len(chunk.frames) == tb.FRAMES_PER_CHUNK
        assert all(decode_jpeg(f).shape == (32, 32, 3) for f in chunk.frames)
    played = np.concatenate([np.frombuffer(c.audio, "<i2") for c in video[:11]])
    assert np.abs(played[: len(audio)].astype(np.float32) / 32768 - audio).max() < 1e-3
    utterances = [(e.phase, e.utterance) for e in events if isinstance(e, UtteranceEvent)]
    assert utterances == [("started", "greeting"), ("finished", "greeting")]
    error = next(e for e in events if e.type == "error")
    assert error.field == "channel" and error.stream == behavior
