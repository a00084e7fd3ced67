"""The Pipecat processor, run with Pipecat's own `run_test` against a `tiny` renderer on the
in-process bus: TTS frames in, the avatar's video (and its audio) out."""

from __future__ import annotations

import asyncio
import importlib
import io
import sys
from collections.abc import AsyncIterator

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("pipecat", reason="needs the pipecat extra")

from pipecat.frames.frames import (  # noqa: E402
    CancelFrame,
    InterruptionFrame,
    OutputImageRawFrame,
    SpeechOutputAudioRawFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
)
from pipecat.tests.utils import SleepFrame, run_test  # noqa: E402

from flowact.agents.pipecat import FlowActAvatarProcessor  # noqa: E402
from flowact.bus.memory import MemoryBus  # noqa: E402
from flowact.renderer.engine import RendererParts  # noqa: E402
from flowact.renderer.service import RendererService  # noqa: E402
from flowact.schemas import codec  # noqa: E402
from flowact.schemas import timebase as tb  # noqa: E402
from flowact.schemas.agent_settings import AgentSettings  # noqa: E402
from flowact.schemas.messages import UtteranceEvent, VideoChunk  # noqa: E402
from flowact.schemas.pcm import float_to_s16, resample, s16_to_float, to_clock  # noqa: E402
from flowact.schemas.settings import BusSettings, RendererSettings  # noqa: E402
from flowact.schemas.streams import stream_name  # noqa: E402

PIECE_S = 0.1  # TTS services hand out audio in pieces of about this length


@pytest.fixture(scope="module")
def parts() -> RendererParts:
    return RendererParts.build("tiny", text_encoder="hash")


@pytest.fixture
async def bus(parts: RendererParts) -> AsyncIterator[MemoryBus]:
    """A MemoryBus with a `tiny` renderer worker serving it in real time (pace 1), so the agent's
    clock and the renderer's agree as in production."""
    bus, stop = MemoryBus(), asyncio.Event()
    settings = RendererSettings(preset="tiny", text_encoder="hash", pace=1.0, worker="w1")
    service = RendererService(bus, settings, BusSettings(url="memory://"), parts)
    task = asyncio.create_task(service.run(stop))
    yield bus
    stop.set()
    await asyncio.wait_for(task, 10)


def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (48, 48), (200, 60, 40)).save(out, format="PNG")
    return out.getvalue()


def tone(seconds: float, rate: int, channels: int = 1) -> bytes:
    t = np.arange(round(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * 180 * t) + 0.1 * np.sin(2 * np.pi * 520 * t)
    return float_to_s16(np.repeat(wave, channels))


def tts_frames(pcm: bytes, rate: int, channels: int = 1) -> list:
    step = round(PIECE_S * rate) * tb.BYTES_PER_SAMPLE * channels
    return [
        TTSAudioRawFrame(audio=pcm[i : i + step], sample_rate=rate, num_channels=channels)
        for i in range(0, len(pcm), step)
    ]


def processor(bus: MemoryBus, **kw) -> FlowActAvatarProcessor:
    return FlowActAvatarProcessor(
        bus, image=png(), preset="tiny", settings=AgentSettings(vad="energy"), **kw
    )


async def messages(bus: MemoryBus, session: str, kind: str) -> list:
    return [codec.decode(e.fields) for e in await bus.entries(stream_name(session, kind))]


def frames_audio(down: list) -> np.ndarray:
    """The audio that left with the images, as int16 on the session clock."""
    pcm = b"".join(f.audio for f in down if isinstance(f, SpeechOutputAudioRawFrame))
    return np.frombuffer(pcm, "<i2")


async def test_tts_audio_becomes_video_frames_with_their_own_audio(bus) -> None:
    avatar = processor(bus)
    speech = tone(1.2, 24_000)
    down, _ = await run_test(
        avatar, frames_to_send=[TTSStartedFrame(), *tts_frames(speech, 24_000), TTSStoppedFrame()]
    )
    sid = avatar.session
    (request,) = [codec.decode(e.fields) for e in await bus.entries("flowact:sessions")]
    assert (request.session, request.preset, request.image) == (sid, "tiny", png())

    images = [f for f in down if isinstance(f, OutputImageRawFrame)]
    assert not any(isinstance(f, TTSAudioRawFrame) for f in down)  # replaced by the chunks' audio
    assert [type(f) for f in down if isinstance(f, (TTSStartedFrame, TTSStoppedFrame))] == [
        TTSStartedFrame,
        TTSStoppedFrame,
    ]
    assert avatar.chunks >= 4 and len(images) == avatar.chunks * tb.FRAMES_PER_CHUNK
    assert all(f.size == (32, 32) and f.format == "RGB" and f.sync_with_audio for f in images)
    # Each image is followed by the 40 ms of audio it shows.
    media = [f for f in down if isinstance(f, (OutputImageRawFrame, SpeechOutputAudioRawFrame))]
    assert [type(f) for f in media] == [OutputImageRawFrame, SpeechOutputAudioRawFrame] * len(
        images
    )

    # The frames are the renderer's chunks, in order, from chunk 0.
    video = await messages(bus, sid, "video")
    sent = video[: avatar.chunks]
    assert [c.index for c in sent] == list(range(avatar.chunks))
    expected_rgb = [_rgb(data) for c in sent for data in c.frames]
    assert [f.image for f in images] == expected_rgb
    audio = frames_audio(down)
    assert np.array_equal(audio, np.frombuffer(b"".join(c.audio for c in sent), "<i2"))

    # The speech is all there, resampled to 16 kHz, starting on a video frame, nothing else.
    spoken = np.flatnonzero(audio.reshape(-1, tb.SAMPLES_PER_FRAME).any(axis=1))
    expected = np.frombuffer(float_to_s16(resample(s16_to_float(speech), 24_000)), "<i2")
    assert len(spoken) == len(expected) // tb.SAMPLES_PER_FRAME == 30
    assert np.array_equal(spoken, np.arange(spoken[0], spoken[0] + 30))  # contiguous
    first = spoken[0] * tb.SAMPLES_PER_FRAME
    assert np.array_equal(audio[first : first + len(expected)], expected)
    speaking_chunks = {tb.chunk_of_frame(int(f)) for f in spoken}
    assert len(speaking_chunks) in (3, 4)  # 1.2 s is 2.5 chunks, wherever it starts
    assert all(c.state == "speaking" for c in sent if c.index in speaking_chunks)

    assert [c.type for c in await messages(bus, sid, "control")] == ["stop"]


async def test_an_interruption_frame_interrupts_the_avatar(bus) -> None:
    avatar = processor(bus)
    speech = tone(3.0, 22_050)
    frames = [
        TTSStartedFrame(),
        *tts_frames(speech, 22_050),
        SleepFrame(3.0),  # it starts playing start_delay_ms (1.44 s) after the renderer starts
        InterruptionFrame(),
        SleepFrame(0.6),  # the renderer applies the cut within a chunk; then the EndFrame
    ]
    down, _ = await run_test(avatar, frames_to_send=frames)
    sid = avatar.session

    assert any(isinstance(f, InterruptionFrame) for f in down)  # passed on down the pipeline
    assert [c.type for c in await messages(bus, sid, "control")] == ["interrupt", "stop"]
    events = await messages(bus, sid, "events")
    (cut,) = [e for e in events if isinstance(e, UtteranceEvent) and e.phase == "interrupted"]
    audio = frames_audio(down)
    assert audio[: cut.sample].any()  # some of the speech was played ...
    assert not audio[cut.sample :].any()  # ... and nothing after the cut
    played = audio.reshape(-1, tb.SAMPLES_PER_FRAME).any(axis=1).sum()
    assert played < 3.0 * tb.FPS - tb.FRAMES_PER_CHUNK  # well short of the whole 3 s


async def test_without_sync_audio_tts_audio_passes_and_any_rate_is_taken(bus) -> None:
    avatar = processor(bus, sync_audio=False)
    speech = tone(0.5, 11_025, channels=2)  # neither a rate the bus takes, nor mono
    sent = tts_frames(speech, 11_025, channels=2)
    down, _ = await run_test(avatar, frames_to_send=[TTSStartedFrame(), *sent, TTSStoppedFrame()])

    passed = [f for f in down if isinstance(f, TTSAudioRawFrame)]
    assert [f.audio for f in passed] == [f.audio for f in sent]
    assert not any(isinstance(f, SpeechOutputAudioRawFrame) for f in down)
    images = [f for f in down if isinstance(f, OutputImageRawFrame)]
    assert len(images) == avatar.chunks * tb.FRAMES_PER_CHUNK > 0
    assert not any(f.sync_with_audio for f in images)

    segments = await messages(bus, avatar.session, "audio")
    assert {s.rate for s in segments} == {tb.SAMPLE_RATE} and segments[-1].end
    assert len({s.utterance for s in segments}) == 1
    mono_samples = len(speech) // (2 * tb.BYTES_PER_SAMPLE)
    assert sum(s.samples for s in segments) == to_clock(mono_samples, 11_025)
    chunks = [c for c in await messages(bus, avatar.session, "video") if isinstance(c, VideoChunk)]
    assert any(c.state == "speaking" for c in chunks[: avatar.chunks])


async def test_a_cancel_frame_stops_the_session_without_waiting_for_the_speech(bus) -> None:
    avatar = processor(bus)
    frames = [TTSStartedFrame(), *tts_frames(tone(2.0, 16_000), 16_000), TTSStoppedFrame()]
    loop = asyncio.get_running_loop()
    began = loop.time()
    down, _ = await run_test(
        avatar, frames_to_send=[*frames, SleepFrame(0.5), CancelFrame()], send_end_frame=False
    )
    assert loop.time() - began < 2.0  # the 2 s of speech, 1.44 s away, were not waited for
    assert any(isinstance(f, CancelFrame) for f in down)
    assert [c.type for c in await messages(bus, avatar.session, "control")] == ["stop"]
    assert not frames_audio(down).any()
    sent = avatar.chunks
    await asyncio.sleep(0.6)  # the renderer goes on until it reads the stop; nothing more comes
    assert avatar.chunks == sent


def test_a_missing_pipecat_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "pipecat", None)  # makes `import pipecat...` fail
    monkeypatch.setitem(sys.modules, "pipecat.frames", None)
    monkeypatch.setitem(sys.modules, "pipecat.frames.frames", None)
    monkeypatch.delitem(sys.modules, "flowact.agents.pipecat")
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'flowact\[pipecat\]'"):
        importlib.import_module("flowact.agents.pipecat")


def test_a_bad_reference_image_fails_where_the_processor_is_built() -> None:
    with pytest.raises(ValueError, match="neither PNG nor JPEG"):
        FlowActAvatarProcessor(MemoryBus(), image=b"GIF89a...")


def _rgb(jpeg: bytes) -> bytes:
    return Image.open(io.BytesIO(jpeg)).convert("RGB").tobytes()
