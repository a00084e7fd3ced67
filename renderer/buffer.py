"""The stream buffer: a fixed-size window of latents with named slots (paper 2.1).

Frame order (the model's rotary frame positions follow it, oldest first):

    reference (1) | long-term memory (long_term_size) | short-term memory (short_term_size) |
    stream: chunk 0 (oldest, cleanest) ... chunk stream_chunks-1 (newest, noisiest)

With the default layout that is 1 + 3 + 1 + 3 x 3 = 14 latents, always: the forward never
changes shape (what CUDA graphs need). Until long-term memory has seen enough chunks its empty
slots hold copies of the reference (with the reference's empty conditioning), at the oldest end
of the FIFO, so real entries always sit at the newest end; the short-term slot starts as a copy
of the reference too. `long_term_count` / `short_term_count` say how many slots hold
generated latents.

Every slot keeps the conditioning of the latent it holds (audio window, prompt slots and their
mask), so memory latents are read with the prompts and audio they were generated under; the
reference carries zeros and an all-false mask. All storage is allocated once and updated in
place.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from flowact.renderer.presets import RendererConfig


@dataclass
class ChunkCondition:
    """Conditioning of one chunk (`L` = LATENTS_PER_CHUNK latents), given by the caller."""

    index: int  # chunk index on the session clock: chunk k covers frames [12k, 12k + 12)
    audio: Tensor  # [B, L, W, Da] audio features around each latent's frames
    text: Tensor  # [B, L, P, Dt] prompt embeddings, one slot per behavior channel
    text_mask: Tensor  # [B, L, P] bool, True where a prompt is active


@dataclass
class ModelInputs:
    """Arguments of one model forward, in the model's signature order."""

    x: Tensor  # [B, F, C, h, w]
    t: Tensor  # [B, F] noise level per latent frame
    audio: Tensor  # [B, F, W, Da]
    text: Tensor  # [B, F, P, Dt]
    text_mask: Tensor  # [B, F, P]
    n_context: int


class StreamBuffer:
    """Reference, long-term FIFO, short-term memory and the denoising stream, in one tensor."""

    def __init__(
        self,
        config: RendererConfig,
        batch: int = 1,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        cfg = self.config = config
        n = cfg.buffer_latents
        self.latents = torch.zeros(
            batch,
            n,
            cfg.latent_channels,
            cfg.latent_height,
            cfg.latent_width,
            device=device,
            dtype=dtype,
        )  # [B, N, C, h, w]
        self.levels = torch.zeros(n, device=device)  # [N] noise level, 0 on context slots
        self.audio = torch.zeros(
            batch, n, cfg.audio_window, cfg.audio_dim, device=device, dtype=dtype
        )
        self.text = torch.zeros(batch, n, cfg.text_slots, cfg.text_dim, device=device, dtype=dtype)
        self.text_mask = torch.zeros(batch, n, cfg.text_slots, device=device, dtype=torch.bool)
        self.chunk_indices: list[int | None] = [None] * cfg.stream_chunks
        self.long_term_count = 0  # memory slots holding generated latents, not placeholders
        self.short_term_count = 0

        lt, st = cfg.long_term_size, cfg.short_term_size
        self.reference_frames = slice(0, 1)
        self.long_term_frames = slice(1, 1 + lt)
        self.short_term_frames = slice(1 + lt, 1 + lt + st)
        self.stream_frames = slice(cfg.context_latents, n)

    # named slots (views into the one latent tensor)

    @property
    def reference(self) -> Tensor:
        return self.latents[:, self.reference_frames]  # [B, 1, C, h, w]

    @property
    def long_term(self) -> Tensor:
        return self.latents[:, self.long_term_frames]  # [B, long_term_size, C, h, w]

    @property
    def short_term(self) -> Tensor:
        return self.latents[:, self.short_term_frames]  # [B, short_term_size, C, h, w]

    @property
    def stream(self) -> Tensor:
        return self.latents[:, self.stream_frames]  # [B, stream_chunks * L, C, h, w]

    def chunk_slice(self, chunk: int) -> slice:
        """Buffer frames of stream chunk `chunk` (0 = oldest)."""
        start = self.config.context_latents + chunk * self.config.latents_per_chunk
        return slice(start, start + self.config.latents_per_chunk)

    def chunk(self, chunk: int) -> Tensor:
        return self.latents[:, self.chunk_slice(chunk)]  # [B, L, C, h, w]

    @property
    def stream_levels(self) -> Tensor:
        """Noise level of each stream chunk, oldest first; `[stream_chunks]`."""
        return self.levels[self.stream_frames].view(self.config.stream_chunks, -1)[:, 0]

    def set_stream_levels(self, levels: Tensor) -> None:
        """levels `[stream_chunks]`, oldest first."""
        per_latent = levels.repeat_interleave(self.config.latents_per_chunk)
        self.levels[self.stream_frames].copy_(per_latent)

    # whole-buffer updates

    def _fields(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.latents, self.audio, self.text, self.text_mask

    def _write(self, frames: slice, latents: Tensor, condition: ChunkCondition | None) -> None:
        self.latents[:, frames].copy_(latents)
        if condition is None:  # the reference's conditioning: no audio, no prompt
            self.audio[:, frames].zero_()
            self.text[:, frames].zero_()
            self.text_mask[:, frames] = False
        else:
            self.audio[:, frames].copy_(condition.audio)
            self.text[:, frames].copy_(condition.text)
            self.text_mask[:, frames].copy_(condition.text_mask)

    def _shift_in(self, frames: slice, new: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """FIFO on a slot: drop its oldest `n` frames, append `new` (n frames each) at the end.

        Returns what left (copies), field by field as in `_fields`.
        """
        count = new[0].shape[1]
        left = []
        for field, value in zip(self._fields(), new, strict=True):
            slot = field[:, frames]
            left.append(slot[:, :count].clone())
            slot.copy_(torch.cat([slot[:, count:], value.to(slot.dtype)], dim=1))
        return tuple(left)

    def reset(self, reference: Tensor) -> None:
        """Empty stream and memory; reference `[B, 1, C, h, w]` into the reference slot and,
        as placeholders, into every memory slot."""
        context = slice(0, self.config.context_latents)
        self._write(context, reference.expand_as(self.latents[:, context]), None)
        self.levels.zero_()
        self.chunk_indices = [None] * self.config.stream_chunks
        self.long_term_count = 0
        self.short_term_count = 0

    def set_chunk(self, chunk: int, latents: Tensor, condition: ChunkCondition) -> None:
        """Stream chunk `chunk` (0 = oldest) takes latents `[B, L, C, h, w]` and `condition`."""
        self._write(self.chunk_slice(chunk), latents, condition)
        self.chunk_indices[chunk] = condition.index

    def pop_oldest(self) -> tuple[Tensor, ChunkCondition]:
        """The oldest chunk leaves; the others move one chunk older, levels and all.

        Returns the leaving chunk's latents `[B, L, C, h, w]` and condition (copies). The newest
        slot is then free (index None) until `set_chunk(stream_chunks - 1, ...)` fills it.
        """
        per_chunk = self.config.latents_per_chunk
        stream = self.stream_frames
        leaving = [field[:, stream][:, :per_chunk].clone() for field in self._fields()]
        for field in (*self._fields(), self.levels[None]):
            slot = field[:, stream]
            slot.copy_(torch.cat([slot[:, per_chunk:], slot[:, :per_chunk]], dim=1))
        index = self.chunk_indices.pop(0)
        self.chunk_indices.append(None)
        latents, audio, text, mask = leaving
        return latents, ChunkCondition(index, audio, text, mask)

    def push_memory(self, latents: Tensor, condition: ChunkCondition) -> None:
        """A clean chunk `[B, L, C, h, w]` updates memory: short-term takes its newest latents,
        long-term (FIFO) takes what left the short-term slot."""
        newest = -self.config.short_term_size
        new = (latents, condition.audio, condition.text, condition.text_mask)
        left = self._shift_in(self.short_term_frames, tuple(v[:, newest:] for v in new))
        self._shift_in(self.long_term_frames, left)
        # what left short-term is real only once short-term had held a generated latent
        self.long_term_count = min(
            self.long_term_count + self.short_term_count, self.config.long_term_size
        )
        self.short_term_count = self.config.short_term_size

    # model inputs

    def model_inputs(self) -> ModelInputs:
        """The whole buffer as one forward's input; the context is everything before the stream."""
        batch = self.latents.shape[0]
        return ModelInputs(
            x=self.latents,
            t=self.levels.expand(batch, -1),
            audio=self.audio,
            text=self.text,
            text_mask=self.text_mask,
            n_context=self.config.context_latents,
        )

    def stream_output(self, output: Tensor) -> Tensor:
        """The stream frames of a whole-buffer model output `[B, N, ...]`."""
        return output[:, self.stream_frames]

    def refine_inputs(self, short_term: Tensor, level: Tensor) -> ModelInputs:
        """Memory refinement input: reference and long-term memory as clean context, the
        re-noised short-term memory `[B, short_term_size, C, h, w]` at `level` as the one to
        denoise. Frames keep their buffer positions (0 .. context_latents - 1)."""
        context = slice(0, self.config.context_latents)
        anchors = self.short_term_frames.start
        x = torch.cat([self.latents[:, :anchors], short_term.to(self.latents.dtype)], dim=1)
        t = torch.cat([self.levels[:anchors], level.expand(self.config.short_term_size)])
        # contiguous copies: a strided view can take another kernel path and round differently
        return ModelInputs(
            x=x,
            t=t.expand(x.shape[0], -1),
            audio=self.audio[:, context].contiguous(),
            text=self.text[:, context].contiguous(),
            text_mask=self.text_mask[:, context].contiguous(),
            n_context=anchors,
        )
