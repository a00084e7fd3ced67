"""Causal video VAE: 8x8 spatial and 4x temporal compression, the first frame on its own.

Frames outside this file are `[B, T, 3, H, W]` in [-1, 1]; latents are `[B, F, C, h, w]` with
`C = latent_channels`, `h = H / 8`, `w = W / 8`. A clip of `1 + 4n` frames maps to `1 + n` latents:
latent 0 holds frame 0 alone (so a single reference image is one latent) and latent `i > 0` holds
frames `4i - 3 .. 4i`. Inside, tensors are `[B, C, T, H, W]` so that 3-D convs see time as depth.

Every temporal operation is causal (left padding in time, per-position channel norms, attention
within a frame), so a frame depends only on latents at or before its own. That is what makes
`VAEDecodeStream` exact: it keeps, for each causal conv of the decoder, the last `k_t - 1` input
frames, a state of fixed size that does not grow with the stream.

The encoder is a diagonal Gaussian posterior: `encode_posterior` returns `(mean, logvar)` for a
KL-regularised training loss (`kl_divergence`), `encode` returns the deterministic mean (or a
sample when asked). Latents are normalised with the per-channel `latent_mean` / `latent_std`
buffers, which training sets from dataset statistics; the posterior is in the raw space.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowact.schemas.timebase import FRAMES_PER_LATENT

# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VAEConfig:
    """Sizes of the causal VAE; everything in the network is derived from these.

    `channel_mults` gives one resolution level each (width = base_channels * mult); between two
    levels the resolution halves in space, and in time too where `temporal_down` says so.
    `temporal_kernels` is the time extent of each level's convs: 1 makes a level spatial-only,
    which is how the CPU presets keep their full-resolution level cheap.
    """

    latent_channels: int = 16
    base_channels: int = 96
    channel_mults: tuple[int, ...] = (1, 2, 4, 4)
    temporal_down: tuple[bool, ...] = (False, True, True)
    num_res_blocks: int = 2
    mid_attention: bool = True
    image_channels: int = 3
    temporal_kernels: tuple[int, ...] = (3, 3, 3, 3)
    logvar_range: tuple[float, float] = (-30.0, 20.0)

    def __post_init__(self) -> None:
        if len(self.temporal_down) != len(self.channel_mults) - 1:
            raise ValueError("temporal_down needs one entry per transition between levels")
        if len(self.temporal_kernels) != len(self.channel_mults):
            raise ValueError("temporal_kernels needs one entry per level")
        if self.temporal_factor != FRAMES_PER_LATENT:
            raise ValueError(
                f"temporal compression is {self.temporal_factor}, the time base wants "
                f"{FRAMES_PER_LATENT} frames a latent"
            )

    @property
    def spatial_factor(self) -> int:
        return 2 ** len(self.temporal_down)

    @property
    def temporal_factor(self) -> int:
        return 2 ** sum(self.temporal_down)

    def widths(self) -> list[int]:
        return [self.base_channels * m for m in self.channel_mults]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VAEConfig:
        """Inverse of `to_dict`, accepting the lists a JSON round trip turns tuples into."""
        fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**fixed)


def frames_for_latents(num_latents: int, temporal_factor: int = FRAMES_PER_LATENT) -> int:
    """Frames decoded from a clip of `num_latents` latents (the first latent is one frame)."""
    return 1 + temporal_factor * (num_latents - 1)


def latents_for_frames(num_frames: int, temporal_factor: int = FRAMES_PER_LATENT) -> int:
    """Latents of a clip of `num_frames` frames; the count must be `1 + temporal_factor * n`."""
    if num_frames < 1 or (num_frames - 1) % temporal_factor:
        raise ValueError(f"a clip needs 1 + {temporal_factor}n frames, got {num_frames}")
    return 1 + (num_frames - 1) // temporal_factor


# ---------------------------------------------------------------------------------------------
# Streaming state
# ---------------------------------------------------------------------------------------------


@dataclass
class CausalState:
    """What the decoder carries from one call to the next.

    `frames` maps each causal conv to its last `k_t - 1` input frames; `latents_seen` tells the
    temporal upsamplers whether the first latent (decoded to one frame) is still ahead.
    """

    frames: dict[nn.Module, Tensor] = field(default_factory=dict)
    latents_seen: int = 0

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.frames.values())


# ---------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------


class ChannelRMSNorm(nn.Module):
    """RMS norm over channels at each position: no statistics across time, hence causal."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))

    def forward(self, x: Tensor) -> Tensor:  # [B, C, ...]
        rms = x.pow(2).mean(dim=1, keepdim=True).add(self.eps).rsqrt()
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x * rms * self.weight.view(shape)


class CausalConv3d(nn.Conv3d):
    """3-D conv padded on the left in time (and symmetrically in space).

    With a `CausalState` the left padding is the previous call's last input frames instead of
    zeros; a fresh state therefore gives exactly the whole-clip result.
    """

    def __init__(self, c_in: int, c_out: int, kernel: tuple[int, int, int]) -> None:
        kt, kh, kw = kernel
        super().__init__(c_in, c_out, kernel, padding=(0, kh // 2, kw // 2))
        self.time_pad = kt - 1

    def forward(self, x: Tensor, state: CausalState | None = None) -> Tensor:  # [B, C, T, H, W]
        if self.time_pad == 0:
            # One frame at a time is a 2-D conv: the same numbers, and on CPU a far faster
            # kernel than the generic 3-D one.
            b, t = x.shape[0], x.shape[2]
            frames = x.transpose(1, 2).flatten(0, 1)  # [B*T, C, H, W]
            y = F.conv2d(frames, self.weight[:, :, 0], self.bias, padding=self.padding[1:])
            return y.unflatten(0, (b, t)).transpose(1, 2)  # [B, C', T, H, W]
        prev = state.frames.get(self) if state is not None else None
        if prev is None:
            b, c, _, h, w = x.shape
            prev = x.new_zeros(b, c, self.time_pad, h, w)
        x = torch.cat([prev, x], dim=2)  # [B, C, pad + T, H, W]
        if state is not None:
            # clone: a view would keep the whole concatenation alive between calls
            state.frames[self] = x[:, :, -self.time_pad :].detach().clone()
        return super().forward(x)


def per_frame(module: nn.Module, x: Tensor) -> Tensor:
    """Apply a 2-D module to every frame of `[B, C, T, H, W]`."""
    b, _, t = x.shape[:3]
    y = module(x.transpose(1, 2).flatten(0, 1))  # [B*T, C', H', W']
    return y.unflatten(0, (b, t)).transpose(1, 2)  # [B, C', T, H', W']


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, kt: int) -> None:
        super().__init__()
        self.norm1 = ChannelRMSNorm(c_in)
        self.conv1 = CausalConv3d(c_in, c_out, (kt, 3, 3))
        self.norm2 = ChannelRMSNorm(c_out)
        self.conv2 = CausalConv3d(c_out, c_out, (kt, 3, 3))
        self.skip = nn.Conv3d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, state: CausalState | None = None) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)), state)
        h = self.conv2(F.silu(self.norm2(h)), state)
        return self.skip(x) + h


class FrameAttention(nn.Module):
    """Single-head self-attention over the positions of each frame (never across time)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = ChannelRMSNorm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:  # [B, C, T, H, W]
        b, c, t, h, w = x.shape
        frames = self.norm(x).transpose(1, 2).flatten(0, 1)  # [B*T, C, H, W]
        q, k, v = self.qkv(frames).flatten(2).transpose(1, 2).unsqueeze(1).chunk(3, dim=-1)
        y = F.scaled_dot_product_attention(q, k, v)  # [B*T, 1, H*W, C]
        y = y.squeeze(1).transpose(1, 2).reshape(b * t, c, h, w)
        y = self.proj(y).unflatten(0, (b, t)).transpose(1, 2)  # [B, C, T, H, W]
        return x + y


class Downsample(nn.Module):
    """Halve space (strided conv per frame) and optionally time (first frame kept alone)."""

    def __init__(self, channels: int, temporal: bool) -> None:
        super().__init__()
        self.spatial = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        self.temporal = (
            nn.Conv3d(channels, channels, (3, 1, 1), stride=(2, 1, 1)) if temporal else None
        )

    def forward(self, x: Tensor) -> Tensor:  # [B, C, 1 + 2m, H, W]
        x = per_frame(self.spatial, x)  # [B, C, T, H/2, W/2]
        if self.temporal is None or x.shape[2] < 3:
            return x
        # windows (2j-2, 2j-1, 2j) summarise frames 2j-1, 2j with one frame of causal context
        return torch.cat([x[:, :, :1], self.temporal(x)], dim=2)  # [B, C, 1 + m, H/2, W/2]


class Upsample(nn.Module):
    """Double time (except for the stream's first latent) and then space.

    Time: a causal conv predicts two frames per input frame (depth-to-time). The stream's first
    element stays one frame, mirroring `Downsample`.
    """

    def __init__(self, channels: int, temporal: bool, kt: int) -> None:
        super().__init__()
        self.time_conv = CausalConv3d(channels, 2 * channels, (kt, 1, 1)) if temporal else None
        self.spatial = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor, state: CausalState | None, first: bool) -> Tensor:
        """`first`: `x` starts with the stream's first latent."""
        if self.time_conv is not None:
            x = self._double_time(x, state, first)
        x = F.interpolate(x, scale_factor=(1, 2, 2), mode="nearest")  # [B, C, T, 2H, 2W]
        return per_frame(self.spatial, x)

    def _double_time(self, x: Tensor, state: CausalState | None, first: bool) -> Tensor:
        b, c, t, h, w = x.shape
        y = self.time_conv(x, state).view(b, 2, c, t, h, w)
        y = y.permute(0, 2, 3, 1, 4, 5).reshape(b, c, 2 * t, h, w)  # [B, C, 2T, H, W]
        if first:
            y = torch.cat([x[:, :, :1], y[:, :, 2:]], dim=2)  # [B, C, 2T - 1, H, W]
        return y


# ---------------------------------------------------------------------------------------------
# Encoder and decoder
# ---------------------------------------------------------------------------------------------


class MidBlock(nn.Module):
    def __init__(self, channels: int, attention: bool, kt: int) -> None:
        super().__init__()
        self.res1 = ResBlock(channels, channels, kt)
        self.attn = FrameAttention(channels) if attention else None
        self.res2 = ResBlock(channels, channels, kt)

    def forward(self, x: Tensor, state: CausalState | None = None) -> Tensor:
        x = self.res1(x, state)
        if self.attn is not None:
            x = self.attn(x)
        return self.res2(x, state)


class Encoder(nn.Module):
    """`[B, 3, 1 + 4n, H, W]` -> posterior parameters `[B, 2C, 1 + n, H/8, W/8]`."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        widths, kts = cfg.widths(), cfg.temporal_kernels
        self.conv_in = CausalConv3d(cfg.image_channels, widths[0], (kts[0], 3, 3))
        self.levels = nn.ModuleList()
        c_in = widths[0]
        for level, width in enumerate(widths):
            blocks = nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResBlock(c_in, width, kts[level]))
                c_in = width
            stage = nn.Module()
            stage.blocks = blocks
            last = level == len(widths) - 1
            stage.down = None if last else Downsample(width, cfg.temporal_down[level])
            self.levels.append(stage)
        self.mid = MidBlock(c_in, cfg.mid_attention, kts[-1])
        self.norm_out = ChannelRMSNorm(c_in)
        self.conv_out = CausalConv3d(c_in, 2 * cfg.latent_channels, (kts[-1], 3, 3))

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_in(x)
        for stage in self.levels:
            for block in stage.blocks:
                x = block(x)
            if stage.down is not None:
                x = stage.down(x)
        x = self.mid(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class Decoder(nn.Module):
    """Latents `[B, C, 1 + n, h, w]` -> frames `[B, 3, 1 + 4n, 8h, 8w]` (first latent: 1 frame).

    A `CausalState` makes it resumable: calling it on consecutive slices of the latents, with
    one state, yields the consecutive slices of the whole-clip frames. The network is `body`,
    which takes whether the call starts the stream as a plain flag, so that `compile_body` can
    compile it once per input shape instead of once per stream position.
    """

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        widths, kts = cfg.widths(), cfg.temporal_kernels
        top = widths[-1]
        self.conv_in = CausalConv3d(cfg.latent_channels, top, (kts[-1], 3, 3))
        self.mid = MidBlock(top, cfg.mid_attention, kts[-1])
        self.levels = nn.ModuleList()
        c_in = top
        for level in reversed(range(len(widths))):
            width = widths[level]
            blocks = nn.ModuleList()
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResBlock(c_in, width, kts[level]))
                c_in = width
            stage = nn.Module()
            stage.blocks = blocks
            temporal = level > 0 and cfg.temporal_down[level - 1]
            stage.up = Upsample(width, temporal, kts[level]) if level > 0 else None
            self.levels.append(stage)
        self.norm_out = ChannelRMSNorm(c_in)
        self.conv_out = CausalConv3d(c_in, cfg.image_channels, (kts[0], 3, 3))

    def forward(self, z: Tensor, state: CausalState | None = None) -> Tensor:
        first = state is None or state.latents_seen == 0
        x = self.body(z, state, first)
        if state is not None:
            state.latents_seen += z.shape[2]
        return x

    def body(self, z: Tensor, state: CausalState | None, first: bool) -> Tensor:
        x = self.conv_in(z, state)
        x = self.mid(x, state)
        for stage in self.levels:
            for block in stage.blocks:
                x = block(x, state)
            if stage.up is not None:
                x = stage.up(x, state, first)
        return self.conv_out(F.silu(self.norm_out(x)), state)

    def compile_body(self, backend: str | Callable = "inductor") -> None:
        """`torch.compile` the network in place: its norms, activations and upsampling fuse
        around the convs. Two graphs in a stream's life (its first call, then chunks)."""
        self.body = torch.compile(self.body, backend=backend, dynamic=False)  # type: ignore[method-assign]


# ---------------------------------------------------------------------------------------------
# The VAE
# ---------------------------------------------------------------------------------------------


class VAEOutput(NamedTuple):
    recon: Tensor  # [B, T, 3, H, W], not clamped
    mean: Tensor  # [B, F, C, h, w], raw latent space
    logvar: Tensor  # [B, F, C, h, w]


def kl_divergence(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mean, exp(logvar)) || N(0, 1)), summed over latent elements, averaged over batch."""
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)
    return kl.flatten(1).sum(dim=1).mean()


class CausalVideoVAE(nn.Module):
    """Causal video VAE with normalised latents `[B, F, C, h, w]` and frames `[B, T, 3, H, W]`."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.register_buffer("latent_mean", torch.zeros(config.latent_channels))
        self.register_buffer("latent_std", torch.ones(config.latent_channels))

    # -- latent normalisation ------------------------------------------------------------------

    def set_latent_stats(self, mean: Tensor, std: Tensor) -> None:
        """Per-channel statistics of raw latents, so that normalised latents are ~N(0, 1)."""
        self.latent_mean.copy_(mean)
        self.latent_std.copy_(std)

    def normalize(self, z: Tensor) -> Tensor:  # [B, F, C, h, w]
        return (z - self.latent_mean.view(-1, 1, 1)) / self.latent_std.view(-1, 1, 1)

    def denormalize(self, z: Tensor) -> Tensor:  # [B, F, C, h, w]
        return z * self.latent_std.view(-1, 1, 1) + self.latent_mean.view(-1, 1, 1)

    # -- encode / decode -----------------------------------------------------------------------

    def encode_posterior(self, frames: Tensor) -> tuple[Tensor, Tensor]:
        """Frames `[B, 1 + 4n, 3, H, W]` -> raw posterior `(mean, logvar)`, `[B, 1 + n, C, h, w]`.

        The training loss uses these with `kl_divergence`; they are not normalised.
        """
        latents_for_frames(frames.shape[1], self.config.temporal_factor)
        self._check_spatial(frames.shape[-2:])
        moments = self.encoder(frames.transpose(1, 2))  # [B, 2C, F, h, w]
        mean, logvar = moments.transpose(1, 2).chunk(2, dim=2)  # [B, F, C, h, w] each
        return mean, logvar.clamp(*self.config.logvar_range)

    def encode(
        self, frames: Tensor, sample: bool = False, generator: torch.Generator | None = None
    ) -> Tensor:
        """Frames `[B, 1 + 4n, 3, H, W]` -> normalised latents `[B, 1 + n, C, h, w]`.

        Deterministic (the posterior mean) unless `sample`.
        """
        mean, logvar = self.encode_posterior(frames)
        z = mean
        if sample:
            noise = torch.randn(
                mean.shape, generator=generator, device=mean.device, dtype=mean.dtype
            )
            z = mean + (0.5 * logvar).exp() * noise
        return self.normalize(z)

    def decode(self, latents: Tensor, clamp: bool = True) -> Tensor:
        """Normalised latents `[B, 1 + n, C, h, w]` -> frames `[B, 1 + 4n, 3, 8h, 8w]`."""
        frames = self.decoder(self.denormalize(latents).transpose(1, 2)).transpose(1, 2)
        return frames.clamp(-1.0, 1.0) if clamp else frames

    def forward(
        self, frames: Tensor, sample: bool = True, latent_noise: Tensor | None = None
    ) -> VAEOutput:
        """Training pass: reconstruct `[B, 1 + 4n, 3, H, W]` through a (sampled) latent, with
        Gaussian noise of std `latent_noise[b]` (`[B]`, normalised-latent units) added to it."""
        mean, logvar = self.encode_posterior(frames)
        z = mean + (0.5 * logvar).exp() * torch.randn_like(mean) if sample else mean
        if latent_noise is not None:
            std = latent_noise.view(-1, 1, 1, 1, 1) * self.latent_std.view(-1, 1, 1)
            z = z + std.to(z.dtype) * torch.randn_like(z)
        recon = self.decoder(z.transpose(1, 2)).transpose(1, 2)  # [B, T, 3, H, W]
        return VAEOutput(recon, mean, logvar)

    def decode_stream(self) -> VAEDecodeStream:
        return VAEDecodeStream(self)

    def to_channels_last(self) -> None:
        """Conv weights in channels-last layouts (NDHWC, NHWC), the layout cuDNN's and
        Inductor's fast conv kernels work in; the numbers are unchanged."""
        for param in self.parameters():
            if param.dim() == 5:
                param.data = param.data.contiguous(memory_format=torch.channels_last_3d)
            elif param.dim() == 4:
                param.data = param.data.contiguous(memory_format=torch.channels_last)

    def _check_spatial(self, size: torch.Size) -> None:
        factor = self.config.spatial_factor
        if size[0] % factor or size[1] % factor:
            raise ValueError(f"frame size {tuple(size)} is not a multiple of {factor}")


class VAEDecodeStream:
    """Decodes a latent stream piece by piece, equal to decoding the whole clip at once.

    Feed the reference latent first (one frame comes back), then chunks of latents (4 frames per
    latent: a chunk of 3 latents gives 12 frames). The state is a fixed set of tensors, the last
    `k_t - 1` input frames of every causal conv, so memory does not grow with the stream. The
    stream owns its state; several streams may share one VAE.

    Equality is to float rounding (~1e-5 in fp32). On GPUs that run convs in TF32 (cuDNN's
    default on Ampere and later) the chunked and whole-clip calls pick different kernels and
    differ by ~1e-3; that is TF32 precision, not state.
    """

    def __init__(self, vae: CausalVideoVAE, clamp: bool = True) -> None:
        self.vae = vae
        self.clamp = clamp
        self.state = CausalState()

    @property
    def latents_seen(self) -> int:
        return self.state.latents_seen

    def reset(self) -> None:
        self.state = CausalState()

    def state_nbytes(self) -> int:
        return self.state.nbytes()

    @torch.no_grad()
    def push(self, latents: Tensor) -> Tensor:
        """Normalised latents `[B, n, C, h, w]` -> frames `[B, T, 3, 8h, 8w]`.

        `T = 4n`, less 3 on the stream's first call (its first latent is a single frame).
        """
        if latents.shape[1] == 0:
            raise ValueError("push needs at least one latent")
        z = self.vae.denormalize(latents).transpose(1, 2)  # [B, C, n, h, w]
        frames = self.vae.decoder(z, self.state).transpose(1, 2)  # [B, T, 3, H, W]
        return frames.clamp(-1.0, 1.0) if self.clamp else frames


# ---------------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------------

PRESETS: dict[str, VAEConfig] = {
    # unit tests: the layout of `small` at a fraction of the width, 32x32 frames in milliseconds
    "tiny": VAEConfig(
        latent_channels=4,
        base_channels=8,
        channel_mults=(1, 1, 2, 2),
        num_res_blocks=1,
        temporal_kernels=(1, 3, 3, 3),
    ),
    # the demo renderer on CPU: narrow, one res block a level, full resolution spatial-only
    "small": VAEConfig(
        latent_channels=8,
        base_channels=16,
        channel_mults=(1, 2, 4, 4),
        num_res_blocks=1,
        temporal_kernels=(1, 3, 3, 3),
    ),
    # Wan-VAE-like widths (96 * [1, 2, 4, 4]), 16 latent channels
    "full": VAEConfig(),
}


def build_vae(preset: str | VAEConfig) -> CausalVideoVAE:
    config = PRESETS[preset] if isinstance(preset, str) else preset
    return CausalVideoVAE(config)


def param_count(module: nn.Module) -> int:
    return sum(math.prod(p.shape) for p in module.parameters())


@torch.no_grad()
def temporal_reach(config: VAEConfig, threshold: float = 0.01, seed: int = 0) -> int:
    """Frames over which one input frame still moves the reconstruction (encode, then decode)
    by at least `threshold` of its largest effect; measured on a freshly initialised network
    of this config on small frames, so it is a property of the architecture.

    Causal convs look back over this many frames. A VAE trained only on shorter clips never
    sees its own steady state (every frame it trains on still sees the clip's zero padding),
    and its reconstructions drift once a stream outgrows its training clips.
    """
    with torch.random.fork_rng():  # the caller's random stream stays as it was
        torch.manual_seed(seed)
        vae = CausalVideoVAE(config).eval()
    size = 2 * config.spatial_factor
    margin = 4 * FRAMES_PER_LATENT  # the effect must end this far inside the clip
    frames = 1 + FRAMES_PER_LATENT * 16
    while True:
        clip = torch.zeros(1, frames, config.image_channels, size, size)
        poked = clip.clone()
        poked[:, 1] = 1.0  # frame 1: the first frame of the first 4-frame latent
        change = (vae.decode(vae.encode(poked)) - vae.decode(vae.encode(clip))).abs()
        effect = change.amax((0, 2, 3, 4))  # [T]
        reach = int((effect >= threshold * effect.max()).nonzero().max()) - 1
        if reach < frames - 1 - margin:
            return reach
        frames = 1 + 2 * (frames - 1)
