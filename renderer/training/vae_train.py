"""VAE stage: reconstruction + a small KL on clips of a `ClipSource` (the world's, or prepared
footage), then the latent statistics.

Clips are `1 + 4n` frames (a neutral reference frame, then behavior- and speech-driven frames),
the layout the renderer decodes, and by default long enough to outlast the VAE's temporal reach
(`vae.temporal_reach`): causal convs look back ~120 frames, and a VAE trained on shorter clips
only ever sees frames near a clip's start, so its reconstructions decay as a stream goes on (the
first shipped VAE, trained on 13-frame clips, fell from 20 to 12 dB PSNR over the first 2 s).

Loss: L1 + MSE of the reconstruction (through a sampled latent), weighted `face_gain` over the
face region, `face_gain * mouth_gain` over the mouth's and `face_gain * eye_gain` over the eyes'
(`world.face_weight`: the mouth and eyes the metrics read are a few percent of the pixels), +
`kl_weight` x the KL per latent element. When training ends, `set_latent_stats` normalises the
latents to zero mean and unit variance per channel, what the DiT expects.

With `control_weight`, a small head (`ConvReadout`) trained beside the VAE reads each latent's
ground-truth controls (their mean over its 4 frames) from the posterior mean, and its error
joins the loss (`control_loss`); only the world's clips have controls to read. A pixel loss
hardly weighs a smile (a few pixels of a 128 x 128 frame), so the encoder is free to drop it;
the readout's gradient asks the encoder to keep every control in the latents, where the decoder
can find it. `control_gains` shares the term out among the controls (each control's squared
error counts by its gain, 1 by default, over the sum of the gains), so that the controls a pixel
loss weighs least, a smile's and the brows', can be asked for hardest. With `mouth_frames`, the
head also reads the mouth at each of a latent's 4 frames less their mean (`latent_targets`):
the motion inside a latent, which lip-sync reads and a mean alone leaves out. The head is part
of the stage's state only: the exported VAE is the same network either way. `readout_report`
says how well it reads unseen characters when the stage ends.

`finetune_decoder` trains the decoder alone with the encoder and the latent statistics frozen:
sharper frames from the same latent space, so a DiT trained on it needs no retraining. It keeps
the new decoder only if it reconstructs held-out clips better over the face (`DecoderReport`).
With `latent_noise` its input latents are noised, since at inference it decodes a DiT's latents,
which are near the encoder's but not the encoder's.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import structlog
import torch
from torch import Tensor, nn

from flowact.renderer import vae as vae_mod
from flowact.renderer.training import behaviors as bh
from flowact.renderer.training import world
from flowact.renderer.training.base import Clip, ClipSource
from flowact.renderer.training.common import (
    StageState,
    autocast,
    cosine_lr,
    progress_of,
    run_steps,
)
from flowact.renderer.training.probe import CONTROL_STD, pearson
from flowact.schemas.timebase import FRAMES_PER_CHUNK, FRAMES_PER_LATENT

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
    face_gain: float = 1.0  # loss weight over the face region, against 1 elsewhere
    # and over the mouth's region, against the rest of the face: the moving mouth lip-sync reads
    mouth_gain: float = 1.0
    # and over the eyes' band: the gaze moves a few pixels of each eye
    eye_gain: float = 1.0
    # decoder stage only: the decoder's input latents get Gaussian noise of a std drawn per
    # clip from U(0, latent_noise) (normalised units), so that it learns to decode latents
    # near the encoder's (a DiT's) as well as the encoder's own
    latent_noise: float = 0.0
    # the latent control readout's weight in the loss (`control_loss`); 0 = no readout
    control_weight: float = 0.0
    # (control name, gain) pairs: each named control's share of the readout term against 1 for
    # the others (`parse_control_gains`, `control_loss`)
    control_gains: tuple[tuple[str, float], ...] = ()
    # the readout also asks for the mouth at each of a latent's frames, less their mean (the
    # motion inside a latent, `latent_targets`), with this gain for each frame; 0 = not asked
    mouth_frames: float = 0.0
    seconds: float = math.inf
    save_every: int = 500
    stats_clips: int = 32
    seed: int = 0


class ConvReadout(nn.Module):
    """Latent `[N, C, h, w]` -> controls `[N, K]`: two convolutions and a linear head."""

    def __init__(self, channels: int, controls: int, width: int = 64) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1),
            nn.GELU(),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(width * 16, 256),
            nn.GELU(),
            nn.Linear(256, controls),
        )

    def forward(self, latents: Tensor) -> Tensor:
        return self.body(latents)


def control_head(vae: vae_mod.CausalVideoVAE, mouth_frames: bool = False) -> ConvReadout:
    """The readout `control_loss` trains beside `vae`: its latent channels -> every control,
    and with `mouth_frames` the mouth's motion inside the latent (`latent_targets`)."""
    extra = FRAMES_PER_LATENT if mouth_frames else 0
    return ConvReadout(vae.config.latent_channels, len(bh.CONTROLS) + extra)


def latent_controls(controls: Tensor, latents: int) -> Tensor:
    """Controls `[B, 4n, K]` of the frames after the reference -> their mean over each latent's
    frames, `[B, n, K]` (`latents` = n)."""
    return controls.unflatten(1, (latents, -1)).mean(2)


def latent_targets(controls: Tensor, latents: int, mouth_frames: bool) -> Tensor:
    """What a control head reads of each latent: `latent_controls` `[B, n, K]`, and with
    `mouth_frames` the mouth at each of the latent's 4 frames less their mean beside them,
    `[B, n, K + 4]`: lip-sync reads the mouth moving from frame to frame, which a latent that
    holds only the mean loses."""
    mean = latent_controls(controls, latents)
    if not mouth_frames:
        return mean
    mouth = controls[..., bh.C["mouth"]].unflatten(1, (latents, -1))  # [B, n, 4]
    return torch.cat([mean, mouth - mouth.mean(-1, keepdim=True)], -1)


def reads_mouth_frames(head: ConvReadout) -> bool:
    """Whether `head` was built to read the mouth's motion inside each latent."""
    return head.body[-1].out_features > len(bh.CONTROLS)


def parse_control_gains(spec: str) -> tuple[tuple[str, float], ...]:
    """`"smile=6,brows=6"` -> `(("smile", 6.0), ("brows", 6.0))`; `""` -> `()`. Raises
    `ValueError` naming an unknown control, a repeated one, or a gain that is not a number > 0."""
    gains: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep:
            raise ValueError(f"control gain {item!r} is not NAME=GAIN")
        if name not in bh.C:
            known = ", ".join(bh.CONTROLS)
            raise ValueError(f"control gain names {name!r}, not a control: {known}")
        if name in gains:
            raise ValueError(f"control gain names {name!r} twice")
        try:
            gain = float(value)
        except ValueError:
            wrong = value.strip()
            raise ValueError(f"control gain of {name!r} is {wrong!r}, not a number") from None
        if not gain > 0 or not math.isfinite(gain):
            raise ValueError(f"control gain of {name!r} must be a finite number > 0, not {gain}")
        gains[name] = gain
    return tuple(gains.items())


def gain_vector(gains: tuple[tuple[str, float], ...], mouth_frames: float = 0.0) -> Tensor:
    """`[K]`: each control's gain, 1 where `gains` does not name it; with `mouth_frames` > 0,
    `[K + 4]`: that gain for each frame of the mouth's motion inside a latent after them."""
    out = torch.ones(len(bh.CONTROLS))
    for name, gain in gains:
        out[bh.C[name]] = gain
    if mouth_frames > 0:
        out = torch.cat([out, torch.full((FRAMES_PER_LATENT,), float(mouth_frames))])
    return out


class ControlReadout(NamedTuple):
    """What `vae_loss` adds the control readout with: the head, the clips' controls `[B, 4n, K]`,
    the term's weight and each control's gain in it (`gain_vector`; None: all 1)."""

    head: ConvReadout
    controls: Tensor
    weight: float
    gains: Tensor | None = None


def head_reading(head: ConvReadout, mean: Tensor, controls: Tensor) -> tuple[Tensor, Tensor]:
    """`head`'s reading of every latent after the reference (`mean` `[B, 1 + n, C, h, w]`, raw
    posterior means) and the `latent_targets` of `controls` `[B, 4n, K]` it was built to read:
    both `[B * n, K]`, or `[B * n, K + 4]` for a head that reads the mouth's frames."""
    latents = mean.shape[1] - 1
    want = latent_targets(controls.float(), latents, reads_mouth_frames(head)).flatten(0, 1)
    return head(mean[:, 1:].flatten(0, 1).float()), want


def control_loss(
    head: ConvReadout, mean: Tensor, controls: Tensor, gains: Tensor | None = None
) -> Tensor:
    """Squared error of `head_reading`, each control over its spread (`probe.CONTROL_STD`; the
    mouth's for its frames): the mean over controls weighted by `gains` (`gain_vector`; None:
    the plain mean), then over latents."""
    got, want = head_reading(head, mean, controls)
    std = CONTROL_STD.to(got.device)
    if got.shape[-1] > len(std):
        std = torch.cat([std, std[bh.C["mouth"]].expand(got.shape[-1] - len(std))])
    err = ((got - want) / std).pow(2)
    if gains is None:
        return err.mean()
    gains = gains.to(err.device)
    return (err * gains).sum(-1).mean() / gains.sum()


def vae_loss(
    vae: vae_mod.CausalVideoVAE,
    frames: torch.Tensor,
    kl_weight: float,
    face_gain: float = 1.0,
    latent_noise: float = 0.0,
    readout: ControlReadout | None = None,
    mouth_gain: float = 1.0,
    eye_gain: float = 1.0,
) -> torch.Tensor:
    """frames `[B, 1 + 4n, 3, H, W]` -> L1 + MSE weighted by `world.face_weight` (`face_gain`,
    `mouth_gain`, `eye_gain`) + kl_weight * mean KL per latent element (no KL term at
    `kl_weight` 0, where the encoder is frozen); with `latent_noise`, the reconstruction is
    decoded from latents noised as `VAETrainConfig.latent_noise` says; with `readout`, + its
    weight * `control_loss`."""
    noise = None
    if latent_noise > 0:
        noise = latent_noise * torch.rand(frames.shape[0], device=frames.device)
    out = vae(frames, sample=True, latent_noise=noise)
    err = out.recon.float() - frames.float()
    size = frames.shape[-2:]
    weight = world.face_weight(*size, face_gain, mouth_gain, eye_gain).to(frames.device)
    loss = ((err.abs() + err.pow(2)) * weight).mean()
    if kl_weight > 0:
        loss = loss + kl_weight * vae_mod.kl_divergence(out.mean, out.logvar) / out.mean[0].numel()
    if readout is not None:
        term = control_loss(readout.head, out.mean, readout.controls, readout.gains)
        loss = loss + readout.weight * term
    return loss


def train_vae(
    cfg: VAETrainConfig,
    workdir: Path | None,
    device: torch.device,
    source: ClipSource | None = None,
    progress: bool = True,
    piece_seconds: float = math.inf,
) -> tuple[vae_mod.CausalVideoVAE, StageState]:
    """Train on clips of `source` (default the world at `cfg.size`, babble for speech), resuming
    from `workdir/vae/state.pt`, for at most `piece_seconds` now out of the stage's
    `cfg.seconds`; latent stats are (re)set whenever steps ran, and saved. With
    `cfg.control_weight`, the state also holds the control head (`state.modules["head"]`); a
    saved VAE without one (a seeded checkpoint's) starts it fresh."""
    if cfg.latent_noise > 0:
        # before the latent statistics exist, "normalised units" would mean nothing
        raise ValueError("latent_noise is for the decoder stage (finetune_decoder) only")
    source = source or default_source(cfg)
    if cfg.control_weight > 0 and not source.ground_truth:
        raise ValueError(
            "control_weight reads each clip's ground-truth controls, which only the synthetic "
            "world has; footage has none: train with control_weight 0"
        )
    torch.manual_seed(cfg.seed)
    vae = vae_mod.build_vae(cfg.preset).to(device)
    modules: dict[str, nn.Module] = {"vae": vae}
    if cfg.control_weight > 0:
        modules["head"] = control_head(vae, cfg.mouth_frames > 0).to(device)
    params = [p for m in modules.values() for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.99), weight_decay=1e-4)
    state = StageState(modules, {"opt": opt}, optional=frozenset({"head"}))
    path = workdir / "vae" / "state.pt" if workdir is not None else None
    if path is not None:
        state.load(path)
    budget = min(piece_seconds, cfg.seconds - state.seconds)
    if state.step > 0 and (budget <= 0 or state.step >= cfg.steps):
        # nothing to run: the clip length (a reach measurement, seconds for a large VAE) and
        # the stats stay as they were
        return vae.eval(), state
    rng = np.random.default_rng(cfg.seed + state.step)
    chunks = training_chunks(cfg)
    log.info("vae_clips", frames=clip_frames(chunks), batch=cfg.batch)

    step = _step_fn(cfg, modules, opt, state, source, chunks, rng, device)
    for m in modules.values():
        m.train()
    first = state.step
    run_steps(state, step, cfg.steps, path, budget, cfg.save_every, "vae", progress)
    for m in modules.values():
        m.eval()
    if state.step > first or first == 0:
        set_stats(vae, cfg, rng, source, device, chunks)
        if path is not None:
            state.save(path)
    return vae, state


def _step_fn(
    cfg, modules, opt, state, source: ClipSource, chunks: int, rng, device
) -> Callable[[int], Tensor]:
    """One optimizer step on fresh clips of `chunks` chunks, for `train_vae` and
    `finetune_decoder` alike (`opt` holds what the stage trains; `modules` has the VAE, and the
    control head if there is one)."""
    params = [p for group in opt.param_groups for p in group["params"]]
    head = modules.get("head")
    asked = cfg.control_gains or cfg.mouth_frames > 0
    gains = gain_vector(cfg.control_gains, cfg.mouth_frames).to(device) if asked else None

    def step(i: int) -> Tensor:
        lr = cosine_lr(cfg.lr, i, progress_of(state, cfg.steps, cfg.seconds), 200)
        for group in opt.param_groups:
            group["lr"] = lr
        clips = source.make(cfg.batch, chunks, rng, device)
        readout = None
        if head is not None:
            readout = ControlReadout(head, clips.controls, cfg.control_weight, gains)
        frames, vae = clips.frames, modules["vae"]
        with autocast(device):
            loss = vae_loss(
                vae,
                frames,
                cfg.kl_weight,
                cfg.face_gain,
                cfg.latent_noise,
                readout,
                mouth_gain=cfg.mouth_gain,
                eye_gain=cfg.eye_gain,
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return loss.detach()

    return step


@torch.no_grad()
def readout_report(
    vae: vae_mod.CausalVideoVAE,
    head: ConvReadout,
    cfg: VAETrainConfig,
    source: ClipSource,
    device: torch.device,
    clips: int = 4,
) -> dict[str, float]:
    """How well the control head reads unseen characters' controls from `vae`'s latents: the
    correlation of its reading with `latent_controls`, per control, over the `heldout_clips`
    of `source` (which must have ground truth); for a head that reads the mouth's frames, also
    `mouth_frames`, over the motion inside each latent."""
    if not source.ground_truth:
        raise ValueError("the control readout reads ground-truth controls; footage has none")
    batch = heldout_clips(cfg, source, device, clips)
    mean, _ = vae.encode_posterior(batch.frames)
    got, want = (t.cpu().numpy() for t in head_reading(head, mean, batch.controls))
    report = {name: pearson(got[:, k], want[:, k]) for k, name in enumerate(bh.CONTROLS)}
    if reads_mouth_frames(head):
        k = len(bh.CONTROLS)
        report["mouth_frames"] = pearson(got[:, k:].ravel(), want[:, k:].ravel())
    return report


@dataclass(frozen=True)
class DecoderReport:
    """Held-out reconstruction PSNR (dB) of the VAE a stage started from (base) and of the one
    it trained (tuned): over whole frames and over the face region (`heldout_report`)."""

    base: float
    base_face: float
    tuned: float
    tuned_face: float
    clips: int

    @property
    def improved(self) -> bool:
        return self.tuned_face > self.base_face


def finetune_decoder(
    cfg: VAETrainConfig,
    vae: vae_mod.CausalVideoVAE,
    workdir: Path | None,
    device: torch.device,
    source: ClipSource | None = None,
    progress: bool = True,
    piece_seconds: float = math.inf,
    heldout_clips: int = 4,
) -> tuple[vae_mod.CausalVideoVAE, StageState, DecoderReport | None]:
    """Train a copy of `vae`'s decoder on clips of `source` (default as `train_vae`'s),
    resuming from `workdir/vae_decoder/state.pt`, with the encoder and latent statistics
    frozen, so the latents a DiT learned stay valid; `vae` itself is left as it is.
    `cfg.kl_weight` is ignored (the posterior does not move).

    Returns the VAE to use, the stage's state and, once the stage's budget is spent, a report
    on `heldout_clips` of the source's held-out clips: the VAE returned is the tuned one only if
    it reconstructs them better over the face, else `vae` (None report: `vae`, not yet done)."""
    source = source or default_source(cfg)
    torch.manual_seed(cfg.seed)
    tuned = copy.deepcopy(vae).to(device)
    tuned.encoder.requires_grad_(False)
    tuned.decoder.requires_grad_(True)
    opt = torch.optim.AdamW(
        tuned.decoder.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=1e-4
    )
    state = StageState({"decoder": tuned.decoder}, {"opt": opt})
    path = workdir / "vae_decoder" / "state.pt" if workdir is not None else None
    if path is not None:
        state.load(path)
    budget = min(piece_seconds, cfg.seconds - state.seconds)
    if budget > 0 and state.step < cfg.steps:
        rng = np.random.default_rng(cfg.seed + state.step)
        dec_cfg = replace(cfg, kl_weight=0.0, control_weight=0.0)
        chunks = training_chunks(cfg)
        step = _step_fn(dec_cfg, {"vae": tuned}, opt, state, source, chunks, rng, device)
        tuned.decoder.train()
        run_steps(state, step, cfg.steps, path, budget, cfg.save_every, "vae decoder", progress)
    tuned.eval().requires_grad_(False)
    if state.step < cfg.steps and state.seconds < cfg.seconds - 1:
        return vae, state, None
    report = heldout_report(vae, tuned, cfg, source, device, heldout_clips)
    log.info("vae_decoder_heldout", **asdict(report), kept=report.improved)
    return (tuned if report.improved else vae), state, report


def heldout_report(
    base: vae_mod.CausalVideoVAE,
    tuned: vae_mod.CausalVideoVAE,
    cfg: VAETrainConfig,
    source: ClipSource,
    device: torch.device,
    clips: int = 4,
) -> DecoderReport:
    """How `base` and `tuned` reconstruct the same `clips` held-out clips of `source`
    (`heldout_clips`)."""
    frames = heldout_clips(cfg, source, device, clips).frames
    face = world.face_region(*cfg.size)
    return DecoderReport(
        base=reconstruction_psnr(base, frames),
        base_face=reconstruction_psnr(base, frames, face),
        tuned=reconstruction_psnr(tuned, frames),
        tuned_face=reconstruction_psnr(tuned, frames, face),
        clips=clips,
    )


def heldout_clips(
    cfg: VAETrainConfig, source: ClipSource, device: torch.device, clips: int
) -> Clip:
    """`clips` of `source.heldout()` (the world's: unseen identities), of the training clips'
    length, from a fixed seed: the held-out reports of different runs and stages see the same
    clips."""
    rng = np.random.default_rng(12345)
    return source.heldout().make(clips, training_chunks(cfg), rng, device)


@torch.no_grad()
def set_stats(
    vae: vae_mod.CausalVideoVAE,
    cfg: VAETrainConfig,
    rng: np.random.Generator,
    source: ClipSource,
    device: torch.device,
    chunks: int | None = None,
) -> None:
    """Per-channel mean / std of the posterior means over fresh clips of `source` (of `chunks`
    chunks, default the training clips') -> latent stats."""
    chunks = chunks or training_chunks(cfg)
    means = []
    for _ in range(max(1, cfg.stats_clips // cfg.batch)):
        clips = source.make(cfg.batch, chunks, rng, device)
        mean, _ = vae.encode_posterior(clips.frames)
        means.append(mean.transpose(0, 2).flatten(1).float())  # [C, ...]
    z = torch.cat(means, 1)
    vae.set_latent_stats(z.mean(1), z.std(1).clamp_min(1e-4))
    log.info("vae_latent_stats", mean=z.mean(1).tolist(), std=z.std(1).tolist())


@torch.no_grad()
def reconstruction_psnr(
    vae: vae_mod.CausalVideoVAE, frames: torch.Tensor, region: Tensor | None = None
) -> float:
    """PSNR (dB, frames in [-1, 1]) of encode -> decode through normalised latents, over the
    pixels where `region` (`[H, W]` bool) is set, or all of them."""
    recon = vae.decode(vae.encode(frames))
    err = (recon.float() - frames.float()).pow(2)
    mse = (err[..., region] if region is not None else err).mean().item()
    return 10 * math.log10(4.0 / max(mse, 1e-12))


def default_source(cfg: VAETrainConfig) -> world.WorldClips:
    """The world at `cfg.size`, babble for speech: what a stage given no source trains on."""
    return world.WorldClips(world.ClipConfig(size=cfg.size))


def training_chunks(cfg: VAETrainConfig) -> int:
    """Chunks per training clip: `cfg.chunks`, or enough that the clip outlasts the VAE's
    temporal reach, so that training sees the steady state a long stream decodes in."""
    if cfg.chunks is not None:
        return cfg.chunks
    reach = vae_mod.temporal_reach(vae_mod.PRESETS[cfg.preset])
    return math.ceil((reach + 1) / FRAMES_PER_CHUNK)


def clip_frames(chunks: int) -> int:
    return 1 + chunks * FRAMES_PER_CHUNK
