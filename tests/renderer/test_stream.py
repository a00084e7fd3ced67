import dataclasses
import gc
import tracemalloc

import pytest
import torch

from flowact.renderer.buffer import ChunkCondition
from flowact.renderer.model import FlowActMMDiT
from flowact.renderer.presets import PRESETS
from flowact.renderer.sampler import FlowMatchEulerSampler
from flowact.renderer.stream import StreamConfig, StreamingGenerator, unrolled_generate

CFG = PRESETS["tiny"]
L = CFG.latents_per_chunk
B = 2


@pytest.fixture(scope="module")
def model() -> FlowActMMDiT:
    torch.manual_seed(0)
    return FlowActMMDiT(CFG).eval()


@pytest.fixture(autouse=True)
def one_thread():
    # the tiny model is dominated by per-op overhead; more threads only add contention
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def condition(index: int, batch: int = B, seed: int = 0) -> ChunkCondition:
    gen = torch.Generator().manual_seed(1000 * seed + index)
    return ChunkCondition(
        index,
        torch.randn(batch, L, CFG.audio_window, CFG.audio_dim, generator=gen),
        torch.randn(batch, L, CFG.text_slots, CFG.text_dim, generator=gen),
        torch.rand(batch, L, CFG.text_slots, generator=gen) > 0.3,
    )


def reference(batch: int = B) -> torch.Tensor:
    gen = torch.Generator().manual_seed(42)
    return torch.randn(
        batch, CFG.latent_channels, CFG.latent_height, CFG.latent_width, generator=gen
    )


def started(model, config: StreamConfig | None = None, micro_steps: int = 1, seed: int = 5):
    sampler = FlowMatchEulerSampler(shift=3.0, chunks=CFG.stream_chunks, micro_steps=micro_steps)
    gen = StreamingGenerator(model, sampler, config)
    gen.start(reference(), [condition(i) for i in range(3)], torch.Generator().manual_seed(seed))
    return gen


@pytest.mark.parametrize(
    "micro_steps,config",
    [
        (1, StreamConfig()),
        (1, StreamConfig(refine_every=2, refine_level=0.4, guidance=3.0)),
        (2, StreamConfig(refine_every=3, refine_steps=2)),
    ],
)
def test_streaming_equals_unrolled(model, micro_steps, config):
    chunks = 7
    gen = started(model, config, micro_steps)
    streamed = torch.cat([gen.next_chunk(condition(k + 3)) for k in range(chunks)], dim=1)
    sampler = FlowMatchEulerSampler(shift=3.0, chunks=CFG.stream_chunks, micro_steps=micro_steps)
    conditions = [condition(i) for i in range(chunks + 3)]
    offline = unrolled_generate(
        model, sampler, config, reference(), conditions, torch.Generator().manual_seed(5)
    )
    assert streamed.shape == (B, chunks * L, CFG.latent_channels, 4, 4)
    torch.testing.assert_close(streamed, offline, atol=1e-6, rtol=0)
    assert streamed[:, :L].std() > 0.1  # not a degenerate constant


def test_same_seed_same_stream(model):
    a, b, c = started(model), started(model), started(model, seed=6)
    out = [torch.cat([g.next_chunk(condition(k + 3)) for k in range(3)], 1) for g in (a, b, c)]
    assert torch.equal(out[0], out[1])
    assert not torch.allclose(out[0], out[2])


def test_start_is_image_to_video(model):
    gen = started(model)
    # every slot starts as the reference noised to its level, drawn in slot order
    noise_gen = torch.Generator().manual_seed(5)
    ref = reference()[:, None].expand(-1, L, -1, -1, -1)
    levels = gen.sampler.stream_levels(0)
    assert levels.tolist() == pytest.approx([0.6, 6 / 7, 1.0])
    for slot in range(CFG.stream_chunks):
        noise = torch.randn(ref.shape, generator=noise_gen)
        expected = (1 - levels[slot]) * ref + levels[slot] * noise
        torch.testing.assert_close(gen.buffer.chunk(slot), expected)
    # the first chunk leaves after micro_steps forwards, not after a full pass of the stream
    forwards = []
    handle = model.register_forward_hook(lambda *_: forwards.append(1))
    first = gen.step()
    handle.remove()
    assert len(forwards) == 1 and first.shape == (B, L, CFG.latent_channels, 4, 4)
    assert gen.next_index == 1 and gen.pending_indices == [1, 2]


@pytest.mark.filterwarnings("ignore::FutureWarning")  # scanning gc objects touches deprecated names
def test_long_stream_memory_is_flat_and_positions_bounded():
    total, warmup, settle, refine_every = 1100, 50, 250, 7
    # the loop's bookkeeping is under test, not the network: the smallest model will do
    torch.manual_seed(0)
    model = FlowActMMDiT(dataclasses.replace(CFG, depth=1, dim=32, ffn_dim=64)).eval()
    sampler = FlowMatchEulerSampler(chunks=CFG.stream_chunks)
    gen = StreamingGenerator(model, sampler, StreamConfig(refine_every=refine_every))
    first = [condition(i, batch=1) for i in range(3)]
    gen.start(reference(batch=1), first, torch.Generator().manual_seed(0))
    template = condition(0, batch=1)
    seen = {"forwards": 0, "max_frame": 0}

    def record(_module, args, _out) -> None:
        seen["forwards"] += 1
        seen["max_frame"] = max(seen["max_frame"], int(args[0][:, 0].max()))

    def run(start: int, stop: int) -> None:
        for k in range(start, stop):
            cond = ChunkCondition(k + 3, template.audio, template.text, template.text_mask)
            out = gen.next_chunk(cond)
        assert torch.isfinite(out).all()

    hook = model.rope.register_forward_hook(record)
    try:
        run(0, warmup)
        gc.collect()
        tensors_before = sum(torch.is_tensor(o) for o in gc.get_objects())
        tracemalloc.start()
        run(warmup, warmup + settle)  # let allocator and dispatcher caches settle
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        run(warmup + settle, total)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        tensors_after = sum(torch.is_tensor(o) for o in gc.get_objects())
    finally:
        hook.remove()
    assert gen.next_index == total
    # Python heap gained over the last 800 chunks (measured ~12 KB of allocator drift);
    # keeping one tensor object per chunk would add > 60 KB
    assert after - before < 32 * 1024
    assert tensors_after == tensors_before
    # rotary frame positions stay inside the 14-latent buffer however long the stream runs
    assert seen["max_frame"] == CFG.buffer_latents - 1
    assert seen["forwards"] == total + total // refine_every  # a forward a chunk + refinements


def test_refinement_changes_only_short_term(model):
    plain = started(model, StreamConfig())
    refined = started(model, StreamConfig(refine_every=3, refine_level=0.5))
    for k in range(2):
        plain.next_chunk(condition(k + 3))
        refined.next_chunk(condition(k + 3))
    out_plain, out_refined = plain.step(), refined.step()  # the third chunk: refinement due
    assert torch.equal(out_plain, out_refined)  # refinement acts after the chunk left
    a, b = plain.buffer, refined.buffer
    short = a.short_term_frames
    assert not torch.allclose(a.latents[:, short], b.latents[:, short], atol=1e-3)
    keep = [i for i in range(CFG.buffer_latents) if i not in range(short.start, short.stop)]
    assert torch.equal(a.latents[:, keep], b.latents[:, keep])
    for field in ("audio", "text", "text_mask", "levels"):
        assert torch.equal(getattr(a, field), getattr(b, field))
    assert a.chunk_indices == b.chunk_indices
    # the refined latent is what long-term memory inherits next
    refined_short = b.short_term.clone()
    refined.push(condition(5))
    refined.step()
    torch.testing.assert_close(b.long_term[:, -1:], refined_short)


def test_interrupt_restarts_chunks_from_newest_latent(model):
    gen = started(model)
    for k in range(4):
        gen.next_chunk(condition(k + 3))
    assert gen.pending_indices == [4, 5, 6]
    buffer = gen.buffer
    before = buffer.latents.clone()
    state = gen.generator.get_state()
    new = [condition(i, seed=9) for i in (5, 6)]
    assert gen.interrupt(5, new) == [5, 6]

    # chunk 4 keeps its latents and conditioning; 5 and 6 restart under the new conditioning
    torch.testing.assert_close(buffer.chunk(0), before[:, buffer.chunk_slice(0)])
    replay = torch.Generator().set_state(state)
    anchor = before[:, buffer.short_term_frames][:, -1:].expand(-1, L, -1, -1, -1)
    for slot, cond in zip((1, 2), new, strict=True):
        level = buffer.stream_levels[slot]
        noise = torch.randn(anchor.shape, generator=replay)
        torch.testing.assert_close(buffer.chunk(slot), (1 - level) * anchor + level * noise)
        torch.testing.assert_close(buffer.audio[:, buffer.chunk_slice(slot)], cond.audio)
    torch.testing.assert_close(buffer.chunk(2), noise)  # the newest slot is pure noise
    assert buffer.stream_levels.tolist() == pytest.approx([0.6, 6 / 7, 1.0])
    assert gen.pending_indices == [4, 5, 6]

    out = gen.next_chunk(condition(7, seed=9))
    assert gen.next_index == 5 and torch.isfinite(out).all()


def test_interrupt_edges(model):
    gen = started(model)
    gen.next_chunk(condition(3))
    assert gen.interrupt(10, []) == []  # nothing in the stream depends on the dropped audio
    with pytest.raises(ValueError, match=r"\[2, 3\]"):
        gen.interrupt(2, [condition(2)])
    # a chunk already emitted cannot be taken back: everything pending restarts
    assert gen.interrupt(0, [condition(i, seed=3) for i in (1, 2, 3)]) == [1, 2, 3]
    # between step() and push() the free slot is not restarted
    gen.step()
    assert gen.interrupt(0, [condition(i, seed=4) for i in (2, 3)]) == [2, 3]
    gen.push(condition(4))
    assert gen.pending_indices == [2, 3, 4]


def test_call_order_is_enforced(model):
    gen = started(model)
    gen.step()
    with pytest.raises(RuntimeError, match="push"):
        gen.step()
    with pytest.raises(ValueError, match="expected chunk 3"):
        gen.push(condition(4))
    gen.push(condition(3))
    with pytest.raises(RuntimeError, match="step"):
        gen.push(condition(4))
    with pytest.raises(RuntimeError, match="start"):
        StreamingGenerator(model, FlowMatchEulerSampler()).step()


def test_sampler_schedule_and_exact_straight_path():
    sampler = FlowMatchEulerSampler(shift=3.0, chunks=3, micro_steps=2)
    assert sampler.nfe_per_chunk == 6
    sigmas = sampler.stream_sigmas
    assert sigmas[0] == 1 and sigmas[-1] == 0 and (sigmas[1:] < sigmas[:-1]).all()
    assert (sigmas[1:-1] > torch.linspace(1, 0, 7)[1:-1]).all()  # shift > 1 keeps more noise
    table = sampler.level_table()
    assert table.shape == (3, 3)
    assert torch.equal(table[-1, 1:], table[0, :-1])  # after a period each chunk is one slot on
    assert table[-1, 0] == 0 and table[0, -1] == 1
    assert sampler.refine_levels(0.4, 2)[0] == pytest.approx(0.4)
    # flow matching paths are straight: with the true velocity one Euler step lands exactly
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 3, 4, 4, 4, generator=gen), torch.randn(2, 3, 4, 4, 4, generator=gen)
    t = torch.tensor([[0.9, 0.5, 0.2], [1.0, 0.3, 0.6]])
    x_t = sampler.add_noise(x0, noise, t)
    landed = sampler.step(noise - x0, t, torch.zeros_like(t), x_t)
    torch.testing.assert_close(landed, x0)
    assert torch.equal(sampler.add_noise(x0, noise, torch.ones(3)), noise)  # [F] levels broadcast
