"""A run's workdir before its first stage: what the run is checked for, what its clips come
from, what a fresh workdir is seeded with (an exported checkpoint or another run's workdir),
and the summary that the pieces of a run add to."""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
import torch

from flowact.renderer.presets import get_preset
from flowact.renderer.training import footage, speech, world
from flowact.renderer.training.base import ClipSource
from flowact.renderer.training.common import StageState, save_atomically
from flowact.renderer.training.export import load_checkpoint
from flowact.renderer.training.vae_train import parse_control_gains
from flowact.renderer.weights import read_index

if TYPE_CHECKING:
    from flowact.renderer.training.pipeline import PipelineConfig
    from flowact.renderer.training.probe import PoseProbe

log = structlog.get_logger(__name__)


DATA_FILES = ("speech_train.npz", "speech_eval.npz", "text_table.pt")
SEEDED_FROM_WORKDIR = ("vae/state.pt", "probe.pt", "latents.pt")


# the loss terms that read the world's ground truth, and what they read of it
WORLD_ONLY = {
    "vae_control_weight": "each clip's ground-truth controls",
    "behavior_weight": "the behavior each prompt commands",
    "prompt_mix": "which phrasings command the same behavior",
}


def check_config(cfg: PipelineConfig, data_files: tuple[str, ...] = DATA_FILES) -> None:
    """What a run needs before it starts: the prepared data (`data_files` of the world's, or
    footage that suits the run: `check_footage`), and a source it can start from. Raises
    `FileNotFoundError` or `ValueError` naming what is wrong (before any training)."""
    data_dir = Path(cfg.data)
    is_footage = footage.is_footage(data_dir)
    missing = [name for name in data_files if not (data_dir / name).is_file()]
    if is_footage:
        check_footage(cfg, data_dir)
    elif missing:
        raise FileNotFoundError(
            f"{data_dir} lacks {', '.join(missing)}: make it with `python -m "
            f"flowact.renderer.training.pipeline prepare --data {data_dir}`"
        )
    for name in ("vae_face_gain", "vae_mouth_gain", "vae_eye_gain"):
        gain = getattr(cfg, name)
        if not (math.isfinite(gain) and gain > 0):
            raise ValueError(f"{name} must be a finite number > 0, not {gain}")
    share = cfg.probe_decoded_share
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"probe_decoded_share must be within [0, 1], not {share}")
    if cfg.init_dit and not cfg.init_from:
        raise ValueError("init_dit needs init_from: the checkpoint whose DiT to start from")
    if cfg.vae_continue and not cfg.init_from:
        raise ValueError("vae_continue needs init_from: the checkpoint whose VAE to go on training")
    for name in WORLD_ONLY:
        if getattr(cfg, name) < 0:
            raise ValueError(f"{name} must be >= 0, not {getattr(cfg, name)}")
    if cfg.prompt_mix > 1:
        raise ValueError(f"prompt_mix must be within [0, 1], not {cfg.prompt_mix}")
    if cfg.vae_control_weight > 0 and cfg.init_from and not cfg.vae_continue:
        raise ValueError(
            "vae_control_weight trains the VAE; with init_from the VAE is kept as it is "
            "unless vae_continue goes on training it"
        )
    if cfg.vae_control_gains:
        parse_control_gains(cfg.vae_control_gains)  # raises naming what is wrong
        if cfg.vae_control_weight <= 0:
            raise ValueError(
                "vae_control_gains share out the control readout's term: give it "
                "a vae_control_weight > 0"
            )
    frames = cfg.vae_mouth_frames
    if not (math.isfinite(frames) and frames >= 0):
        raise ValueError(f"vae_mouth_frames must be a finite number >= 0, not {frames}")
    if frames > 0 and cfg.vae_control_weight <= 0:
        raise ValueError(
            "vae_mouth_frames asks the control readout for the mouth's frames: give it "
            "a vae_control_weight > 0"
        )
    if cfg.anchor_temperature is not None and cfg.anchor_temperature < 0:
        raise ValueError(f"anchor_temperature must be >= 0, not {cfg.anchor_temperature}")
    if cfg.sample_guidance is not None and cfg.sample_guidance < 0:
        raise ValueError(f"sample_guidance must be >= 0, not {cfg.sample_guidance}")
    if not cfg.init_from:
        return
    source, seeded = Path(cfg.init_from), (Path(cfg.workdir) / "vae" / "state.pt").is_file()
    if (source / "index.json").is_file():
        name = read_index(source)["parts"]["dit"]["config"]["name"]
        if cfg.init_dit and name != cfg.preset:
            raise ValueError(f"{source} holds a {name!r} DiT; this run trains {cfg.preset!r}")
    elif (source / "vae" / "state.pt").is_file():
        for flag, part in (("init_dit", "DiT"), ("vae_continue", "VAE")):
            if getattr(cfg, flag):
                raise ValueError(
                    f"{flag} takes an exported checkpoint's {part}; {source} is a workdir"
                )
        # a run on footage trains no probe, so its workdir has none to give
        wanted = [n for n in SEEDED_FROM_WORKDIR if not (is_footage and n == "probe.pt")]
        missing = [name for name in wanted if not (source / name).is_file()]
        if missing and not seeded:
            raise FileNotFoundError(f"{source} has not made {', '.join(missing)} yet")
    else:
        raise FileNotFoundError(
            f"{source} is neither an exported checkpoint (index.json) nor a work directory "
            "(vae/state.pt)"
        )


def check_footage(cfg: PipelineConfig, data: Path) -> None:
    """That the footage in `data` suits the run: prepared at its preset's frame size, and with
    held-out videos where a held-out report needs them; and that the run asks nothing of it
    that needs the world's ground truth."""
    manifest = footage.read_manifest(data)
    config = get_preset(cfg.preset)
    if (manifest.height, manifest.width) != (config.height, config.width):
        raise ValueError(
            f"{data} was prepared at {manifest.height}x{manifest.width} for {manifest.preset!r}; "
            f"{cfg.preset!r} renders {config.height}x{config.width}: prepare it again with "
            f"--preset {cfg.preset}"
        )
    if not (data / footage.TEXT_TABLE).is_file():
        raise FileNotFoundError(f"{data} lacks {footage.TEXT_TABLE}: prepare it again")
    for name, needs in WORLD_ONLY.items():
        if getattr(cfg, name) > 0:
            raise ValueError(
                f"{name} reads {needs}, which only the synthetic world has; footage has none: "
                "leave it at 0"
            )
    if cfg.anchor_temperature is not None and not footage.FootageClips(data).training_phrasings():
        raise ValueError(
            f"anchor_temperature anchors prompts on the training footage's phrasings, and {data}'s "
            "train videos carry none: annotate prompts in their sidecars, or leave it out"
        )
    if cfg.vae_decoder_seconds > 0 or cfg.vae_continue:
        footage.FootageClips(data, "eval")  # a held-out report; raises naming what is missing


def clip_source(data: Path, size: tuple[int, int]) -> ClipSource:
    """What the VAE and the latents draw clips from: the footage `data` holds if it was made by
    `prepare-footage`, else the world at `size` with `data`'s training speech."""
    if footage.is_footage(data):
        return footage.FootageClips(data)
    return world.WorldClips(
        world.ClipConfig(size=size), speech.load_bank(data / "speech_train.npz")
    )


def take_data(data_dir: Path, work: Path) -> Path:
    """Keep the held-out speech in `work`: the evaluation at the end of a run reads it from
    there, whatever became of `data_dir`."""
    kept = work / "speech_eval.npz"
    if not kept.is_file():
        shutil.copyfile(data_dir / "speech_eval.npz", kept)
    return kept


def seed_workdir(work: Path, cfg: PipelineConfig) -> None:
    """Start a fresh `work` from `init_from` (checked by `check_config`): an exported checkpoint
    or another run's workdir."""
    source = Path(cfg.init_from)
    if (source / "index.json").is_file():
        _seed_from_checkpoint(work, cfg)
    else:
        _seed_from_workdir(work, source, cfg)


def _seed_from_workdir(work: Path, source: Path, cfg: PipelineConfig) -> None:
    """Take another run's VAE, probe and latents as they are, so that an ablation can start as
    soon as that run has made its latents, beside it on the same machine."""
    if (work / "vae" / "state.pt").is_file():
        return
    work.mkdir(parents=True, exist_ok=True)
    for name in ("probe.pt", "latents.pt"):
        if (source / name).is_file():  # a run on footage has no probe
            _link_or_copy(source / name, work / name)
    # the VAE stage as finished, whatever this run's own VAE budget is
    blob = torch.load(source / "vae" / "state.pt", map_location="cpu", weights_only=False)
    blob["seconds"] = max(blob["seconds"], cfg.vae_seconds)
    save_atomically(blob, work / "vae" / "state.pt")
    log.info("workdir_seeded", source=str(source), workdir=str(work))


def probe_to_continue(work: Path, cfg: PipelineConfig, device: torch.device) -> PoseProbe | None:
    """The checkpoint's probe for a run's probe stage to go on training (a run with
    `vae_continue` and `probe_continue` whose probe stage has not finished), else None."""
    if not (cfg.vae_continue and cfg.probe_continue) or (work / "probe.pt").is_file():
        return None
    return load_checkpoint(cfg.init_from, device).probe.float()


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)  # the latents are hundreds of MB: share them where the disk allows
    except OSError:
        shutil.copyfile(src, dst)


def _seed_from_checkpoint(work: Path, cfg: PipelineConfig) -> None:
    """Write the checkpoint's VAE (as a finished VAE stage, or with `vae_continue` as one to go
    on with) and probe into a fresh `work`; with `init_dit`, also its DiT and audio encoder as a
    finished stage 1, so that stage 2 goes on training them (training that outlasts one
    machine, carried by the exported checkpoint)."""
    checkpoint = Path(cfg.init_from)
    vae_path, probe_path = work / "vae" / "state.pt", work / "probe.pt"
    dit_path = work / "stage1" / "state.pt"
    if vae_path.is_file() and (dit_path.is_file() or not cfg.init_dit):
        return
    bundle = load_checkpoint(checkpoint)
    on_footage = footage.is_footage(cfg.data)  # trains and keeps no probe
    if bundle.probe is None and not on_footage:
        raise ValueError(f"{checkpoint} holds no probe to start from")
    # the exported weights are bf16; stored back in fp32 as a trained stage would hold them.
    # A VAE to go on training is a stage that has not run yet (its schedule starts over from
    # these weights); one to keep is a stage that has run out of time
    if not vae_path.is_file():
        spent = 0.0 if cfg.vae_continue else cfg.vae_seconds
        StageState({"vae": bundle.vae.float()}, step=1, seconds=spent).save(vae_path)
        # the probe as it is, unless the run goes on training it on its new latent space
        # (`probe_to_continue`)
        if not on_footage and not (cfg.vae_continue and cfg.probe_continue):
            torch.save(bundle.probe.float().state_dict(), probe_path)
    if cfg.init_dit and not dit_path.is_file():
        dit, audio = bundle.model.float(), bundle.audio.float()
        parts = {"model": dit, "encoder": audio, "ema": dit}
        StageState(parts, step=1, seconds=cfg.stage1_seconds).save(dit_path)
    log.info("workdir_seeded", checkpoint=str(checkpoint), workdir=str(work), dit=cfg.init_dit)


def open_summary(work: Path, cfg: PipelineConfig) -> tuple[dict, Callable[[], None]]:
    """`work/summary.json` as earlier pieces left it (with this piece's `cfg`), and a function
    that writes it back with this piece's wall time so far added to theirs."""
    path, start = work / "summary.json", time.monotonic()
    summary = json.loads(path.read_text()) if path.is_file() else {}
    summary["config"] = asdict(cfg)
    earlier = summary.get("wall_seconds", 0.0)  # the pieces before this one

    def save() -> None:
        summary["wall_seconds"] = earlier + time.monotonic() - start
        path.write_text(json.dumps(summary, indent=1, default=str))

    return summary, save
