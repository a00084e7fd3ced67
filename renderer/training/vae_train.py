"""VAE stage: reconstruction + a small KL on world clips, then the latent statistics.

Clips are `1 + 4n` frames (a neutral reference frame, then behavior- and speech-driven frames),
the layout the renderer decodes, and by default long enough to outlast the VAE's temporal reach
(`vae.temporal_reach`): causal convs look back ~120 frames, and a VAE trained on shorter clips
only ever sees frames near a clip's start, so its reconstructions decay as a stream goes on (the
first shipped VAE, trained on 13-frame clips, fell from 20 to 12 dB PSNR over the first 2 s).

Loss: L1 + MSE of the reconstruction (through a sampled latent) + `kl_weight` x the KL per
latent element. When training ends, `set_latent_stats` normalises the latents to zero mean and
unit variance per channel, what the DiT expects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import structlog
import torch
import torch.nn.functional as F

from flowact.renderer import vae as vae_mod
from flowact.renderer.training import world
from flowact.renderer.training.common import (
    StageState,
    autocast,
    cosine_lr,
    progress_of,
    run_steps,
)
from flowact.schemas.timebase import FRAMES_PER_CHUNK

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class VAETrainConfig:
    preset: str = "small"  # renderer.vae PRESETS
    size: tuple[int, int] = (128, 128)
    chunks: int | None = None  # a clip is 1 + 12 * chunks frames; None: the VAE's reach
    steps: int = 4000
    batch: int = 8
    lr: float = 4e-4
    kl_weight: float = 1e-4
    seconds: float = math.inf
    save_every: int = 500
    stats_clips: int = 32
    seed: int = 0


def vae_loss(vae: vae_mod.CausalVideoVAE, frames: torch.Tensor, kl_weight: float) -> torch.Tensor:
    """frames `[B, 1 + 4n, 3, H, W]` -> L1 + MSE + kl_weight * mean KL per latent element."""
    out = vae(frames, sample=True)
    recon = F.l1_loss(out.recon, frames) + F.mse_loss(out.recon, frames)
    kl = vae_mod.kl_divergence(out.mean, out.logvar) / out.mean[0].numel()
    return recon + kl_weight * kl


def train_vae(
    cfg: VAETrainConfig,
    workdir: Path | None,
    device: torch.device,
    bank: list[np.ndarray] | None = None,
    progress: bool = True,
    piece_seconds: float = math.inf,
) -> tuple[vae_mod.CausalVideoVAE, StageState]:
    """Train (resuming from `workdir/vae/state.pt`) for at most `piece_seconds` now out of the
    stage's `cfg.seconds`; latent stats are (re)set whenever steps ran, and saved."""
    torch.manual_seed(cfg.seed)
    vae = vae_mod.build_vae(cfg.preset).to(device)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=1e-4)
    state = StageState({"vae": vae}, {"opt": opt})
    path = workdir / "vae" / "state.pt" if workdir is not None else None
    if path is not None:
        state.load(path)
    budget = min(piece_seconds, cfg.seconds - state.seconds)
    if state.step > 0 and (budget <= 0 or state.step >= cfg.steps):
        # nothing to run: the clip length (a reach measurement, seconds for a large VAE) and
        # the stats stay as they were
        return vae.eval(), state
    rng = np.random.default_rng(cfg.seed + state.step)
    clip_cfg = world.ClipConfig(chunks=training_chunks(cfg), size=cfg.size)
    log.info("vae_clips", frames=clip_frames(clip_cfg.chunks), batch=cfg.batch)

    def step(i: int) -> float:
        lr = cosine_lr(cfg.lr, i, progress_of(state, cfg.steps, cfg.seconds), 200)
        for group in opt.param_groups:
            group["lr"] = lr
        clips = world.make_clips(cfg.batch, clip_cfg, rng, bank, device)
        with autocast(device):
            loss = vae_loss(vae, clips.frames, cfg.kl_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        return loss.detach()

    vae.train()
    first = state.step
    run_steps(state, step, cfg.steps, path, budget, cfg.save_every, "vae", progress)
    vae.eval()
    if state.step > first or first == 0:
        set_stats(vae, cfg, rng, bank, device, clip_cfg)
        if path is not None:
            state.save(path)
    return vae, state


@torch.no_grad()
def set_stats(
    vae: vae_mod.CausalVideoVAE,
    cfg: VAETrainConfig,
    rng: np.random.Generator,
    bank: list[np.ndarray] | None,
    device: torch.device,
    clip_cfg: world.ClipConfig | None = None,
) -> None:
    """Per-channel mean / std of the posterior means over fresh clips (`clip_cfg`, default the
    training clips) -> latent stats."""
    clip_cfg = clip_cfg or world.ClipConfig(chunks=training_chunks(cfg), size=cfg.size)
    means = []
    for _ in range(max(1, cfg.stats_clips // cfg.batch)):
        clips = world.make_clips(cfg.batch, clip_cfg, rng, bank, device)
        mean, _ = vae.encode_posterior(clips.frames)
        means.append(mean.transpose(0, 2).flatten(1).float())  # [C, ...]
    z = torch.cat(means, 1)
    vae.set_latent_stats(z.mean(1), z.std(1).clamp_min(1e-4))
    log.info("vae_latent_stats", mean=z.mean(1).tolist(), std=z.std(1).tolist())


@torch.no_grad()
def reconstruction_psnr(vae: vae_mod.CausalVideoVAE, frames: torch.Tensor) -> float:
    """PSNR (dB, frames in [-1, 1]) of encode -> decode through normalised latents."""
    recon = vae.decode(vae.encode(frames))
    mse = F.mse_loss(recon.float(), frames.float()).item()
    return 10 * math.log10(4.0 / max(mse, 1e-12))


def training_chunks(cfg: VAETrainConfig) -> int:
    """Chunks per training clip: `cfg.chunks`, or enough that the clip outlasts the VAE's
    temporal reach, so that training sees the steady state a long stream decodes in."""
    if cfg.chunks is not None:
        return cfg.chunks
    reach = vae_mod.temporal_reach(vae_mod.PRESETS[cfg.preset])
    return math.ceil((reach + 1) / FRAMES_PER_CHUNK)


def clip_frames(chunks: int) -> int:
    return 1 + chunks * FRAMES_PER_CHUNK
