"""Flow-matching Euler sampler and the diffusion-forcing schedule of the denoising stream.

Flow matching: `x_t = (1 - t) * x0 + t * noise`, velocity `v = noise - x0`, so an Euler step from
t to t_next is `x + (t_next - t) * v` (t = 1 pure noise, t = 0 clean).

Diffusion forcing: the stream holds `chunks` chunks at staggered noise levels. A chunk lives
`chunks * micro_steps` steps (its NFE, one level per forward): it enters at level index 0 (pure
noise) and leaves clean at index `chunks * micro_steps`. Chunk slots are ordered oldest first,
so before micro-step s the chunk in slot c has done `(chunks - 1 - c) * micro_steps + s` steps.
After `micro_steps` forwards the oldest chunk is clean, leaves, and a new one enters. With the
distilled setting (3 chunks, 1 micro-step) that is 3 NFE per chunk and one forward per chunk
emitted.
"""

from __future__ import annotations

import torch
from torch import Tensor


def shift_sigmas(u: Tensor, shift: float) -> Tensor:
    """Warp uniform levels toward noise: `shift * u / (1 + (shift - 1) * u)` (SD3 style)."""
    return shift * u / (1 + (shift - 1) * u)


def _per_frame(level: Tensor, x: Tensor) -> Tensor:
    """Broadcast levels `[B, F]`, `[F]` or `[]` against latents `[B, F, C, h, w]`."""
    if level.dim() == 1:
        level = level[None]  # [1, F]
    return level.reshape(*level.shape, *([1] * (x.dim() - level.dim()))).to(x.dtype)


class FlowMatchEulerSampler:
    """Euler sampler with the diffusers-like `set_timesteps` / `step` contract."""

    def __init__(self, shift: float = 3.0, chunks: int = 3, micro_steps: int = 1):
        if chunks < 1 or micro_steps < 1:
            raise ValueError("chunks and micro_steps must be positive")
        self.shift = shift
        self.chunks = chunks
        self.micro_steps = micro_steps
        # the stream's fixed grid; set_timesteps may later pick another one for offline use
        self.stream_sigmas = self.set_timesteps()

    @property
    def nfe_per_chunk(self) -> int:
        """Forwards a chunk takes part in between entering as noise and leaving clean."""
        return self.chunks * self.micro_steps

    def set_timesteps(
        self, num_steps: int | None = None, device: torch.device | str | None = None
    ) -> Tensor:
        """Levels `[num_steps + 1]` from 1 to 0 (default: one chunk's life, nfe_per_chunk)."""
        steps = self.nfe_per_chunk if num_steps is None else num_steps
        u = torch.linspace(1.0, 0.0, steps + 1, device=device, dtype=torch.float64)
        self.sigmas = shift_sigmas(u, self.shift).float()
        return self.sigmas

    def step(self, velocity: Tensor, t: Tensor, t_next: Tensor, x: Tensor) -> Tensor:
        """One Euler step; t, t_next per frame `[B, F]` (or `[F]`, or scalars), x `[B, F, ...]`."""
        return x + _per_frame(t_next - t, x) * velocity

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """Noise clean latents to level t (per frame, as in `step`)."""
        t = _per_frame(t, x0)
        return (1 - t) * x0 + t * noise

    # diffusion-forcing schedule of the stream

    def level_indices(self, micro_step: int) -> Tensor:
        """Steps done by each stream chunk (oldest first) before `micro_step`; `[chunks]`."""
        age = torch.arange(self.chunks - 1, -1, -1)
        return age * self.micro_steps + micro_step

    def stream_levels(self, micro_step: int) -> Tensor:
        """Noise level of each stream chunk (oldest first) before micro-step `micro_step`."""
        return self.stream_sigmas[self.level_indices(micro_step)]

    def level_table(self, device: torch.device | str | None = None) -> Tensor:
        """All stream levels of a chunk period, `[micro_steps + 1, chunks]`; row s is before
        micro-step s, the last row is after the period (oldest chunk at 0, clean)."""
        rows = [self.stream_levels(s) for s in range(self.micro_steps + 1)]
        return torch.stack(rows).to(device)

    def refine_levels(self, start: float, steps: int) -> Tensor:
        """`[steps + 1]` levels from `start` to 0 for memory refinement, on the shifted grid."""
        u = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
        return (start * shift_sigmas(u, self.shift)).float()
