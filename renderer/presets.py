"""Renderer configuration: one frozen dataclass, every size in the renderer derives from it.

A preset fixes the video geometry, the latent space the VAE maps into, the transformer's shape,
the conditioning widths and the stream buffer layout. Code never repeats these numbers; it reads
them (or the derived properties below) from the config it was built with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import get_args

from flowact.schemas.messages import Channel
from flowact.schemas.timebase import FRAMES_PER_LATENT, LATENTS_PER_CHUNK

BEHAVIOR_CHANNELS: tuple[str, ...] = get_args(Channel)


@dataclass(frozen=True)
class RendererConfig:
    """Sizes of one renderer model and its stream buffer.

    Video is `[height, width]` pixels at 25 fps; the VAE maps it to latents
    `[latent_channels, height / vae_stride, width / vae_stride]`, one latent per 4 frames.
    """

    name: str
    # video and latent geometry
    height: int
    width: int
    latent_channels: int
    vae_stride: int = 8
    patch: tuple[int, int, int] = (1, 2, 2)  # (frames, y, x) per token; frames must be 1
    # transformer
    dim: int = 64
    depth: int = 2
    heads: int = 2
    ffn_dim: int = 256
    freq_dim: int = 256  # sinusoidal width of the timestep / guidance embedders
    rope_theta: float = 10_000.0
    window: tuple[int, int] | None = None  # spatial attention window in tokens, None = global
    global_every: int = 2  # with a window, every `global_every`-th block stays global
    cfg_embed: bool = False  # guidance-scale embedding (CFG distilled into the model)
    # conditioning
    audio_dim: int = 32  # width of one audio feature (25 features per second)
    audio_overlap: int = 2  # extra audio features on each side of a latent's 4 frames
    text_dim: int = 384  # all-MiniLM-L6-v2 sentence embedding width
    text_slots: int = len(BEHAVIOR_CHANNELS)  # one prompt slot per behavior channel
    # stream buffer layout
    long_term_size: int = 3
    short_term_size: int = 1
    stream_chunks: int = 3

    def __post_init__(self) -> None:
        if self.patch[0] != 1:
            raise ValueError("temporal patch must be 1: every latent frame has its own timestep")
        if self.height % (self.vae_stride * self.patch[1]) or self.width % (
            self.vae_stride * self.patch[2]
        ):
            raise ValueError("video size must divide by vae_stride * patch")
        if self.dim % self.heads:
            raise ValueError("dim must divide by heads")
        if self.head_dim % 2 or min(self.rope_split) <= 0 or any(d % 2 for d in self.rope_split):
            raise ValueError(f"head_dim {self.head_dim} cannot split into 3 even rotary parts")
        if self.window is not None and (
            self.tokens_h % self.window[0] or self.tokens_w % self.window[1]
        ):
            raise ValueError("the attention window must tile the token grid")
        if not 1 <= self.short_term_size <= LATENTS_PER_CHUNK:
            raise ValueError("short-term memory holds 1..LATENTS_PER_CHUNK latents")

    # derived sizes
    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @property
    def rope_split(self) -> tuple[int, int, int]:
        """Head channels of the (frame, y, x) rotary axes; the frame axis takes the rest."""
        spatial = 2 * (self.head_dim // 6)
        return (self.head_dim - 2 * spatial, spatial, spatial)

    @property
    def latent_height(self) -> int:
        return self.height // self.vae_stride

    @property
    def latent_width(self) -> int:
        return self.width // self.vae_stride

    @property
    def tokens_h(self) -> int:
        return self.latent_height // self.patch[1]

    @property
    def tokens_w(self) -> int:
        return self.latent_width // self.patch[2]

    @property
    def tokens_per_latent(self) -> int:
        return self.tokens_h * self.tokens_w

    @property
    def patch_dim(self) -> int:
        return self.latent_channels * self.patch[1] * self.patch[2]

    @property
    def audio_window(self) -> int:
        """Audio features attached to one latent: its 4 frames plus the overlap on each side."""
        return FRAMES_PER_LATENT + 2 * self.audio_overlap

    @property
    def latents_per_chunk(self) -> int:
        return LATENTS_PER_CHUNK

    @property
    def context_latents(self) -> int:
        """Clean latents ahead of the stream: reference + long-term + short-term memory."""
        return 1 + self.long_term_size + self.short_term_size

    @property
    def stream_latents(self) -> int:
        return self.stream_chunks * LATENTS_PER_CHUNK

    @property
    def buffer_latents(self) -> int:
        return self.context_latents + self.stream_latents

    @property
    def buffer_tokens(self) -> int:
        return self.buffer_latents * self.tokens_per_latent

    def uses_window(self, block: int) -> bool:
        """Whether block `block` attends within spatial windows (each group ends global)."""
        return self.window is not None and (block + 1) % self.global_every != 0


PRESETS: dict[str, RendererConfig] = {
    # unit tests on CPU: 4x4 latents, 2x2 tokens a latent, 56 tokens in the buffer
    "tiny": RendererConfig(
        name="tiny",
        height=32,
        width=32,
        latent_channels=4,
        dim=64,
        depth=2,
        heads=2,
        ffn_dim=256,
        freq_dim=64,
        cfg_embed=True,
        audio_dim=32,
    ),
    # the shipped demo model: 16x16 latents, 64 tokens a latent, 896 tokens in the buffer
    "demo": RendererConfig(
        name="demo",
        height=128,
        width=128,
        latent_channels=8,
        dim=384,
        depth=8,
        heads=6,
        ffn_dim=1152,  # 3x: with the VAE, the shipped bf16 checkpoint stays under 48 MiB
        cfg_embed=True,
        audio_dim=128,
    ),
    # compute-equivalent of the paper: Wan2.1-1.3B shape, 1,560 tokens a latent, 21,840 in all
    "paper-480p": RendererConfig(
        name="paper-480p",
        height=480,
        width=832,
        latent_channels=16,
        dim=1536,
        depth=30,
        heads=12,
        ffn_dim=8960,
        cfg_embed=True,
        audio_dim=1280,  # Whisper large encoder width
    ),
}


def get_preset(name: str) -> RendererConfig:
    try:
        return PRESETS[name]
    except KeyError:
        known = sorted(PRESETS)
        raise KeyError(f"unknown renderer preset {name!r}; choose one of {known}") from None
