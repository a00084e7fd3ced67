"""FlowAct-R1 MMDiT: a diffusion transformer over the stream buffer's latent tokens.

Input is the whole buffer, `[B, F, C, h, w]` latents with one noise level per latent frame
(diffusion forcing: each frame's adaLN modulation comes from its own timestep). Tokens attend to
each other under the fake-causal mask (context frames never see the stream), carry 3-D rotary
positions relative to the buffer (frame 0..F-1, y, x: nothing grows with stream length), and
read their own latent's behavior prompts (text cross-attention) and audio window (an
IP-adapter-style second key/value set on the same queries, added with a learnable scale).
The head predicts the flow-matching velocity `noise - x0` for `x_t = (1 - t) * x0 + t * noise`.

Reading order: helpers, embedders, blocks, the model, save/load.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, safe_open, save_file
from torch import Tensor, nn

from flowact.renderer.attention import fake_causal_attention
from flowact.renderer.presets import RendererConfig

# ---------------------------------------------------------------------------------------- helpers


def sinusoidal_embedding(x: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """`[...]` scalars to `[..., dim]` cos/sin features, in float32."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, device=x.device, dtype=torch.float32) / half
    )
    angles = x.float()[..., None] * freqs  # [..., half]
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """Per-frame adaLN: x `[B, F, N, D]`, shift/scale `[B, F, D]`."""
    return x * (1 + scale[:, :, None]) + shift[:, :, None]


def grid_positions(frames: int, height: int, width: int, device: torch.device) -> Tensor:
    """Integer (frame, y, x) of every token of a frame-major buffer; `[frames*height*width, 3]`."""
    axes = [torch.arange(n, device=device) for n in (frames, height, width)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate channel pairs of x `[B, L, H, Dh]` by angles `[L, Dh/2]`."""
    pairs = x.float().unflatten(-1, (-1, 2))  # [B, L, H, Dh/2, 2]
    real, imag = pairs.unbind(-1)
    cos, sin = cos[:, None], sin[:, None]  # [L, 1, Dh/2]
    out = torch.stack([real * cos - imag * sin, real * sin + imag * cos], dim=-1)
    return out.flatten(-2).to(x.dtype)


def window_partition(
    x: Tensor, frames: int, grid: tuple[int, int], window: tuple[int, int]
) -> Tensor:
    """`[B, L, H, Dh]` frame-major tokens to `[B*windows, H, frames*wy*wx, Dh]`."""
    batch, _, heads, head_dim = x.shape
    (gy, gx), (wy, wx) = grid, window
    x = x.view(batch, frames, gy // wy, wy, gx // wx, wx, heads, head_dim)
    x = x.permute(0, 2, 4, 6, 1, 3, 5, 7)  # [B, nY, nX, H, F, wy, wx, Dh]
    return x.reshape(-1, heads, frames * wy * wx, head_dim)


def window_merge(
    x: Tensor, batch: int, frames: int, grid: tuple[int, int], window: tuple[int, int]
) -> Tensor:
    """Inverse of `window_partition`, to `[B, L, H*Dh]`."""
    (gy, gx), (wy, wx) = grid, window
    heads, head_dim = x.shape[1], x.shape[3]
    x = x.view(batch, gy // wy, gx // wx, heads, frames, wy, wx, head_dim)
    x = x.permute(0, 4, 1, 5, 2, 6, 3, 7)  # [B, F, nY, wy, nX, wx, H, Dh]
    return x.reshape(batch, frames * gy * gx, heads * head_dim)


class RotaryEmbedding3D(nn.Module):
    """Angles for (frame, y, x) positions; each axis owns a slice of the head's channel pairs."""

    def __init__(self, split: tuple[int, int, int], theta: float):
        super().__init__()
        self.split = split
        self.theta = theta

    def forward(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """positions `[L, 3]` integers -> cos, sin `[L, Dh/2]`."""
        angles = []
        for axis, dim in enumerate(self.split):
            exponent = torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32) / dim
            freqs = self.theta**-exponent  # [dim/2]
            angles.append(positions[:, axis, None].float() * freqs)
        angle = torch.cat(angles, dim=-1)  # [L, Dh/2]
        return angle.cos(), angle.sin()


# -------------------------------------------------------------------------------------- embedders


def _mlp(dim_in: int, dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim_in, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim))


class PatchEmbed(nn.Module):
    """Latents `[B, F, C, h, w]` to tokens `[B, F*th*tw, D]` and back."""

    def __init__(self, config: RendererConfig):
        super().__init__()
        self.config = config
        self.proj = nn.Linear(config.patch_dim, config.dim)

    def patchify(self, x: Tensor) -> Tensor:
        cfg = self.config
        _, py, px = cfg.patch
        b, f, c, h, w = x.shape
        x = x.view(b, f, c, h // py, py, w // px, px)
        x = x.permute(0, 1, 3, 5, 2, 4, 6)  # [B, F, th, tw, C, py, px]
        return x.reshape(b, f * (h // py) * (w // px), c * py * px)

    def unpatchify(self, tokens: Tensor, frames: int) -> Tensor:
        cfg = self.config
        _, py, px = cfg.patch
        b = tokens.shape[0]
        x = tokens.view(b, frames, cfg.tokens_h, cfg.tokens_w, cfg.latent_channels, py, px)
        x = x.permute(0, 1, 4, 2, 5, 3, 6)  # [B, F, C, th, py, tw, px]
        return x.reshape(b, frames, cfg.latent_channels, cfg.latent_height, cfg.latent_width)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.patchify(x))  # [B, F*th*tw, D]


class ScalarEmbedder(nn.Module):
    """A scalar per item (noise level, guidance scale) to `[..., D]`."""

    def __init__(self, freq_dim: int, dim: int, scale: float):
        super().__init__()
        self.freq_dim = freq_dim
        self.scale = scale  # noise levels live in [0, 1]; spread them over the sinusoid's range
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, value: Tensor) -> Tensor:
        features = sinusoidal_embedding(value * self.scale, self.freq_dim)
        return self.mlp(features.to(self.mlp[0].weight.dtype))


class TextEmbedder(nn.Module):
    """Per-latent prompt slots `[B, F, P, Dt]` to tokens `[B, F, 1+P, D]` and a keep mask.

    A learned null token always sits in front, so a latent with no active prompt (the reference,
    or every slot masked) still has something to attend to instead of an empty softmax.
    """

    def __init__(self, config: RendererConfig):
        super().__init__()
        self.proj = _mlp(config.text_dim, config.dim)
        self.slot = nn.Parameter(torch.randn(config.text_slots, config.dim) * 0.02)
        self.null = nn.Parameter(torch.randn(config.dim) * 0.02)

    def forward(self, text: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        b, f = text.shape[:2]
        tokens = self.proj(text.to(self.slot.dtype)) + self.slot  # [B, F, P, D]
        null = self.null.expand(b, f, 1, -1)
        keep = torch.cat([mask.new_ones(b, f, 1), mask], dim=-1)  # [B, F, 1+P]
        return torch.cat([null, tokens], dim=2), keep


class AudioEmbedder(nn.Module):
    """Per-latent audio windows `[B, F, W, Da]` to tokens `[B, F, W, D]` with window positions."""

    def __init__(self, config: RendererConfig):
        super().__init__()
        self.proj = _mlp(config.audio_dim, config.dim)
        self.position = nn.Parameter(torch.randn(config.audio_window, config.dim) * 0.02)

    def forward(self, audio: Tensor) -> Tensor:
        return self.proj(audio.to(self.position.dtype)) + self.position


# ----------------------------------------------------------------------------------------- blocks


@dataclass
class BlockInputs:
    """What every block reads besides its tokens; computed once per forward."""

    time_mod: Tensor  # [B, F, 6, D] shared per-frame modulation
    cos: Tensor  # [L, Dh/2] rotary angles
    sin: Tensor
    text: Tensor  # [B, F, 1+P, D]
    text_keep: Tensor  # [B, F, 1+P] bool
    audio: Tensor  # [B, F, W, D]
    frames: int
    n_context: int


class SelfAttention(nn.Module):
    """Fake-causal self-attention over the buffer with 3-D rotary positions and QK-norm."""

    def __init__(self, config: RendererConfig, window: tuple[int, int] | None):
        super().__init__()
        self.config = config
        self.window = window
        self.backend = "auto"
        self.qkv = nn.Linear(config.dim, 3 * config.dim)
        self.q_norm = nn.RMSNorm(config.head_dim, eps=1e-6)
        self.k_norm = nn.RMSNorm(config.head_dim, eps=1e-6)
        self.out = nn.Linear(config.dim, config.dim)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, frames: int, n_context: int) -> Tensor:
        cfg = self.config
        b, length, _ = x.shape
        q, k, v = self.qkv(x).view(b, length, 3, cfg.heads, cfg.head_dim).unbind(2)
        q = apply_rotary(self.q_norm(q), cos, sin)  # [B, L, H, Dh]
        k = apply_rotary(self.k_norm(k), cos, sin)
        if self.window is None:
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, L, Dh]
            out = fake_causal_attention(
                q, k, v, n_context * cfg.tokens_per_latent, backend=self.backend
            )
            out = out.transpose(1, 2).reshape(b, length, cfg.dim)
        else:
            grid = (cfg.tokens_h, cfg.tokens_w)
            q, k, v = (window_partition(t, frames, grid, self.window) for t in (q, k, v))
            per_latent = self.window[0] * self.window[1]
            out = fake_causal_attention(q, k, v, n_context * per_latent, backend=self.backend)
            out = window_merge(out, b, frames, grid, self.window)  # [B, L, D]
        return self.out(out)


class CrossAttention(nn.Module):
    """Each latent's tokens attend to that latent's prompts and, IP-adapter style, its audio.

    The queries are shared; audio has its own key/value projections and its attention output is
    added to the text output with a learnable scale before the output projection.
    """

    def __init__(self, config: RendererConfig):
        super().__init__()
        self.config = config
        dim = config.dim
        self.q = nn.Linear(dim, dim)
        self.text_kv = nn.Linear(dim, 2 * dim)
        self.audio_kv = nn.Linear(dim, 2 * dim)
        self.q_norm = nn.RMSNorm(config.head_dim, eps=1e-6)
        self.text_k_norm = nn.RMSNorm(config.head_dim, eps=1e-6)
        self.audio_k_norm = nn.RMSNorm(config.head_dim, eps=1e-6)
        # starts at 1 because the project trains from scratch; set 0 to graft onto a base model
        self.audio_scale = nn.Parameter(torch.ones(()))
        self.out = nn.Linear(dim, dim)

    def _kv(self, proj: nn.Linear, norm: nn.RMSNorm, tokens: Tensor) -> tuple[Tensor, Tensor]:
        cfg = self.config
        b, f, n = tokens.shape[:3]
        k, v = proj(tokens).view(b * f, n, 2, cfg.heads, cfg.head_dim).unbind(2)
        return norm(k).transpose(1, 2), v.transpose(1, 2)  # [B*F, H, n, Dh]

    def forward(self, x: Tensor, text: Tensor, keep: Tensor, audio: Tensor, frames: int) -> Tensor:
        cfg = self.config
        b, length, _ = x.shape
        per_frame = length // frames
        q = self.q(x).view(b * frames, per_frame, cfg.heads, cfg.head_dim)
        q = self.q_norm(q).transpose(1, 2)  # [B*F, H, N, Dh]
        text_k, text_v = self._kv(self.text_kv, self.text_k_norm, text)
        audio_k, audio_v = self._kv(self.audio_kv, self.audio_k_norm, audio)
        mask = keep.reshape(b * frames, 1, 1, -1)  # [B*F, 1, 1, 1+P]
        out = F.scaled_dot_product_attention(q, text_k, text_v, attn_mask=mask)
        out = out + self.audio_scale * F.scaled_dot_product_attention(q, audio_k, audio_v)
        return self.out(out.transpose(1, 2).reshape(b, length, cfg.dim))


class FeedForward(nn.Module):
    def __init__(self, config: RendererConfig):
        super().__init__()
        self.up = nn.Linear(config.dim, config.ffn_dim)
        self.down = nn.Linear(config.ffn_dim, config.dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.gelu(self.up(x), approximate="tanh"))


class MMDiTBlock(nn.Module):
    """adaLN(self-attention) -> cross-attention (text + audio) -> adaLN(feed-forward).

    The six modulation vectors (shift, scale, gate for attention and feed-forward) are the shared
    per-frame time projection plus this block's own learned offsets.
    """

    def __init__(self, config: RendererConfig, window: tuple[int, int] | None):
        super().__init__()
        dim = config.dim
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.self_attn = SelfAttention(config, window)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.cross_attn = CrossAttention(config)
        self.norm3 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ffn = FeedForward(config)
        self.modulation = nn.Parameter(torch.randn(6, dim) / dim**0.5)

    def forward(self, x: Tensor, cond: BlockInputs) -> Tensor:
        b, length, dim = x.shape
        frames = cond.frames
        mod = (cond.time_mod + self.modulation).unbind(2)  # 6 x [B, F, D]
        shift1, scale1, gate1, shift2, scale2, gate2 = mod

        h = modulate(self.norm1(x).view(b, frames, -1, dim), shift1, scale1).view(b, length, dim)
        h = self.self_attn(h, cond.cos, cond.sin, frames, cond.n_context)
        x = x + (h.view(b, frames, -1, dim) * gate1[:, :, None]).view(b, length, dim)

        x = x + self.cross_attn(self.norm2(x), cond.text, cond.text_keep, cond.audio, frames)

        h = modulate(self.norm3(x).view(b, frames, -1, dim), shift2, scale2)
        h = self.ffn(h) * gate2[:, :, None]  # [B, F, N, D]
        return x + h.view(b, length, dim)


class FinalLayer(nn.Module):
    """Per-frame adaLN and a linear map from tokens back to latent patches."""

    def __init__(self, config: RendererConfig):
        super().__init__()
        self.norm = nn.LayerNorm(config.dim, elementwise_affine=False, eps=1e-6)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(config.dim, 2 * config.dim))
        self.proj = nn.Linear(config.dim, config.patch_dim)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        b, length, dim = x.shape
        frames = c.shape[1]
        shift, scale = self.modulation(c).chunk(2, dim=-1)  # [B, F, D] each
        h = modulate(self.norm(x).view(b, frames, -1, dim), shift, scale)
        return self.proj(h.view(b, length, dim))  # [B, L, C*py*px]


# ------------------------------------------------------------------------------------------ model


class FlowActMMDiT(nn.Module):
    """Velocity model over the stream buffer.

    forward(x `[B, F, C, h, w]`, t `[B, F]` noise level in [0, 1] (0 clean, 1 noise),
    audio `[B, F, W, Da]`, text `[B, F, P, Dt]`, text_mask `[B, F, P]` bool, n_context (the
    first n_context frames are clean context), guidance `[B]` or None) -> velocity
    `[B, F, C, h, w]` (`noise - x0`). With no guidance the CFG embedding is left out, which is
    the undistilled model's behaviour.
    """

    def __init__(self, config: RendererConfig):
        super().__init__()
        self.config = config
        dim = config.dim
        self.patch_embed = PatchEmbed(config)
        # noise levels in [0, 1] are spread over the usual 0..1000 timestep range
        self.time_embed = ScalarEmbedder(config.freq_dim, dim, scale=1000.0)
        self.guidance_embed = (
            ScalarEmbedder(config.freq_dim, dim, scale=1.0) if config.cfg_embed else None
        )
        self.time_proj = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.text_embed = TextEmbedder(config)
        self.audio_embed = AudioEmbedder(config)
        self.rope = RotaryEmbedding3D(config.rope_split, config.rope_theta)
        self.blocks = nn.ModuleList(
            MMDiTBlock(config, config.window if config.uses_window(i) else None)
            for i in range(config.depth)
        )
        self.head = FinalLayer(config)

    def compile_blocks(self) -> None:
        """`torch.compile` every block in place (`dynamic=False`): the blocks share one graph per
        input shape, so the model compiles once per shape whatever its depth. It fuses the
        elementwise work around the matmuls (modulation, gates, norms, rotary), which is most of
        the time at small widths. The state dict is unchanged."""
        for block in self.blocks:
            if getattr(block, "_compiled_call_impl", None) is None:  # not twice: keep its cache
                block.compile(dynamic=False)

    def set_attention_backend(self, name: str) -> None:
        """`auto`, `split`, `flash`, `flex` or `sdpa` (see `flowact.renderer.attention`)."""
        for block in self.blocks:
            block.self_attn.backend = name

    def _check(self, x: Tensor, t: Tensor, audio: Tensor, text: Tensor, text_mask: Tensor) -> None:
        cfg = self.config
        b, f = x.shape[:2]
        latent = (cfg.latent_channels, cfg.latent_height, cfg.latent_width)
        expected = {
            "x": (x.shape, (b, f, *latent)),
            "t": (t.shape, (b, f)),
            "audio": (audio.shape, (b, f, cfg.audio_window, cfg.audio_dim)),
            "text": (text.shape, (b, f, cfg.text_slots, cfg.text_dim)),
            "text_mask": (text_mask.shape, (b, f, cfg.text_slots)),
        }
        for name, (got, want) in expected.items():
            if tuple(got) != want:
                raise ValueError(f"{name} has shape {tuple(got)}, expected {want}")

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        audio: Tensor,
        text: Tensor,
        text_mask: Tensor,
        n_context: int,
        guidance: Tensor | None = None,
    ) -> Tensor:
        self._check(x, t, audio, text, text_mask)
        cfg = self.config
        b, frames = x.shape[:2]
        tokens = self.patch_embed(x)  # [B, F*N, D]
        c = self.time_embed(t)  # [B, F, D]
        if guidance is not None:
            if self.guidance_embed is None:
                raise ValueError(f"preset {cfg.name!r} has no CFG embedding (cfg_embed=False)")
            c = c + self.guidance_embed(guidance)[:, None]
        text_tokens, text_keep = self.text_embed(text, text_mask.bool())  # [B, F, 1+P, D]
        positions = grid_positions(frames, cfg.tokens_h, cfg.tokens_w, x.device)  # [F*N, 3]
        cos, sin = self.rope(positions)
        cond = BlockInputs(
            time_mod=self.time_proj(c).unflatten(-1, (6, cfg.dim)),  # [B, F, 6, D]
            cos=cos,
            sin=sin,
            text=text_tokens,
            text_keep=text_keep,
            audio=self.audio_embed(audio),  # [B, F, W, D]
            frames=frames,
            n_context=n_context,
        )
        for block in self.blocks:
            tokens = block(tokens, cond)
        out = self.head(tokens, c)  # [B, F*N, C*py*px]
        return self.patch_embed.unpatchify(out, frames).to(x.dtype)  # [B, F, C, h, w]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# -------------------------------------------------------------------------------------- save/load


def save_model(model: FlowActMMDiT, path: str | Path) -> None:
    """Write the state dict as safetensors with the config as JSON metadata."""
    state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(path), metadata={"config": json.dumps(asdict(model.config))})


def config_from_file(path: str | Path) -> RendererConfig:
    with safe_open(str(path), framework="pt") as handle:
        raw = json.loads(handle.metadata()["config"])
    for name in ("patch", "window"):
        if raw.get(name) is not None:
            raw[name] = tuple(raw[name])
    return RendererConfig(**raw)


def load_model(
    path: str | Path, config: RendererConfig | None = None, device: str | torch.device = "cpu"
) -> FlowActMMDiT:
    """Build a model from a safetensors file (config from its metadata unless given)."""
    model = FlowActMMDiT(config or config_from_file(path))
    model.load_state_dict(load_file(str(path), device=str(device)))
    return model.to(device)
