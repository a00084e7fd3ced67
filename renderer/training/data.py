"""Training data for the DiT: clips of a `ClipSource` (the world's, or prepared footage) as VAE
latents, and batches in the stream-buffer layout.

`LatentSet` holds long clips, encoded once: latent 0 is the clip's reference frame (the world's
neutral pose), latent `1 + j` the session's latent j (4 frames); the clip's 16 kHz speech; and
per chunk the prompt id active on each channel (the renderer conditions a whole chunk on the
prompts active at its centre frame; the world switches behaviors on chunk boundaries).

`sample_buffer` cuts a buffer out of it exactly as `StreamBuffer` lays one out at inference
while chunk k is the oldest in the stream:

    reference | long-term: last latent of chunks k-4, k-3, k-2 | short-term: last latent of
    chunk k-1 | stream: chunks k, k+1, k+2

with memory slots of chunks before the session start holding the reference with empty
conditioning (the buffer's placeholders). `audio_windows` turns speech into per-latent windows
as the engine does: features of a causal encoder, grouped per chunk with the trailing overlap of
each chunk's last latent zero (the next chunk's audio is not known when a chunk enters).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from flowact.renderer.buffer import ChunkCondition
from flowact.renderer.presets import RendererConfig
from flowact.renderer.training import world
from flowact.renderer.training.base import ClipSource
from flowact.renderer.training.prompt_mix import PromptMix
from flowact.schemas.timebase import FRAMES_PER_CHUNK, FRAMES_PER_LATENT, SAMPLES_PER_CHUNK

MEMORY_CHUNKS = 4  # chunks whose last latent can sit in memory: long-term 3 + short-term 1
PREROLL_CHUNKS = 5  # audio before the window: longer than the audio encoder's receptive field


@dataclass
class LatentSet:
    latents: Tensor  # [N, 1 + 3 * chunks, C, h, w] normalised, latent 0 = reference
    pcm: Tensor  # [N, chunks * 7680]
    prompt: Tensor  # [N, chunks, channels] prompt id per chunk, -1 none
    identity: Tensor | None = None  # [N, IDENTITY_DIM]; None for footage

    @property
    def chunks(self) -> int:
        return self.prompt.shape[1]

    def __len__(self) -> int:
        return self.latents.shape[0]


@torch.no_grad()
def build_latent_set(
    vae: torch.nn.Module,
    source: ClipSource,
    clips: int,
    chunks: int,
    rng: np.random.Generator,
    device: torch.device,
    batch: int = 8,
    dtype: torch.dtype = torch.bfloat16,
) -> LatentSet:
    """Draw `clips` clips of `chunks` chunks from `source` and encode them with `vae`
    (deterministic)."""
    parts: dict[str, list[Tensor]] = {"latents": [], "pcm": [], "prompt": [], "identity": []}
    centre = FRAMES_PER_CHUNK // 2
    for start in range(0, clips, batch):
        clip = source.make(min(batch, clips - start), chunks, rng, device)
        parts["latents"].append(vae.encode(clip.frames).to(dtype))
        parts["pcm"].append(clip.pcm.to(dtype))
        parts["prompt"].append(clip.prompt[:, centre::FRAMES_PER_CHUNK])
        if clip.identity is not None:
            parts["identity"].append(clip.identity)
    return LatentSet(**{k: torch.cat(v) if v else None for k, v in parts.items()})


# ------------------------------------------------------------------------------------ audio


def chunk_windows(features: Tensor, overlap: int) -> Tensor:
    """Features `[B, n * 12, Da]` -> per-latent windows `[B, n * 3, 4 + 2o, Da]`, each chunk's
    windows with the previous chunk's last `overlap` features on the left (zeros for the
    first) and zeros past its own end, as `AudioGroupStream.push(...).current` gives them."""
    b, frames, dim = features.shape
    n = frames // FRAMES_PER_CHUNK
    chunks = features.view(b, n, FRAMES_PER_CHUNK, dim)
    left = torch.cat([chunks.new_zeros(b, 1, overlap, dim), chunks[:, :-1, -overlap:]], 1)
    right = chunks.new_zeros(b, n, overlap, dim)
    padded = torch.cat([left, chunks, right], 2)  # [B, n, 12 + 2o, Da]
    size = FRAMES_PER_LATENT + 2 * overlap
    windows = padded.unfold(2, size, FRAMES_PER_LATENT)  # [B, n, 3, Da, W]
    return windows.permute(0, 1, 2, 4, 3).reshape(b, n * 3, size, dim)


def audio_windows(encoder: torch.nn.Module, pcm: Tensor, overlap: int) -> Tensor:
    """PCM `[B, S]` (S a whole number of chunks) -> windows `[B, S / 2560, W, Da]`."""
    return chunk_windows(encoder(pcm.float()), overlap)


# ---------------------------------------------------------------------------------- buffers


@dataclass
class BufferBatch:
    """One batch in the buffer layout (`F = config.buffer_latents` frames)."""

    x0: Tensor  # [B, F, C, h, w] clean latents (context frames: what the buffer holds)
    audio: Tensor  # [B, F, W, Da] per-latent audio windows (zeros: reference, placeholders)
    text: Tensor  # [B, F, P, Dt]
    text_mask: Tensor  # [B, F, P] bool
    real_memory: Tensor  # [B, context - 1] bool: memory slot holds a generated latent
    k: Tensor  # [B] index of the oldest stream chunk
    prompt_change: Tensor  # [B] bool: the stream's prompts change between chunks


def _gather(x: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """x `[N, L, ...]`, rows `[B]`, cols `[B, F]` -> `[B, F, ...]`."""
    return x[rows[:, None], cols]


def sample_buffer(
    data: LatentSet,
    config: RendererConfig,
    text_table: Tensor,
    rng: torch.Generator,
    batch: int,
    encoder: torch.nn.Module | None,
    start_prob: float = 0.2,
    mix: PromptMix | None = None,
) -> BufferBatch:
    """A random batch of buffers; `encoder` None gives zero audio (stage 1); with `mix`, each
    buffer reads its prompts from its own mixed copy of `text_table` (`prompt_mix`)."""
    device = data.latents.device
    lpc = config.latents_per_chunk
    memory = config.long_term_size + config.short_term_size
    assert memory <= MEMORY_CHUNKS, "memory slots beyond MEMORY_CHUNKS need a longer preroll"
    rows = torch.randint(len(data), (batch,), generator=rng, device=device)
    high = data.chunks - config.stream_chunks + 1
    k = torch.randint(high, (batch,), generator=rng, device=device)
    early = torch.rand(batch, generator=rng, device=device) < start_prob
    k = torch.where(early, torch.randint(memory + 1, (batch,), generator=rng, device=device), k)
    k = k.clamp(max=high - 1)

    mem_chunk = k[:, None] + torch.arange(-memory, 0, device=device)  # [B, memory]
    real = mem_chunk >= 0
    mem_latent = torch.where(real, 1 + mem_chunk * lpc + (lpc - 1), 0)
    stream_latent = 1 + k[:, None] * lpc + torch.arange(config.stream_latents, device=device)
    cols = torch.cat([torch.zeros_like(k)[:, None], mem_latent, stream_latent], 1)  # [B, F]
    x0 = _gather(data.latents, rows, cols).float()

    # conditioning of each frame: its chunk (in the window k-memory .. k+stream-1), or none
    frame_chunk = torch.cat(
        [
            torch.full_like(k, -1)[:, None],
            torch.where(real, mem_chunk, -1),
            k[:, None] + torch.arange(config.stream_latents, device=device) // lpc,
        ],
        1,
    )
    frame_pos = torch.cat(
        [
            torch.zeros_like(k)[:, None].expand(-1, memory + 1) + (lpc - 1),
            torch.arange(config.stream_latents, device=device).expand(batch, -1) % lpc,
        ],
        1,
    )
    has = frame_chunk >= 0
    prompt = _gather(data.prompt, rows, frame_chunk.clamp(min=0))  # [B, F, P]
    prompt = torch.where(has[..., None], prompt, -1)
    text_mask = prompt >= 0
    table = text_table.to(device)
    if mix is None:
        text = table[prompt.clamp(min=0)]
    else:
        tables = mix.tables(table, batch, rng)  # [B, N, Dt]
        text = tables[torch.arange(batch, device=device)[:, None, None], prompt.clamp(min=0)]
    text = text * text_mask[..., None]

    audio = torch.zeros(batch, cols.shape[1], config.audio_window, config.audio_dim, device=device)
    if encoder is not None:
        audio = _audio_for(data, encoder, config, rows, k, frame_chunk, frame_pos, has)
    change = (prompt[:, -1] != prompt[:, -config.stream_latents]).any(-1)
    return BufferBatch(x0, audio, text, text_mask, real, k, change)


def _audio_for(
    data: LatentSet,
    encoder: torch.nn.Module,
    config: RendererConfig,
    rows: Tensor,
    k: Tensor,
    frame_chunk: Tensor,
    frame_pos: Tensor,
    has: Tensor,
) -> Tensor:
    """Windows of each buffer frame from the audio of chunks k - PREROLL .. k + stream - 1."""
    span = PREROLL_CHUNKS + config.stream_chunks
    pad = data.pcm.new_zeros(len(rows), PREROLL_CHUNKS * SAMPLES_PER_CHUNK)
    pcm = torch.cat([pad, data.pcm[rows]], 1)  # the session starts after PREROLL silent chunks
    offsets = k[:, None] * SAMPLES_PER_CHUNK + torch.arange(
        span * SAMPLES_PER_CHUNK, device=k.device
    )
    window = pcm.gather(1, offsets)  # [B, span * 7680]
    windows = audio_windows(encoder, window, config.audio_overlap)  # [B, span * 3, W, Da]
    first = k - PREROLL_CHUNKS  # chunk index of windows' chunk 0
    index = ((frame_chunk - first[:, None]) * config.latents_per_chunk + frame_pos).clamp(min=0)
    audio = windows.gather(1, index[..., None, None].expand(-1, -1, *windows.shape[2:]))
    return audio * has[..., None, None]


def chunk_condition(
    index: int, audio: Tensor, prompt: Tensor, table: Tensor, latents_per_chunk: int
) -> ChunkCondition:
    """One chunk's conditioning as the renderer builds it: audio windows `[B, L, W, Da]`, and
    the prompt id of each channel `[B, P]` (-1 none) looked up in `table` `[n_prompts, Dt]`."""
    mask = (prompt >= 0)[:, None].expand(-1, latents_per_chunk, -1)  # [B, L, P]
    text = table[prompt.clamp(min=0)][:, None].expand(-1, latents_per_chunk, -1, -1)
    return ChunkCondition(index, audio, (text * mask[..., None]).contiguous(), mask.contiguous())


def face_weight(config: RendererConfig, gain: float = 3.0) -> Tensor:
    """Loss weight per latent pixel `[h, w]`: `world.face_weight` on the latent grid (mouth and
    eyes are a few latent pixels; without it they are a sliver of the loss)."""
    return world.face_weight(config.latent_height, config.latent_width, gain)


def text_table_for(texts: list[str], encoder) -> Tensor:
    """Embeddings `[len(texts), Dt]` of every prompt, as the renderer computes them."""
    return encoder.encode(texts).float()


def identity_of(data: LatentSet, rows: Tensor) -> Tensor:
    return data.identity[rows]


__all__ = [
    "BufferBatch",
    "LatentSet",
    "audio_windows",
    "build_latent_set",
    "chunk_windows",
    "sample_buffer",
    "text_table_for",
    "world",
]
