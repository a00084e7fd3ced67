"""The streaming loop of FlowAct-R1: chunkwise diffusion forcing over the stream buffer.

One chunk period, `StreamingGenerator.step()` then `push()`:

1. one forward over the whole buffer, a noise level per latent frame;
2. every stream chunk moves one level down (Euler); 1-2 repeat `micro_steps` times;
3. the oldest chunk is now clean: it leaves and is returned;
4. short-term memory takes its newest latent(s), long-term memory (FIFO) what left short-term;
   every `refine_every` chunks the short-term memory is refined (paper 2.5): re-noised to
   `refine_level` and denoised with the reference and long-term memory as clean context;
5. a new pure-noise chunk enters, with the audio/text conditioning the caller gives for it.

Start (image-to-video, the time-to-first-frame path): the stream is not left empty for
`stream_chunks` periods; each chunk slot starts as the reference latent noised to that slot's
level (fresh noise), so the first forward already emits chunk 0.

Interrupt (barge-in): chunks still in the stream that were conditioned on dropped audio restart
under new conditioning. A slot's level is fixed by the schedule, so a restarted chunk is the
newest clean latent noised to its slot's level, exactly as at start; for the newest slot
(level 1) that is pure noise. Output keeps its pace: the next chunk out already follows the new
conditioning.

All randomness comes from the `torch.Generator` given to `start` (on the model's device), in a
fixed order: start draws one noise per chunk, then each period draws the refinement noise (when
due) and then the entering chunk's noise. `unrolled_generate` runs the same schedule over a
whole clip on a plain history, without the buffer class; the tests hold the two equal.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from flowact.renderer.buffer import ChunkCondition, ModelInputs, StreamBuffer
from flowact.renderer.model import FlowActMMDiT
from flowact.renderer.sampler import FlowMatchEulerSampler

# The model's call signature: (x, t, audio, text, text_mask, n_context, guidance=None) -> velocity
ForwardFn = Callable[..., Tensor]


@dataclass(frozen=True)
class StreamConfig:
    refine_every: int = 0  # chunks between memory refinements; 0 = never
    refine_level: float = 0.3  # noise level the short-term memory is re-noised to
    refine_steps: int = 1  # forwards per refinement
    guidance: float | None = None  # CFG scale for models with a CFG embedding


def _noise(like: Tensor, generator: torch.Generator) -> Tensor:
    return torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)


def _as_latent(reference: Tensor) -> Tensor:
    """Reference `[B, C, h, w]` or `[B, 1, C, h, w]` to `[B, 1, C, h, w]`."""
    return reference[:, None] if reference.dim() == 4 else reference


class StreamingGenerator:
    """Endless video latents from a reference latent and per-chunk conditioning.

    `start(reference, first conditions, generator)`, then per chunk `step()` -> clean latents
    `[B, L, C, h, w]` of chunk `next_index`, and `push(condition)` for the chunk that enters
    (`next_chunk(condition)` does both). Gradients are off; wrap in `torch.inference_mode()`
    for the fastest path.

    `forward`, when given, runs the buffer forwards instead of `model(...)` (same signature): a
    CUDA-graph replay or a batcher shared by several sessions (`flowact.renderer.accel`).
    """

    def __init__(
        self,
        model: FlowActMMDiT,
        sampler: FlowMatchEulerSampler,
        config: StreamConfig | None = None,
        forward: ForwardFn | None = None,
    ):
        if sampler.chunks != model.config.stream_chunks:
            raise ValueError("sampler.chunks must equal the preset's stream_chunks")
        self.model = model
        self.forward: ForwardFn = forward if forward is not None else model
        self.sampler = sampler
        self.config = config or StreamConfig()
        self.buffer: StreamBuffer | None = None
        self.generator: torch.Generator | None = None
        self.emitted = 0  # chunks emitted since start
        self.next_index = 0  # index of the next chunk to leave
        self._next_entry = 0  # index the next pushed chunk must have
        # set by start(), on the model's device
        self._levels = torch.empty(0)  # [micro_steps + 1, chunks] stream levels per micro-step
        self._refine_levels = torch.empty(0)  # [refine_steps + 1]
        self._guidance: Tensor | None = None  # [B]

    # -- lifecycle

    @torch.no_grad()
    def start(
        self, reference: Tensor, conditions: Sequence[ChunkCondition], generator: torch.Generator
    ) -> None:
        """Fill the buffer from a reference latent and the first `stream_chunks` conditions."""
        cfg = self.model.config
        _check_indices(conditions, conditions[0].index if conditions else 0, cfg.stream_chunks)
        param = next(self.model.parameters())
        reference = _as_latent(reference).to(param.device, param.dtype)
        batch = reference.shape[0]
        self.generator = generator
        self.buffer = StreamBuffer(cfg, batch, param.device, param.dtype)
        self.buffer.reset(reference)
        self._levels = self.sampler.level_table(param.device)  # [micro_steps + 1, chunks]
        self._refine_levels = self.sampler.refine_levels(
            self.config.refine_level, self.config.refine_steps
        ).to(param.device)
        self._guidance = None
        if self.config.guidance is not None:
            self._guidance = torch.full((batch,), self.config.guidance, device=param.device)

        anchor = reference.expand(-1, cfg.latents_per_chunk, -1, -1, -1)
        for slot, condition in enumerate(conditions):
            latents = self.sampler.add_noise(
                anchor, _noise(anchor, generator), self._levels[0, slot]
            )
            self.buffer.set_chunk(slot, latents, condition)
        self.buffer.set_stream_levels(self._levels[0])
        self.emitted = 0
        self.next_index = conditions[0].index
        self._next_entry = conditions[-1].index + 1

    @torch.no_grad()
    def step(self) -> Tensor:
        """Steps 1-4: returns the clean latents `[B, L, C, h, w]` of chunk `next_index`."""
        buffer = self._require_full()
        for micro in range(self.sampler.micro_steps):
            velocity = self._forward(buffer.model_inputs())  # 1
            self._denoise(buffer, velocity, micro)  # 2
        latents, condition = buffer.pop_oldest()  # 3
        buffer.push_memory(latents, condition)  # 4
        self.emitted += 1
        self.next_index += 1
        if self.config.refine_every and self.emitted % self.config.refine_every == 0:
            self._refine_memory(buffer)
        return latents

    @torch.no_grad()
    def push(self, condition: ChunkCondition) -> None:
        """Step 5: a new pure-noise chunk enters the newest slot with `condition`."""
        buffer = self._require_started()
        if buffer.chunk_indices[-1] is not None:
            raise RuntimeError("the stream is full: call step() before push()")
        if condition.index != self._next_entry:
            raise ValueError(f"expected chunk {self._next_entry}, got chunk {condition.index}")
        newest = self.model.config.stream_chunks - 1
        buffer.set_chunk(newest, _noise(buffer.chunk(newest), self.generator), condition)
        buffer.set_stream_levels(self._levels[0])
        self._next_entry += 1

    def next_chunk(self, condition: ChunkCondition) -> Tensor:
        """`step()` then `push(condition)`; condition is for chunk `next_index + stream_chunks`."""
        latents = self.step()
        self.push(condition)
        return latents

    @torch.no_grad()
    def interrupt(self, from_chunk: int, conditions: Sequence[ChunkCondition]) -> list[int]:
        """Restart the stream chunks with index >= `from_chunk` under new `conditions` (one per
        such chunk, in index order). Returns the indices restarted."""
        buffer = self._require_started()
        slots = [s for s, i in enumerate(buffer.chunk_indices) if i is not None and i >= from_chunk]
        indices = [buffer.chunk_indices[s] for s in slots]
        if [c.index for c in conditions] != indices:
            raise ValueError(f"interrupt needs conditions for chunks {indices}")
        anchor = buffer.short_term[:, -1:].expand(
            -1, self.model.config.latents_per_chunk, -1, -1, -1
        )
        levels = buffer.stream_levels
        for slot, condition in zip(slots, conditions, strict=True):
            noise = _noise(anchor, self.generator)
            buffer.set_chunk(slot, self.sampler.add_noise(anchor, noise, levels[slot]), condition)
        return indices

    @torch.no_grad()
    def recondition(self, conditions: Sequence[ChunkCondition]) -> list[int]:
        """New conditioning for stream chunks still being denoised; their latents stay.

        Audio that arrives after its chunk entered the stream (or a prompt given late) still
        steers the steps that chunk has left. Conditions for chunks not in the stream are
        ignored; returns the indices updated.
        """
        buffer = self._require_started()
        slots = {
            index: slot for slot, index in enumerate(buffer.chunk_indices) if index is not None
        }
        updated = []
        for condition in conditions:
            slot = slots.get(condition.index)
            if slot is not None:
                buffer.set_chunk(slot, buffer.chunk(slot).clone(), condition)
                updated.append(condition.index)
        return updated

    @property
    def pending_indices(self) -> list[int]:
        """Chunk indices in the stream now, oldest first."""
        buffer = self._require_started()
        return [i for i in buffer.chunk_indices if i is not None]

    # -- the numbered steps

    def _forward(self, inputs: ModelInputs) -> Tensor:
        return self.forward(
            inputs.x,
            inputs.t,
            inputs.audio,
            inputs.text,
            inputs.text_mask,
            inputs.n_context,
            guidance=self._guidance,
        )

    def _denoise(self, buffer: StreamBuffer, velocity: Tensor, micro: int) -> None:
        per_chunk = self.model.config.latents_per_chunk
        t = self._levels[micro].repeat_interleave(per_chunk)  # [stream latents]
        t_next = self._levels[micro + 1].repeat_interleave(per_chunk)
        stream = self.sampler.step(buffer.stream_output(velocity), t, t_next, buffer.stream)
        buffer.stream.copy_(stream)
        buffer.set_stream_levels(self._levels[micro + 1])

    def _refine_memory(self, buffer: StreamBuffer) -> None:
        levels = self._refine_levels
        short = self.sampler.add_noise(
            buffer.short_term, _noise(buffer.short_term, self.generator), levels[0]
        )
        count = self.model.config.short_term_size
        for i in range(self.config.refine_steps):
            velocity = self._forward(buffer.refine_inputs(short, levels[i]))
            short = self.sampler.step(velocity[:, -count:], levels[i], levels[i + 1], short)
        buffer.short_term.copy_(short)

    def _require_started(self) -> StreamBuffer:
        if self.buffer is None:
            raise RuntimeError("call start() first")
        return self.buffer

    def _require_full(self) -> StreamBuffer:
        buffer = self._require_started()
        if buffer.chunk_indices[-1] is None:
            raise RuntimeError("push() the entering chunk before the next step()")
        return buffer


def _check_indices(conditions: Sequence[ChunkCondition], first: int, count: int) -> None:
    indices = [c.index for c in conditions]
    if indices != list(range(first, first + count)):
        raise ValueError(f"need {count} conditions with consecutive indices, got {indices}")


# -- the same schedule, unrolled over a whole clip


@dataclass
class _Latent:
    """One clean latent of the history with the conditioning it was generated under."""

    x: Tensor  # [B, 1, C, h, w]
    audio: Tensor  # [B, 1, W, Da]
    text: Tensor  # [B, 1, P, Dt]
    text_mask: Tensor  # [B, 1, P]


def _chunk_latents(x: Tensor, condition: ChunkCondition) -> list[_Latent]:
    return [
        _Latent(
            x[:, i : i + 1],
            condition.audio[:, i : i + 1],
            condition.text[:, i : i + 1],
            condition.text_mask[:, i : i + 1],
        )
        for i in range(x.shape[1])
    ]


def _forward_frames(
    model: FlowActMMDiT,
    frames: list[_Latent],
    t: Tensor,
    n_context: int,
    guidance: Tensor | None,
) -> Tensor:
    """Model forward over a list of single-latent frames; t `[F]`."""
    x = torch.cat([f.x for f in frames], dim=1)  # [B, F, C, h, w]
    audio = torch.cat([f.audio for f in frames], dim=1)
    text = torch.cat([f.text for f in frames], dim=1)
    mask = torch.cat([f.text_mask for f in frames], dim=1)
    return model(x, t.expand(x.shape[0], -1), audio, text, mask, n_context, guidance=guidance)


@torch.no_grad()
def unrolled_generate(
    model: FlowActMMDiT,
    sampler: FlowMatchEulerSampler,
    config: StreamConfig,
    reference: Tensor,
    conditions: Sequence[ChunkCondition],
    generator: torch.Generator,
) -> Tensor:
    """What `StreamingGenerator` emits for chunks 0 .. len(conditions) - stream_chunks - 1
    (started with conditions[:stream_chunks], then `next_chunk` with each later condition),
    computed on a clip-long history list instead of the buffer; `[B, n * L, C, h, w]`.

    Chunk j, while chunk k is the oldest in the stream, has done
    `(k + chunks - 1 - j) * micro_steps + micro` Euler steps; memory is the newest latents of
    the history, padded with the reference at the old end.
    """
    cfg = model.config
    chunks, micro_steps = sampler.chunks, sampler.micro_steps
    param = next(model.parameters())
    sigmas = sampler.stream_sigmas.to(param.device)
    reference = _as_latent(reference).to(param.device, param.dtype)
    batch = reference.shape[0]
    guidance = None
    if config.guidance is not None:
        guidance = torch.full((batch,), config.guidance, device=param.device)
    empty = ChunkCondition(
        -1,
        torch.zeros(batch, 1, cfg.audio_window, cfg.audio_dim, device=param.device),
        torch.zeros(batch, 1, cfg.text_slots, cfg.text_dim, device=param.device),
        torch.zeros(batch, 1, cfg.text_slots, dtype=torch.bool, device=param.device),
    )
    ref = _chunk_latents(reference, empty)[0]
    history = [ref] * (cfg.long_term_size + cfg.short_term_size)  # reached memory, oldest first

    anchor = reference.expand(-1, cfg.latents_per_chunk, -1, -1, -1)
    noisy = {}  # chunk index -> latents in the stream
    for j in range(chunks):
        level = sigmas[(chunks - 1 - j) * micro_steps]
        noisy[j] = sampler.add_noise(anchor, _noise(anchor, generator), level)

    out = []
    for k in range(len(conditions) - chunks):
        for micro in range(micro_steps):
            _unrolled_micro_step(
                model, sampler, k, micro, ref, history, noisy, conditions, guidance
            )
        clean = noisy.pop(k)
        out.append(clean)
        history += _chunk_latents(clean, conditions[k])[-cfg.short_term_size :]
        if config.refine_every and (k + 1) % config.refine_every == 0:
            _refine_history(model, sampler, config, ref, history, guidance, generator)
        noisy[k + chunks] = _noise(anchor, generator)
    return torch.cat(out, dim=1)


def _unrolled_micro_step(
    model: FlowActMMDiT,
    sampler: FlowMatchEulerSampler,
    k: int,
    micro: int,
    ref: _Latent,
    history: list[_Latent],
    noisy: dict[int, Tensor],
    conditions: Sequence[ChunkCondition],
    guidance: Tensor | None,
) -> None:
    """One forward while chunk k is the oldest in the stream; Euler-steps chunks k.. in place."""
    cfg = model.config
    chunks, per_chunk = sampler.chunks, cfg.latents_per_chunk
    sigmas = sampler.stream_sigmas.to(ref.x.device)
    window = range(k, k + chunks)
    steps = [(k + chunks - 1 - j) * sampler.micro_steps + micro for j in window]
    frames = [ref, *history[-(cfg.long_term_size + cfg.short_term_size) :]]
    for j in window:
        frames += _chunk_latents(noisy[j], conditions[j])
    context = torch.zeros(cfg.context_latents, device=sigmas.device)
    t = torch.cat([context] + [sigmas[n].expand(per_chunk) for n in steps])
    velocity = _forward_frames(model, frames, t, cfg.context_latents, guidance)
    for pos, (j, n) in enumerate(zip(window, steps, strict=True)):
        start = cfg.context_latents + pos * per_chunk
        v = velocity[:, start : start + per_chunk]
        noisy[j] = sampler.step(v, sigmas[n], sigmas[n + 1], noisy[j])


def _refine_history(
    model: FlowActMMDiT,
    sampler: FlowMatchEulerSampler,
    config: StreamConfig,
    ref: _Latent,
    history: list[_Latent],
    guidance: Tensor | None,
    generator: torch.Generator,
) -> None:
    """Memory refinement on the history's newest short-term latents, in place."""
    cfg = model.config
    count = cfg.short_term_size
    levels = sampler.refine_levels(config.refine_level, config.refine_steps).to(ref.x.device)
    context = [ref, *history[-(cfg.long_term_size + count) : -count]]
    targets = history[-count:]
    clean = torch.cat([f.x for f in targets], dim=1)
    x = sampler.add_noise(clean, _noise(clean, generator), levels[0])
    for i in range(config.refine_steps):
        noisy = [
            _Latent(x[:, n : n + 1], f.audio, f.text, f.text_mask) for n, f in enumerate(targets)
        ]
        t = torch.cat([torch.zeros(len(context), device=x.device), levels[i].expand(count)])
        velocity = _forward_frames(model, context + noisy, t, len(context), guidance)
        x = sampler.step(velocity[:, -count:], levels[i], levels[i + 1], x)
    for n, f in enumerate(targets):
        history[len(history) - count + n] = _Latent(x[:, n : n + 1], f.audio, f.text, f.text_mask)
