"""Mp4Recorder and record_session: decode the MP4 back with PyAV and check both tracks' timing."""

from __future__ import annotations

import asyncio
from pathlib import Path

import av
import numpy as np
import pytest
from flowact_testing import segments, speech

from flowact.bus.memory import MemoryBus
from flowact.bus.typed import publish
from flowact.renderer.engine import RendererParts
from flowact.renderer.media import encode_jpeg
from flowact.renderer.recorder import Mp4Recorder, record_session
from flowact.renderer.service import RendererService
from flowact.schemas import timebase as tb
from flowact.schemas.messages import SessionRequest, StopControl, VideoChunk
from flowact.schemas.settings import BusSettings, RendererSettings
from flowact.schemas.streams import stream_name

COLOURS = [(220, 30, 30), (30, 200, 30), (30, 30, 220), (220, 220, 30), (200, 30, 200)]
TONES = [300.0, 500.0, 700.0, 900.0, 1100.0]


def chunk(
    index: int, colour: tuple[int, int, int], tone: float | None, size: tuple[int, int] = (32, 24)
) -> VideoChunk:
    width, height = size
    frames = np.empty((tb.FRAMES_PER_CHUNK, height, width, 3), np.uint8)
    frames[:] = colour
    t = (tb.chunk_samples(index).start + np.arange(tb.SAMPLES_PER_CHUNK)) / tb.SAMPLE_RATE
    pcm = np.zeros_like(t) if tone is None else 0.4 * np.sin(2 * np.pi * tone * t)
    return VideoChunk(
        index=index,
        first_frame=index * tb.FRAMES_PER_CHUNK,
        width=width,
        height=height,
        frames=encode_jpeg(frames, 95),
        audio=(pcm * 32767).astype("<i2").tobytes(),
    )


def decode(path: Path) -> dict:
    with av.open(str(path)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        info = {
            "rate": video.average_rate,
            "audio_rate": audio.rate,
            "audio_seconds": float(audio.duration * audio.time_base),
            "size": (video.width, video.height),
        }
        frames = [(f.time, f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]
    with av.open(str(path)) as container:
        chunks = list(container.decode(audio=0))
    info["video_start"] = frames[0][0]
    info["audio_start"] = chunks[0].time
    info["colours"] = np.array([f.reshape(-1, 3).mean(0) for _, f in frames])
    info["pcm"] = np.concatenate([c.to_ndarray().reshape(-1) for c in chunks])
    return info


def dominant_hz(pcm: np.ndarray, index: int) -> tuple[float, float]:
    """Peak frequency and RMS of chunk `index`'s window, its edges left out."""
    window = tb.chunk_samples(index)
    part = pcm[window.start + 800 : window.stop - 800]
    spectrum = np.abs(np.fft.rfft(part * np.hanning(len(part))))
    return float(np.argmax(spectrum) * tb.SAMPLE_RATE / len(part)), float(np.sqrt(np.mean(part**2)))


def test_chunks_become_an_mp4_with_both_tracks_on_one_clock(tmp_path) -> None:
    path = tmp_path / "out.mp4"
    with Mp4Recorder(path) as recorder:
        for k in range(5):
            recorder.add(chunk(7 + k, COLOURS[k], TONES[k]))  # a recording may start mid-session
    stats = recorder.stats
    assert (stats.chunks, stats.filled, stats.frames) == (5, 0, 5 * tb.FRAMES_PER_CHUNK)

    info = decode(path)
    assert info["rate"] == tb.FPS and info["size"] == (32, 24)
    assert info["audio_rate"] == tb.SAMPLE_RATE
    assert len(info["colours"]) == 5 * tb.FRAMES_PER_CHUNK
    assert info["audio_seconds"] == pytest.approx(5 * tb.CHUNK_SECONDS, abs=1024 / tb.SAMPLE_RATE)
    assert abs(info["audio_start"] - info["video_start"]) < 1 / tb.FPS
    for k in range(5):
        shown = info["colours"][k * tb.FRAMES_PER_CHUNK : (k + 1) * tb.FRAMES_PER_CHUNK]
        assert np.abs(shown - COLOURS[k]).max() < 12, k
        hz, _ = dominant_hz(info["pcm"], k)
        assert hz == pytest.approx(TONES[k], abs=5), k  # chunk k's sound plays under its frames


def test_a_missing_chunk_holds_the_last_frame_with_silence(tmp_path) -> None:
    path = tmp_path / "gap.mp4"
    recorder = Mp4Recorder(path)
    for k in (0, 1, 3):
        recorder.add(chunk(k, COLOURS[k], TONES[k]))
    recorder.add(chunk(3, COLOURS[4], TONES[4]))  # a duplicate index is dropped
    stats = recorder.close()
    assert (stats.chunks, stats.filled, stats.frames) == (3, 1, 4 * tb.FRAMES_PER_CHUNK)

    info = decode(path)
    assert len(info["colours"]) == 4 * tb.FRAMES_PER_CHUNK
    held = info["colours"][2 * tb.FRAMES_PER_CHUNK : 3 * tb.FRAMES_PER_CHUNK]
    assert np.abs(held - COLOURS[1]).max() < 12
    assert dominant_hz(info["pcm"], 2)[1] < 0.01  # silence
    assert dominant_hz(info["pcm"], 3)[0] == pytest.approx(TONES[3], abs=5)
    assert np.abs(info["colours"][-1] - COLOURS[3]).max() < 12


def test_a_restarted_session_is_appended_and_odd_sizes_are_evened(tmp_path) -> None:
    path = tmp_path / "restart.mp4"
    with Mp4Recorder(path) as recorder:
        for k in (4, 5):
            recorder.add(chunk(k, COLOURS[k - 4], TONES[k - 4], size=(33, 17)))
        recorder.add(chunk(0, COLOURS[2], TONES[2], size=(33, 17)))  # counts from 0 again
    info = decode(path)
    assert info["size"] == (34, 18)
    assert len(info["colours"]) == 3 * tb.FRAMES_PER_CHUNK
    assert dominant_hz(info["pcm"], 2)[0] == pytest.approx(TONES[2], abs=5)


def test_nothing_recorded_writes_no_file_and_a_closed_recorder_takes_no_chunk(tmp_path) -> None:
    recorder = Mp4Recorder(tmp_path / "none.mp4")
    assert recorder.close().chunks == 0 and not (tmp_path / "none.mp4").exists()
    with pytest.raises(RuntimeError, match="closed"):
        recorder.add(chunk(0, COLOURS[0], TONES[0]))


async def test_record_session_of_a_tiny_renderer(tmp_path) -> None:
    bus = MemoryBus()
    parts = RendererParts.build("tiny", text_encoder="hash")
    settings = RendererSettings(preset="tiny", text_encoder="hash", pace=0, worker="w1")
    service = RendererService(bus, settings, BusSettings(url="memory://"), parts)
    audio = speech(1.8)
    for seg in segments("hello", audio):
        await publish(bus, "rec", seg)
    await publish(bus, "rec", SessionRequest(session="rec", preset="tiny"))
    stop, done = asyncio.Event(), asyncio.Event()
    renderer = asyncio.create_task(service.run(stop))
    path = tmp_path / "session.mp4"
    try:
        recording = record_session(
            bus, "rec", path, stop=done, max_chunks=5, after="0", progress=False
        )
        stats = await asyncio.wait_for(recording, 60)
    finally:
        await publish(bus, "rec", StopControl())
        stop.set()
        await asyncio.wait_for(renderer, 10)

    assert stats.chunks == 5 and stats.filled == 0
    info = decode(path)
    assert info["rate"] == tb.FPS and info["size"] == (32, 32)
    assert len(info["colours"]) == 5 * tb.FRAMES_PER_CHUNK
    assert info["audio_seconds"] == pytest.approx(5 * tb.CHUNK_SECONDS, abs=1024 / tb.SAMPLE_RATE)
    assert abs(info["audio_start"] - info["video_start"]) < 1 / tb.FPS
    # The speech (1.8 s) is in the first four chunks' windows and the fifth is silent.
    heard = [dominant_hz(info["pcm"], k)[1] for k in range(5)]
    assert min(heard[:4]) > 0.01 and heard[4] < 0.005
    assert await bus.length(stream_name("rec", "video")) >= 5
