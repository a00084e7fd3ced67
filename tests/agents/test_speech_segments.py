import asyncio

import numpy as np
from agent_harness import SESSION, espeak

from flowact.agents.behavior import BehaviorScheduler
from flowact.agents.clock import ManualClock
from flowact.agents.espeak_tts import parse_wav, split_sentences
from flowact.agents.outbox import BusOutbox
from flowact.agents.passthrough_tts import PassthroughTTS
from flowact.agents.speaker import Speaker
from flowact.bus.memory import MemoryBus
from flowact.planner.heuristic import HeuristicPlanner
from flowact.schemas import codec
from flowact.schemas import timebase as tb
from flowact.schemas.pcm import float_to_s16, s16_to_float
from flowact.schemas.streams import stream_name

TEXT = "Hello there! This is a test of the speech path. Does it sound right?"


def rig(clock: ManualClock, **kw: int) -> tuple[MemoryBus, Speaker]:
    bus = MemoryBus()
    outbox = BusOutbox(bus, SESSION)
    behaviors = BehaviorScheduler(HeuristicPlanner(seed=2), outbox, clock)
    return bus, Speaker(outbox, clock, behaviors, **kw)


async def decoded(bus: MemoryBus, kind: str) -> list:
    return [codec.decode(e.fields) for e in await bus.entries(stream_name(SESSION, kind))]


async def test_espeak_speech_is_published_as_contiguous_16k_segments() -> None:
    clock = ManualClock()
    bus, speaker = rig(clock, segment_ms=200, lead_ms=100_000)
    whole = b"".join([p.pcm async for p in espeak().stream(TEXT)])
    start = 3 * tb.SAMPLES_PER_CHUNK
    spoken = await speaker.speak("u1", start, espeak().stream(TEXT), captioned=False)
    await speaker.behaviors.idle()

    segments = await decoded(bus, "audio")
    assert [s.seq for s in segments] == list(range(len(segments)))
    assert {s.rate for s in segments} == {tb.SAMPLE_RATE} and {s.utterance for s in segments} == {
        "u1"
    }
    assert [s.end for s in segments] == [False] * (len(segments) - 1) + [True]
    cursor = start
    for s in segments:
        assert s.start_sample == cursor
        cursor += s.samples
    assert all(s.samples == 200 * 16 for s in segments[:-1])
    assert 20 * 16 <= segments[-1].samples <= 500 * 16
    assert b"".join(s.pcm for s in segments) == whole  # nothing lost, nothing added
    assert spoken.end == cursor == start + len(whole) // 2
    assert 2.5 < len(whole) / 2 / tb.SAMPLE_RATE < 8  # it really is speech of that text
    assert spoken.text.split() == TEXT.split()
    (transcript,) = await decoded(bus, "events")
    assert transcript.text == spoken.text and transcript.utterance == "u1"

    prompts = await decoded(bus, "behavior")
    first, last = start // tb.SAMPLES_PER_FRAME, -(-cursor // tb.SAMPLES_PER_FRAME)
    assert prompts and all(first <= p.start_frame < last for p in prompts)
    assert any("wave" in p.text for p in prompts)  # "Hello" at the start
    assert any(p.channel == "face" for p in prompts if p.start_frame > (first + last) // 2)


async def test_publishing_is_paced_lead_ahead_of_playback() -> None:
    clock = ManualClock()
    bus, speaker = rig(clock, segment_ms=240, lead_ms=480)
    task = asyncio.create_task(
        speaker.speak("u2", tb.SAMPLES_PER_CHUNK, espeak().stream(TEXT), captioned=True)
    )
    await asyncio.sleep(0.3)
    # At 0, segments that start up to 0.48 s ahead are out: those at 0.48 s (the first) only.
    assert [s.start_sample for s in await decoded(bus, "audio")] == [tb.SAMPLES_PER_CHUNK]
    clock.set(tb.SAMPLES_PER_CHUNK)
    await asyncio.sleep(0.05)
    assert len(await decoded(bus, "audio")) == 3  # starts at 0.48, 0.72 and 0.96 s
    clock.advance(60 * tb.SAMPLE_RATE)
    spoken = await asyncio.wait_for(task, 5)
    segments = await decoded(bus, "audio")
    assert segments[-1].end and segments[-1].start_sample + segments[-1].samples == spoken.end
    assert not [m for m in await decoded(bus, "events") if m.type == "transcript"]  # captioned
    await speaker.behaviors.close()


async def test_handed_in_speech_at_24k_is_resampled_and_published() -> None:
    clock = ManualClock()
    bus, speaker = rig(clock, segment_ms=100, lead_ms=100_000)
    tts = PassthroughTTS()
    t = np.arange(24_000) / 24_000
    tone = float_to_s16(0.3 * np.sin(2 * np.pi * 220 * t))  # 1 s at 24 kHz
    pieces = [tone[i : i + 2 * 2400] for i in range(0, len(tone), 2 * 2400)]  # 100 ms each
    assert tts.hand_in(pieces[0], 24_000, text="A tone")
    task = asyncio.create_task(speaker.speak("u3", 0, tts.stream(), captioned=False))
    for piece in pieces[1:-1]:
        assert not tts.hand_in(piece, 24_000)
        await asyncio.sleep(0)
    tts.hand_in(pieces[-1], 24_000, text="for you.", end=True)
    spoken = await asyncio.wait_for(task, 5)
    await speaker.behaviors.close()
    segments = await decoded(bus, "audio")
    assert spoken.end == tb.SAMPLE_RATE  # 1 s of speech is 16,000 samples on the clock
    assert sum(s.samples for s in segments) == tb.SAMPLE_RATE and segments[-1].end
    x = s16_to_float(b"".join(s.pcm for s in segments))[400:-400]
    peak = np.abs(np.fft.rfft(x)).argmax() * tb.SAMPLE_RATE / len(x)
    assert abs(peak - 220) < 3  # the tone survived resampling
    assert spoken.text == "A tone for you."


def test_sentences_and_pipe_wavs() -> None:
    assert split_sentences("Hi! How are you? Fine.") == ["Hi!", "How are you?", "Fine."]
    assert split_sentences("no punctuation") == ["no punctuation"]
    header = b"RIFF\xff\xff\xff\x7fWAVEfmt \x10\x00\x00\x00\x01\x00\x01\x00\x22\x56\x00\x00"
    header += b"\x44\xac\x00\x00\x02\x00\x10\x00data\xff\xff\xff\x7f"
    assert parse_wav(header + b"\x01\x00\x02\x00\x03") == (22_050, b"\x01\x00\x02\x00")
