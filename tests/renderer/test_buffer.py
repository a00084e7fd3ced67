import pytest
import torch

from flowact.renderer.buffer import ChunkCondition, StreamBuffer
from flowact.renderer.presets import PRESETS

CFG = PRESETS["tiny"]
L = CFG.latents_per_chunk
B = 2


def _latents(value: float, frames: int) -> torch.Tensor:
    shape = (B, frames, CFG.latent_channels, CFG.latent_height, CFG.latent_width)
    return torch.full(shape, value)


def _condition(index: int) -> ChunkCondition:
    return ChunkCondition(
        index,
        torch.full((B, L, CFG.audio_window, CFG.audio_dim), float(index)),
        torch.full((B, L, CFG.text_slots, CFG.text_dim), -float(index)),
        torch.ones(B, L, CFG.text_slots, dtype=torch.bool),
    )


def _chunk(index: int) -> torch.Tensor:
    """Chunk `index` whose latent i holds the value index + i / 10."""
    values = [index + i / 10 for i in range(L)]
    return torch.cat([_latents(v, 1) for v in values], dim=1)


def _filled() -> StreamBuffer:
    buffer = StreamBuffer(CFG, batch=B)
    buffer.reset(_latents(-1.0, 1))
    for slot in range(CFG.stream_chunks):
        buffer.set_chunk(slot, _chunk(slot), _condition(slot))
    buffer.set_stream_levels(torch.tensor([0.25, 0.5, 1.0]))
    return buffer


def _first_values(x: torch.Tensor) -> list[float]:
    return [round(v, 3) for v in x[0, :, 0, 0, 0].tolist()]


def test_fixed_size_and_slot_order():
    buffer = _filled()
    assert CFG.buffer_latents == 14
    inputs = buffer.model_inputs()
    assert inputs.x.shape == (B, 14, CFG.latent_channels, CFG.latent_height, CFG.latent_width)
    assert inputs.t.shape == (B, 14)
    assert inputs.audio.shape == (B, 14, CFG.audio_window, CFG.audio_dim)
    assert inputs.text.shape == (B, 14, CFG.text_slots, CFG.text_dim)
    assert inputs.text_mask.shape == (B, 14, CFG.text_slots)
    assert inputs.n_context == 5
    slots = [buffer.reference, buffer.long_term, buffer.short_term, buffer.stream]
    assert [s.shape[1] for s in slots] == [1, 3, 1, 9]
    torch.testing.assert_close(torch.cat(slots, dim=1), inputs.x)
    # empty memory holds reference copies with the reference's empty conditioning
    assert _first_values(inputs.x)[:5] == [-1.0] * 5
    assert buffer.long_term_count == 0
    assert not inputs.text_mask[:, :5].any() and inputs.audio[:, :5].abs().max() == 0
    # stream oldest first, levels per chunk, context clean
    assert _first_values(buffer.stream)[::L] == [0.0, 1.0, 2.0]
    assert inputs.t[0].tolist() == [0.0] * 5 + [0.25] * 3 + [0.5] * 3 + [1.0] * 3
    assert buffer.chunk_indices == [0, 1, 2]


def test_pop_oldest_and_refill():
    buffer = _filled()
    latents, condition = buffer.pop_oldest()
    assert condition.index == 0
    torch.testing.assert_close(latents, _chunk(0))
    assert condition.audio.unique().tolist() == [0.0]
    assert buffer.chunk_indices == [1, 2, None]
    assert _first_values(buffer.stream)[: 2 * L : L] == [1.0, 2.0]
    assert buffer.stream_levels[:2].tolist() == [0.5, 1.0]  # levels travel with their chunks
    assert buffer.audio[0, buffer.chunk_slice(0), 0, 0].tolist() == [1.0] * L
    buffer.set_chunk(2, _chunk(3), _condition(3))
    assert buffer.chunk_indices == [1, 2, 3]


def test_memory_fifo():
    buffer = _filled()
    ptrs = [t.data_ptr() for t in (buffer.latents, buffer.audio, buffer.text, buffer.levels)]
    for k in range(6):
        latents, condition = buffer.pop_oldest()
        buffer.push_memory(latents, condition)
        buffer.set_chunk(2, _chunk(k + 3), _condition(k + 3))
        # short-term: newest latent of chunk k; long-term: newest latents of chunks k-3..k-1
        assert _first_values(buffer.short_term) == [k + 0.2]
        expected_long = [j + 0.2 if j >= 0 else -1.0 for j in range(k - 3, k)]
        assert _first_values(buffer.long_term) == expected_long
        assert buffer.long_term_count == min(k, 3) and buffer.short_term_count == 1
        # each memory latent keeps its own conditioning
        long_audio = buffer.audio[0, buffer.long_term_frames, 0, 0].tolist()
        assert long_audio == [float(max(j, 0)) if j >= 0 else 0.0 for j in range(k - 3, k)]
        assert buffer.text_mask[0, buffer.short_term_frames].all()
        assert buffer.model_inputs().x.shape[1] == 14
    # everything was updated in place: addresses never change (what CUDA graphs need)
    assert ptrs == [
        t.data_ptr() for t in (buffer.latents, buffer.audio, buffer.text, buffer.levels)
    ]


def test_refine_inputs_layout():
    buffer = _filled()
    noisy = _latents(9.0, 1)
    inputs = buffer.refine_inputs(noisy, torch.tensor(0.3))
    assert inputs.n_context == 1 + CFG.long_term_size
    assert inputs.x.shape[1] == CFG.context_latents
    assert _first_values(inputs.x) == [-1.0] * 4 + [9.0]
    assert inputs.t[0].tolist() == pytest.approx([0.0] * 4 + [0.3])
    assert inputs.audio.shape[1] == inputs.text.shape[1] == inputs.text_mask.shape[1] == 5
