"""SessionRenderer: plans to conditioning, late input, barge-in, frames out."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flowact.renderer.engine import RendererParts, SessionRenderer
from flowact.renderer.timeline import SessionTimeline
from flowact.schemas import timebase as tb
from flowact.schemas.messages import AudioSegment
from flowact.schemas.pcm import float_to_s16


@pytest.fixture(scope="module")
def parts() -> RendererParts:
    return RendererParts.build("tiny", text_encoder="hash")


def started(parts: RendererParts) -> tuple[SessionRenderer, SessionTimeline]:
    renderer, timeline = SessionRenderer(parts, seed=5), SessionTimeline()
    renderer.start(None, [timeline.plan(i) for i in range(renderer.lookahead)])
    return renderer, timeline


def speak(timeline: SessionTimeline, chunk: int) -> None:
    rng = np.random.default_rng(chunk)
    pcm = float_to_s16(rng.uniform(-0.5, 0.5, tb.SAMPLES_PER_CHUNK).astype(np.float32))
    timeline.add_audio(
        AudioSegment(
            utterance=f"u{chunk}",
            seq=0,
            pcm=pcm,
            end=True,
            start_sample=chunk * tb.SAMPLES_PER_CHUNK,
        )
    )


def test_frames_of_a_chunk(parts: RendererParts) -> None:
    renderer, timeline = started(parts)
    frames = renderer.decode(renderer.step(timeline.plan(renderer.lookahead)))
    assert frames.shape == (tb.FRAMES_PER_CHUNK, 32, 32, 3) and frames.dtype == np.uint8


def test_late_audio_reconditions_chunks_in_the_stream_and_keeps_their_latents(parts) -> None:
    renderer, timeline = started(parts)
    buffer = renderer.generator.buffer
    latents, audio = buffer.latents.clone(), buffer.audio.clone()
    speak(timeline, 1)
    changed = timeline.take_changed()
    assert changed == 1
    plans = [timeline.plan(i) for i in range(renderer.lookahead)]
    assert renderer.refresh(changed, plans) == [1, 2]  # chunk 2's window overlaps chunk 1's audio
    assert torch.equal(buffer.latents, latents)
    slot = buffer.chunk_slice(1)
    assert not torch.equal(buffer.audio[:, slot], audio[:, slot])
    assert torch.equal(buffer.audio[:, buffer.chunk_slice(0)], audio[:, buffer.chunk_slice(0)])


def test_refresh_equals_knowing_the_audio_from_the_start(parts) -> None:
    """Conditioning recomputed late is the conditioning the chunk would have had."""
    early, early_tl = SessionRenderer(parts, seed=5), SessionTimeline()
    speak(early_tl, 2)
    early.start(None, [early_tl.plan(i) for i in range(early.lookahead)])
    late, late_tl = started(parts)
    speak(late_tl, 2)
    late.refresh(late_tl.take_changed(), [late_tl.plan(i) for i in range(late.lookahead)])
    assert torch.allclose(late.generator.buffer.audio, early.generator.buffer.audio)


def test_interrupt_renoises_the_chunks_it_drops(parts) -> None:
    renderer, timeline = started(parts)
    for k in range(3):
        speak(timeline, k)
    renderer.refresh(timeline.take_changed(), [timeline.plan(i) for i in range(3)])
    renderer.step(timeline.plan(3))
    timeline.emitted(0)
    buffer = renderer.generator.buffer
    before = buffer.latents.clone()
    first, _ = timeline.interrupt()
    plans = [timeline.plan(i) for i in range(1, 4)]
    assert renderer.interrupt(first, plans) == [1, 2, 3]
    stream = buffer.stream_frames
    assert not torch.equal(buffer.latents[:, stream], before[:, stream])
    assert not any(plan.audio.any() for plan in plans)  # the speech after the cut is gone


def test_priming_a_thread_leaves_sessions_as_they_were(parts: RendererParts) -> None:
    """`prime` runs the shared VAE and audio encoder, and must not change what they render."""
    before = SessionRenderer(parts, seed=3)
    renderer, timeline = started(parts)
    expected = renderer.decode(renderer.step(timeline.plan(renderer.lookahead)))
    before.prime(chunks=3)
    before.close()
    renderer, timeline = started(parts)
    assert np.array_equal(
        renderer.decode(renderer.step(timeline.plan(renderer.lookahead))), expected
    )
