"""The parts of a checkpoint that its latent space does not depend on, the VAE decoder and the
probe, fitted to a latent space that stays as it is.

`refit_checkpoint` (the `refit` command of `pipeline`) trains them anew for an exported
checkpoint and writes the checkpoint with them beside its DiT, audio encoder, sampling and
reference frame. A run (`pipeline.run_pipeline`) trains them as two of its stages:
`decoder_stage` after the VAE (the decoder alone, encoder frozen; kept only if it wins on
held-out faces) and `probe_stage` (a probe that reads frames through the VAE too). Both keep
their state in the workdir, so a refit resumes as a run does.

The VAE's training config, which both commands build these stages from, lives here too
(`vae_config`). `pipeline` imports from this module and not the other way round (but for the
type of the config), so the CLI there can dispatch to both commands without a cycle.
"""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import structlog
import torch

from flowact.renderer.engine import VAE_PRESET
from flowact.renderer.training import footage
from flowact.renderer.training.common import pick_device
from flowact.renderer.training.export import copy_reference, export_checkpoint, load_checkpoint
from flowact.renderer.training.probe import (
    PoseProbe,
    ProbeConfig,
    ProbeTrainConfig,
    probe_loss,
    score_probe,
    train_probe,
    training_batch,
)
from flowact.renderer.training.vae_train import (
    VAETrainConfig,
    finetune_decoder,
    parse_control_gains,
)
from flowact.renderer.training.workdir import clip_source, open_summary

if TYPE_CHECKING:
    from flowact.renderer.training.pipeline import PipelineConfig

log = structlog.get_logger(__name__)

# why neither a run nor a refit trains a probe on footage (a run's `FOOTAGE_SKIPS`)
NO_PROBE_ON_FOOTAGE = (
    "the probe reads the synthetic world's controls and identities; footage has no "
    "ground truth to train it on"
)


def refit_checkpoint(cfg: PipelineConfig) -> dict:
    """Train anew the parts of the exported checkpoint `cfg.init_from` that leave its latent
    space as it is: its VAE decoder (`vae_decoder_seconds`, 0 keeps it) and its probe
    (`probe_seconds`, 0 keeps it; a new probe reads frames through the VAE this writes). Writes
    `cfg.checkpoint` with them and the source's DiT, audio encoder, sampling and reference
    frame; resumable from `cfg.workdir` like a run. Returns the summary (`workdir/summary.json`)."""
    if not (Path(cfg.init_from) / "index.json").is_file():
        raise FileNotFoundError(f"{cfg.init_from} is not an exported checkpoint (no index.json)")
    start = time.monotonic()
    device = pick_device(cfg.device)
    work, data_dir = Path(cfg.workdir), Path(cfg.data)
    work.mkdir(parents=True, exist_ok=True)
    summary, save_summary = open_summary(work, cfg)
    bundle = load_checkpoint(cfg.init_from, device)
    if cfg.probe_continue and cfg.probe_seconds > 0 and bundle.probe is None:
        raise ValueError(f"{cfg.init_from} holds no probe to go on training")
    vae = bundle.vae.float().requires_grad_(False)
    size = (bundle.config.height, bundle.config.width)
    if cfg.vae_decoder_seconds > 0:
        # the decoder trains on speaking clips; the probe, on still renders, needs no speech
        source = clip_source(data_dir, size)
        vae_cfg = vae_config(cfg, size)
        vae = decoder_stage(cfg, vae_cfg, vae, work, device, source, cfg.deadline, summary)
        done = summary["vae_decoder"]["heldout"] is not None
    else:
        done = True
    probe = bundle.probe
    if cfg.probe_seconds > 0 and footage.is_footage(data_dir):
        summary["skipped"] = {"probe": NO_PROBE_ON_FOOTAGE}
        log.info("footage_refit", skipped=summary["skipped"])
    elif cfg.probe_seconds > 0 and done:
        left = min(cfg.deadline - (time.monotonic() - start), cfg.probe_seconds)
        first = probe.float() if cfg.probe_continue else None
        probe = probe_stage(cfg, work, device, vae, size, left, summary, first)
    if done:
        out = export_checkpoint(
            cfg.checkpoint, bundle.model, vae, bundle.audio, probe, bundle.sampling
        )
        copy_reference(out, cfg.init_from)
        summary["checkpoint"] = cfg.checkpoint
    save_summary()
    return summary


def vae_config(cfg: PipelineConfig, size: tuple[int, int]) -> VAETrainConfig:
    """The VAE stage's config from a run's settings (a refit's decoder stage starts from it)."""
    return VAETrainConfig(
        VAE_PRESET[cfg.preset],
        size,
        chunks=cfg.vae_chunks or None,
        batch=cfg.vae_batch,
        steps=100_000,
        seconds=cfg.vae_seconds,
        face_gain=cfg.vae_face_gain,
        mouth_gain=cfg.vae_mouth_gain,
        eye_gain=cfg.vae_eye_gain,
        control_weight=cfg.vae_control_weight,
        control_gains=parse_control_gains(cfg.vae_control_gains),
        mouth_frames=cfg.vae_mouth_frames,
        seed=cfg.seed,
    )


def decoder_stage(cfg, vae_cfg, vae, work, device, source, seconds, summary):
    """The VAE's decoder trained alone for `seconds` (`vae_train.finetune_decoder`), its figures
    under the summary's "vae_decoder"; returns the VAE it keeps."""
    dec_cfg = replace(
        vae_cfg,
        seconds=cfg.vae_decoder_seconds,
        lr=cfg.vae_decoder_lr,
        latent_noise=cfg.vae_latent_noise,
    )
    vae, state, report = finetune_decoder(dec_cfg, vae, work, device, source, piece_seconds=seconds)
    summary["vae_decoder"] = {
        **state.summary(),
        "heldout": asdict(report) if report else None,
        "kept": bool(report and report.improved),
    }
    return vae


def probe_stage(cfg, work, device, vae, size, seconds, summary, first=None) -> PoseProbe:
    """A probe trained for `seconds` (from `first` if given, else new), or the one `work`
    already holds."""
    path = work / "probe.pt"
    pcfg = first.config if first is not None else ProbeConfig(size=size, width=cfg.probe_width)
    probe = PoseProbe(pcfg).to(device)
    if path.is_file():
        probe.load_state_dict(torch.load(path, map_location=device))
        return probe.eval()

    def through_vae(frames: torch.Tensor) -> torch.Tensor:
        return vae.decode(vae.encode(frames[:, None]))[:, 0]

    tcfg = ProbeTrainConfig(
        steps=100_000,
        batch=cfg.probe_batch,
        lr=cfg.probe_lr,
        seconds=seconds,
        seed=cfg.seed,
        balanced=cfg.probe_balanced,
        identity_weight=cfg.probe_identity_weight,
        decoded_share=cfg.probe_decoded_share,
    )
    steps = _probe_steps(pcfg, tcfg, device, seconds, through_vae)
    before = _probe_score(first, through_vae) if first is not None else None
    probe, losses = train_probe(
        pcfg, replace(tcfg, steps=steps), device, probe=first, transform=through_vae
    )
    torch.save(probe.state_dict(), path)
    summary["probe"] = {
        "steps": len(losses),
        "loss": float(np.mean(losses[-50:])),
        **_probe_score(probe, through_vae),
        "started_from": before,
    }
    return probe


def _probe_score(probe: PoseProbe, transform) -> dict:
    """The probe's score on held-out renders, and under "decoded" on the same renders through
    `transform` (the VAE): a probe can read renders better and decoded frames worse."""
    decoded = score_probe(probe, transform=transform)
    return {**asdict(score_probe(probe)), "decoded": asdict(decoded)}


def _probe_steps(pcfg, tcfg: ProbeTrainConfig, device, seconds: float, transform) -> int:
    """Steps that fit `seconds`, from the time of a few whole ones (their batches made as in
    training, through `transform`): the schedule needs a step count."""
    probe = PoseProbe(pcfg).to(device)
    rng = np.random.default_rng(0)
    for i in range(4):  # one to warm up, three timed
        if i == 1:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.monotonic()
        frames, controls, ident = training_batch(tcfg, pcfg.size, rng, device, transform)
        probe_loss(probe, frames, controls, ident, tcfg.identity_weight, tcfg.balanced).backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    per = (time.monotonic() - t0) / 3
    return max(50, int(seconds / per))
