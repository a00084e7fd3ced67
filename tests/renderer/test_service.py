"""The renderer service end to end on the `tiny` preset: audio in, paced video chunks out."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch
from flowact_testing import collect, segments, speech

from flowact.bus.memory import MemoryBus
from flowact.bus.typed import publish
from flowact.renderer.engine import RendererParts
from flowact.renderer.media import decode_jpeg, encode_png
from flowact.renderer.service import RendererService
from flowact.schemas import timebase as tb
from flowact.schemas.messages import (
    AudioSegment,
    BehaviorPrompt,
    InterruptControl,
    SessionRequest,
    StartControl,
    StopControl,
    UtteranceEvent,
    VideoChunk,
)
from flowact.schemas.pcm import float_to_s16
from flowact.schemas.settings import BusSettings, RendererSettings
from flowact.schemas.streams import stream_name


@pytest.fixture(scope="module")
def parts() -> RendererParts:
    return RendererParts.build("tiny", text_encoder="hash")


def settings(**kw) -> RendererSettings:
    return RendererSettings(preset="tiny", text_encoder="hash", pace=0, worker="w1", **kw)


async def run_service(bus, parts, body, **kw) -> None:
    stop = asyncio.Event()
    service = RendererService(
        bus, settings(**kw), BusSettings(url="memory://", claim_idle_ms=500), parts
    )
    task = asyncio.create_task(service.run(stop))
    try:
        await body(service)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_five_seconds_of_speech_become_eleven_chunks(parts) -> None:
    bus = MemoryBus()
    audio = speech(5.0)
    image = np.zeros((32, 32, 3), np.uint8)
    image[8:24, 8:24] = (200, 40, 40)

    async def body(service) -> None:
        for seg in segments("hello", audio):
            await publish(bus, "s1", seg)
        await publish(bus, "s1", BehaviorPrompt(text="waves", duration=1))
        await publish(
            bus, "s1", SessionRequest(session="s1", preset="tiny", image=encode_png(image))
        )
        video = await collect(bus, "s1", "video", lambda out: len(out) >= 11)
        events = await collect(
            bus, "s1", "events", lambda out: sum(isinstance(e, UtteranceEvent) for e in out) >= 2
        )
        await publish(bus, "s1", StopControl())

        assert [c.index for c in video[:11]] == list(range(11))
        pcm = np.concatenate([np.frombuffer(c.audio, "<i2") for c in video[:11]])
        expected = np.frombuffer(float_to_s16(audio), "<i2")
        assert np.array_equal(pcm[: len(expected)], expected)  # chunk k: samples [7680k, ...)
        assert not pcm[len(expected) :].any()
        for chunk in video[:11]:
            assert isinstance(chunk, VideoChunk) and len(chunk.frames) == tb.FRAMES_PER_CHUNK
            assert decode_jpeg(chunk.frames[0]).shape == (32, 32, 3)
        assert video[0].state == "speaking" and video[10].state == "speaking"
        utterances = [(e.phase, e.sample) for e in events if isinstance(e, UtteranceEvent)]
        assert utterances == [("started", 0), ("finished", len(audio))]

    await run_service(bus, parts, body)


async def test_bad_input_becomes_an_error_event_and_the_session_goes_on(parts) -> None:
    bus = MemoryBus()

    async def body(service) -> None:
        await publish(bus, "s2", SessionRequest(session="s2"))
        await bus.publish(stream_name("s2", "behavior"), {"text": "nods", "channel": "legs"})
        await publish(bus, "s2", AudioSegment(utterance="u", seq=3, pcm=b"\0\0" * 320))
        events = await collect(
            bus, "s2", "events", lambda out: sum(e.type == "error" for e in out) >= 2
        )
        errors = {(e.field, e.reason.split(" ")[0]) for e in events if e.type == "error"}
        assert ("channel", "Input") in errors and ("seq", "utterance") in errors
        before = len(await bus.entries(stream_name("s2", "video")))
        await collect(bus, "s2", "video", lambda out: len(out) > before + 2)
        dead = await bus.entries(stream_name("s2", "behavior") + ":dead")
        assert len(dead) == 1 and dead[0].fields["channel"] == b"legs"

    await run_service(bus, parts, body)


async def test_interrupt_drops_unrendered_speech(parts) -> None:
    bus = MemoryBus()

    async def body(service) -> None:
        await publish(bus, "s3", SessionRequest(session="s3"))
        await collect(bus, "s3", "video", lambda out: len(out) >= 1)
        for seg in segments("long", speech(8.0)):
            await publish(bus, "s3", seg.model_copy(update={"start_sample": None}))
        await publish(bus, "s3", InterruptControl())
        events = await collect(
            bus,
            "s3",
            "events",
            lambda out: any(
                isinstance(e, UtteranceEvent) and e.phase == "interrupted" for e in out
            ),
        )
        cut = next(e for e in events if getattr(e, "phase", None) == "interrupted")
        video = await collect(
            bus, "s3", "video", lambda out: len(out) > tb.chunk_of_sample(cut.sample) + 4
        )
        tail = np.concatenate([np.frombuffer(c.audio, "<i2") for c in video])[cut.sample :]
        assert not tail.any()  # nothing after the cut is played

    await run_service(bus, parts, body)


async def test_a_second_request_for_a_running_session_is_refused(parts) -> None:
    bus = MemoryBus()

    async def body(service) -> None:
        await publish(bus, "s4", SessionRequest(session="s4"))
        await collect(bus, "s4", "video", lambda out: len(out) >= 1)
        await publish(bus, "s4", SessionRequest(session="s4", seed=1))
        events = await collect(bus, "s4", "events", lambda out: any(e.type == "error" for e in out))
        error = next(e for e in events if e.type == "error")
        assert error.field == "session" and "already rendering" in error.reason
        assert list(service.runners) == ["s4"]

    await run_service(bus, parts, body, capacity=2)


async def test_start_control_restarts_and_keeps_the_clock(parts) -> None:
    bus = MemoryBus()

    async def body(service) -> None:
        await publish(bus, "s5", SessionRequest(session="s5"))
        await collect(bus, "s5", "video", lambda out: len(out) >= 3)
        await publish(bus, "s5", StartControl(preset="paper-480p"))
        image = encode_png(np.full((32, 32, 3), 250, np.uint8))
        await publish(bus, "s5", StartControl(image=image, seed=4))
        events = await collect(
            bus,
            "s5",
            "events",
            lambda out: sum(e.type == "state" and e.state == "started" for e in out) >= 2,
        )
        error = next(e for e in events if e.type == "error")
        assert error.field == "preset"
        video = await collect(bus, "s5", "video", lambda out: len(out) >= 12)
        assert [c.index for c in video] == list(range(len(video)))  # one clock across restarts

    await run_service(bus, parts, body)


async def test_the_worker_is_ready_with_two_threads_a_slot_until_it_stops(parts) -> None:
    bus = MemoryBus()
    seen = {}

    async def body(service) -> None:
        await asyncio.wait_for(service.ready.wait(), 10)
        seen["threads"] = service.threads.threads
        seen["service"] = service

    await run_service(bus, parts, body, capacity=3)
    assert seen["threads"] == 6
    assert not seen["service"].ready.is_set()


async def test_an_accelerated_worker_warms_up_and_renders() -> None:
    bus = MemoryBus()
    parts = RendererParts.build("tiny", text_encoder="hash")  # accel casts in place: its own

    async def body(service) -> None:
        await publish(bus, "s6", SessionRequest(session="s6"))
        video = await collect(bus, "s6", "video", lambda out: len(out) >= 3)
        assert decode_jpeg(video[2].frames[0]).shape == (32, 32, 3)
        assert next(parts.vae.parameters()).dtype == torch.bfloat16

    await run_service(bus, parts, body, accel="bf16")
