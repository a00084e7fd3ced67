"""Audio and prompts aligned to chunk windows on the session clock."""

import numpy as np
import pytest

from flowact.renderer.timeline import SessionTimeline
from flowact.schemas import timebase as tb
from flowact.schemas.messages import AudioSegment, BehaviorPrompt
from flowact.schemas.pcm import float_to_s16

SPC = tb.SAMPLES_PER_CHUNK


def _ramp(n: int, offset: int = 0) -> np.ndarray:
    """Distinct, recognisable sample values: sample i of the clip is (offset + i) % 1000 / 2000."""
    return ((np.arange(n) + offset) % 1000 / 2000).astype(np.float32)


def _segments(utt: str, samples: np.ndarray, piece: int, start: int | None = None):
    pieces = [samples[i : i + piece] for i in range(0, len(samples), piece)]
    for seq, p in enumerate(pieces):
        yield AudioSegment(
            utterance=utt,
            seq=seq,
            start_sample=start if seq == 0 else None,
            pcm=float_to_s16(p),
            end=seq == len(pieces) - 1,
        )


def test_chunk_k_carries_samples_of_its_window() -> None:
    tl = SessionTimeline()
    speech = _ramp(3 * SPC + 100)
    for seg in _segments("u1", speech, 1_234, start=0):
        tl.add_audio(seg)
    for k in range(4):
        plan = tl.plan(k)
        want = np.zeros(SPC, np.float32)
        part = speech[k * SPC : (k + 1) * SPC]
        want[: len(part)] = part
        assert np.allclose(plan.audio, want, atol=1 / 32768), k
        assert plan.speaking
    assert not tl.plan(4).speaking


def test_started_and_finished_events() -> None:
    tl = SessionTimeline()
    for seg in _segments("u1", _ramp(SPC + 320), 640, start=SPC // 2):
        tl.add_audio(seg)
    first = tl.emitted(0)
    assert [(e.phase, e.sample) for e in first] == [("started", SPC // 2)]
    second = tl.emitted(1)
    assert [(e.phase, e.sample, e.frame) for e in second] == [
        ("finished", SPC // 2 + SPC + 320, (SPC // 2 + SPC + 320) // tb.SAMPLES_PER_FRAME)
    ]


def test_utterances_queue_after_each_other() -> None:
    tl = SessionTimeline()
    for seg in _segments("a", _ramp(1000), 500):
        tl.add_audio(seg)
    for seg in _segments("b", _ramp(1000, 7), 500):
        tl.add_audio(seg)
    audio = tl.plan(0).audio
    assert np.allclose(audio[1000:2000], _ramp(1000, 7), atol=1 / 32768)


def test_resampled_at_the_edge() -> None:
    tl = SessionTimeline()
    rate = 24_000
    tone = np.sin(2 * np.pi * 300 * np.arange(rate) / rate).astype(np.float32) * 0.5
    pieces = [tone[i : i + 4_800] for i in range(0, rate, 4_800)]
    for seq, p in enumerate(pieces):
        tl.add_audio(
            AudioSegment(
                utterance="u", seq=seq, rate=rate, pcm=float_to_s16(p), end=seq == len(pieces) - 1
            )
        )
    got = np.concatenate([tl.plan(k).audio for k in range(3)])[: tb.SAMPLE_RATE]
    want = 0.5 * np.sin(2 * np.pi * 300 * np.arange(tb.SAMPLE_RATE) / tb.SAMPLE_RATE)
    assert np.abs(got[50:-50] - want[50:-50]).max() < 0.02


def test_bad_sequences_are_refused() -> None:
    tl = SessionTimeline()
    with pytest.raises(ValueError, match="seq 1"):
        tl.add_audio(AudioSegment(utterance="u", seq=1, pcm=b"\0\0"))
    tl.add_audio(AudioSegment(utterance="u", seq=0, pcm=b"\0\0"))
    with pytest.raises(ValueError, match="expected 1"):
        tl.add_audio(AudioSegment(utterance="u", seq=2, pcm=b"\0\0"))


def test_interrupt_drops_unplayed_speech_and_the_rest_of_the_utterance() -> None:
    tl = SessionTimeline()
    segs = list(_segments("u", _ramp(4 * SPC), 1_600, start=0))
    for seg in segs[:15]:
        tl.add_audio(seg)
    tl.emitted(0)
    first, events = tl.interrupt()
    assert first == 1
    assert [(e.phase, e.sample) for e in events] == [("interrupted", SPC)]
    for seg in segs[15:]:
        tl.add_audio(seg)  # the agent was still streaming: ignored
    assert not tl.plan(1).audio.any() and not tl.plan(2).speaking
    assert tl.emitted(1) == []


def test_prompts_per_channel_replace_and_overlay() -> None:
    tl = SessionTimeline()
    tl.add_prompt(BehaviorPrompt(text="nods", duration_frames=48, channel="posture"))
    tl.add_prompt(BehaviorPrompt(text="smiles", start_frame=12, duration_frames=24, channel="face"))
    tl.add_prompt(
        BehaviorPrompt(text="tilts head", start_frame=24, duration_frames=24, channel="posture")
    )
    tl.add_prompt(
        BehaviorPrompt(
            text="looks left",
            start_frame=24,
            duration_frames=24,
            channel="posture",
            overlap="overlay",
        )
    )
    assert tl.plan(0).prompts == {"posture": ("nods",), "face": (), "gesture": (), "gaze": ()}
    assert tl.plan(1).prompts["face"] == ("smiles",)
    assert tl.plan(2).prompts["posture"] == ("tilts head", "looks left")
    assert tl.plan(4).prompts["posture"] == ()


def test_out_of_order_emit_is_an_error() -> None:
    tl = SessionTimeline()
    with pytest.raises(ValueError, match="out of order"):
        tl.emitted(1)


def test_changes_are_reported_from_the_earliest_chunk() -> None:
    tl = SessionTimeline()
    assert tl.take_changed() is None
    tl.add_audio(AudioSegment(utterance="u", seq=0, start_sample=3 * SPC + 5, pcm=b"\1\0" * 10))
    tl.add_prompt(BehaviorPrompt(text="nods", start_frame=2 * tb.FRAMES_PER_CHUNK))
    assert tl.take_changed() == 2
    assert tl.take_changed() is None
