"""What a checkpoint's latent space carries of each control, against what its decoded frames
show: where a control that the stream does not show is lost, in the encoder or in the decoder.

Clips hold random poses (`behaviors.random_controls`), each for `hold` latents of 4 frames, and
the last latent of each hold is read: the VAE's temporal kernels see only that pose there, so
each read latent has one target. Four readings of every control are compared,
as correlations with the truth on the unseen characters:

- `probe_raw`: the probe on the rendered frames (what the instrument can read at all);
- `probe_decoded`: the probe on the frames encoded and decoded (what the evaluation sees of a
  perfect DiT);
- `latent_linear`: ridge regression from the latents, fitted on training characters;
- `latent_conv`: a small convolutional readout from the latents, trained on them.

A control whose latent readouts are high while `probe_decoded` is low is in the latents and lost
in the decoder: a decoder trained further can bring it back without a new latent space. One
whose latent readouts are low as well is lost in the encoder.

    python -m flowact.renderer.training.latent_readout --checkpoint checkpoints/demo \
        --out docs/training/reports/latent_readout.json

`--vae WORKDIR` reads the VAE a run's workdir holds (`vae/state.pt`, e.g. one that
`--vae-continue` went on training) in place of the checkpoint's, with the checkpoint's probe:
what a new latent space carries, before any DiT is trained on it.

`--held CHANNEL` looks at one behavior channel's poses alone (`held_clips`, `held_poses`):
`--eval-clips` unseen characters hold each of its behaviors' targets (and a neutral pose) for
`--hold` latents after a neutral reference frame, and the probe reads the controls the
channel holds over the last 4 frames, rendered and through the VAE. A correlation over
random poses can hide a pose that the VAE erases while its opposite passes (a frown against a
smile, a look up against a look down); this shows it, in figures and, beside the report, in a
picture of 3 characters, rendered and decoded. `--faces` is `--held face`.

    python -m flowact.renderer.training.latent_readout --held face --checkpoint checkpoints/demo \
        --out docs/training/reports/held_faces.json
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import structlog
import torch
from torch import Tensor
from tqdm import tqdm

from flowact.renderer.media import encode_png
from flowact.renderer.training import behaviors as bh
from flowact.renderer.training import world
from flowact.renderer.training.common import StageState, pick_device
from flowact.renderer.training.export import Bundle, load_checkpoint
from flowact.renderer.training.probe import PoseProbe, pearson, read_frames
from flowact.renderer.training.vae_train import ConvReadout
from flowact.renderer.vae import CausalVideoVAE
from flowact.schemas.timebase import FRAMES_PER_LATENT

log = structlog.get_logger(__name__)

READINGS = ("probe_raw", "probe_decoded", "latent_linear", "latent_conv")


@dataclass(frozen=True)
class ReadoutConfig:
    train_clips: int = 64  # training characters, one clip each
    eval_clips: int = 16  # unseen characters
    poses: int = 8  # poses per clip
    hold: int = 3  # latents each pose is held for; the last one is read
    batch: int = 4  # clips through the VAE at once
    ridge: float = 10.0  # the linear readout's penalty, on standardised latents
    conv_steps: int = 1500
    conv_lr: float = 2e-3
    seed: int = 0


@dataclass
class PoseClips:
    frames: Tensor  # [N, 1 + 4 * P * hold, 3, H, W]: the neutral reference, then the poses
    poses: np.ndarray  # [N, P, K]
    hold: int

    def read(self, per_latent: Tensor) -> Tensor:
        """`[N, P * hold, ...]` -> the last of each hold, `[N, P, ...]`."""
        return per_latent[:, self.hold - 1 :: self.hold]


def pose_clips(
    n: int, poses: int, hold: int, split: str, size: tuple[int, int], seed: int, factor: int
) -> PoseClips:
    """`n` characters of `split`, each holding `poses` random poses for `hold` latents (of
    `factor` frames) each."""
    rng = np.random.default_rng(seed)
    identity = world.sample_identities(n, split, seed)
    k = len(bh.CONTROLS)
    held = bh.random_controls(n * poses, rng).reshape(n, poses, k)
    neutral = bh.neutral_controls(1)[None].repeat(n, 0)  # [N, 1, K]
    controls = np.concatenate([neutral, held.repeat(factor * hold, axis=1)], 1)
    return PoseClips(world.render(identity, torch.from_numpy(controls), size), held, hold)


@torch.no_grad()
def encode_clips(vae: CausalVideoVAE, clips: PoseClips, batch: int, desc: str) -> Tensor:
    """Every clip's latents, `[N, 1 + P * hold, C, h, w]`."""
    device = next(vae.parameters()).device
    parts = [
        vae.encode(part.to(device)).float().cpu()
        for part in tqdm(clips.frames.split(batch), desc=desc, unit="batch", leave=False)
    ]
    return torch.cat(parts)


def read_latents(clips: PoseClips, latents: Tensor) -> Tensor:
    """The read latent of each pose, `[N * P, C, h, w]`, of `encode_clips`'s latents."""
    return clips.read(latents[:, 1:]).flatten(0, 1)


@torch.no_grad()
def probe_readings(bundle: Bundle, latents: Tensor, clips: PoseClips, batch: int) -> dict:
    """The probe's reading of each pose's read latent, averaged over its frames, on the
    rendered frames and on the frames decoded from `latents` (`encode_clips`):
    `{"probe_raw", "probe_decoded"} -> [N * P, K]`."""
    n = len(latents)
    device = next(bundle.vae.parameters()).device
    decoded = torch.cat(
        [
            bundle.vae.decode(part.to(device))[:, 1:].float().cpu()
            for part in tqdm(latents.split(batch), desc="decode", unit="batch", leave=False)
        ]
    )
    out = {}
    for name, frames in (("probe_raw", clips.frames[:, 1:]), ("probe_decoded", decoded)):
        groups = frames.view(n, latents.shape[1] - 1, -1, *frames.shape[2:])  # [N, L, 4, ...]
        read = clips.read(groups).flatten(1, 2)  # [N, P * 4, 3, H, W]
        controls = read_frames(bundle.probe, read).controls.cpu().numpy()
        k = controls.shape[-1]
        out[name] = controls.reshape(n * clips.poses.shape[1], -1, k).mean(1)  # over its frames
    return out


def fit_ridge(x: np.ndarray, y: np.ndarray, penalty: float) -> tuple[np.ndarray, ...]:
    """Ridge regression of `y` `[N, K]` on `x` `[N, D]`, on standardised features: the
    (mean, scale, weights, intercept) that `apply_ridge` uses."""
    mean, scale = x.mean(0), x.std(0) + 1e-6
    z = (x - mean) / scale
    gram = z.T @ z + penalty * np.eye(z.shape[1])
    weights = np.linalg.solve(gram, z.T @ (y - y.mean(0)))
    return mean, scale, weights, y.mean(0)


def apply_ridge(fit: tuple[np.ndarray, ...], x: np.ndarray) -> np.ndarray:
    mean, scale, weights, intercept = fit
    return ((x - mean) / scale) @ weights + intercept


def train_conv(
    x: Tensor, y: Tensor, cfg: ReadoutConfig, device: torch.device
) -> tuple[ConvReadout, list[float]]:
    """A `ConvReadout` fitted to (`x`, `y`) by Adam, and its loss per step."""
    torch.manual_seed(cfg.seed)
    model = ConvReadout(x.shape[1], y.shape[1]).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.conv_lr, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.conv_steps)
    x, y = x.to(device), y.to(device)
    gen = torch.Generator().manual_seed(cfg.seed)
    losses = []
    for _ in tqdm(range(cfg.conv_steps), desc="conv readout", unit="step", leave=False):
        rows = torch.randint(0, len(x), (min(128, len(x)),), generator=gen).to(device)
        loss = (model(x[rows]) - y[rows]).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    return model.eval(), losses


def correlations(got: np.ndarray, want: np.ndarray) -> dict[str, float]:
    return {name: pearson(got[:, k], want[:, k]) for k, name in enumerate(bh.CONTROLS)}


def run_readout(bundle: Bundle, cfg: ReadoutConfig) -> dict:
    """Every control's four readings (`READINGS`) on the unseen characters, and the conv
    readout's first and last losses."""
    if bundle.probe is None:
        raise ValueError("the checkpoint holds no probe to read its frames with")
    device = next(bundle.vae.parameters()).device
    size, factor = (bundle.config.height, bundle.config.width), bundle.vae.config.temporal_factor
    train = pose_clips(cfg.train_clips, cfg.poses, cfg.hold, "train", size, cfg.seed, factor)
    test = pose_clips(cfg.eval_clips, cfg.poses, cfg.hold, "eval", size, cfg.seed + 1, factor)
    test_latents = encode_clips(bundle.vae, test, cfg.batch, "encode (unseen characters)")
    x_test = read_latents(test, test_latents)
    x_train = read_latents(
        train, encode_clips(bundle.vae, train, cfg.batch, "encode (training characters)")
    )
    y_train = train.poses.reshape(-1, train.poses.shape[-1])
    y_test = test.poses.reshape(-1, test.poses.shape[-1])
    readings = probe_readings(bundle, test_latents, test, cfg.batch)
    fit = fit_ridge(x_train.flatten(1).numpy(), y_train, cfg.ridge)
    readings["latent_linear"] = apply_ridge(fit, x_test.flatten(1).numpy())
    conv, losses = train_conv(x_train, torch.from_numpy(y_train), cfg, device)
    with torch.no_grad():
        readings["latent_conv"] = conv(x_test.to(device)).cpu().numpy()
    result = {name: correlations(readings[name], y_test) for name in READINGS}
    log.info("latent_readout", **{name: _mean(r) for name, r in result.items()})
    return {
        "correlation": result,
        "conv_loss_first50": float(np.mean(losses[:50])),
        "conv_loss_last50": float(np.mean(losses[-50:])),
        "samples": {"train": len(y_train), "eval": len(y_test)},
        "config": asdict(cfg),
    }


def _mean(r: dict[str, float]) -> float:
    return round(float(np.mean(list(r.values()))), 3)


def plot_readout(result: dict, out: Path) -> Path:
    """One group of bars per control, one bar per reading."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    corr = result["correlation"]
    x = np.arange(len(bh.CONTROLS))
    fig, ax = plt.subplots(figsize=(12, 4))
    width = 0.8 / len(READINGS)
    for i, name in enumerate(READINGS):
        values = [corr[name][c] for c in bh.CONTROLS]
        ax.bar(x + (i - (len(READINGS) - 1) / 2) * width, values, width, label=name)
    ax.set_xticks(x, bh.CONTROLS, rotation=30)
    ax.set_ylabel("correlation with the truth")
    ax.set_ylim(min(0.0, ax.get_ylim()[0]), 1.0)
    ax.set_title("What the latents carry of each control, and what the decoded frames show")
    ax.legend(ncol=4, fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _held_controls(channel: str) -> tuple[str, ...]:
    """The controls the behaviors of `channel` hold, in the order they first name them."""
    names: list[str] = []
    for b in bh.BEHAVIORS:
        if b.channel == channel:
            names += [name for name, _ in b.targets if name not in names]
    return tuple(names)


# per behavior channel, what `held_poses` reads (the face's: smile, brows and eyes)
HELD_READINGS = {channel: _held_controls(channel) for channel in bh.BEHAVIOR_CHANNELS}
# where `held_picture` cuts the frames to (other channels: whole frames); a look turns the eyes
# and the head
PICTURE_REGION = {"face": world.face_region, "gaze": world.face_region}


class HeldPose(NamedTuple):
    """One pose of `held_clips`: its name, its held controls `[K]`, and the clips holding it,
    rendered (`raw`) and through the VAE (`decoded`), each `[N, 1 + 4 * latents, 3, H, W]`."""

    name: str
    truth: np.ndarray
    views: dict[str, Tensor]


@torch.no_grad()
def held_clips(
    bundle: Bundle, channel: str, identities: int = 16, latents: int = 3, seed: int = 0
) -> list[HeldPose]:
    """Neutral, then each behavior of `channel` that holds a pose (nods, shakes and waves
    also swing, which a held pose cannot show: a wave's raised arm is held, its swing is not) at
    its targets, held by `identities` unseen characters for `latents` latents after a neutral
    reference frame, rendered and encoded and decoded by the bundle's VAE."""
    device = next(bundle.vae.parameters()).device
    size = (bundle.config.height, bundle.config.width)
    people = world.sample_identities(identities, "eval", seed)
    held = {b.name: b.targets for b in bh.BEHAVIORS if b.channel == channel and b.targets}
    out = []
    for name, targets in ({"neutral": ()} | held).items():
        controls = bh.neutral_controls(1 + FRAMES_PER_LATENT * latents)
        for control, value in targets:
            controls[1:, bh.C[control]] = value
        clip = world.render(people, torch.from_numpy(controls[None].repeat(identities, 0)), size)
        decoded = bundle.vae.decode(bundle.vae.encode(clip.to(device))).cpu()
        out.append(HeldPose(name, controls[-1], {"raw": clip, "decoded": decoded}))
    return out


@torch.no_grad()
def held_poses(probe: PoseProbe, poses: list[HeldPose], channel: str) -> dict:
    """Per pose of `held_clips`: the truth and `probe`'s mean reading of the controls the
    channel holds (`HELD_READINGS`) over the last 4 frames of its characters, rendered (`raw`)
    and through the VAE (`decoded`), and the share of its pixels' change from the neutral pose
    (the first) that the VAE keeps (`kept`, None for the neutral pose itself)."""
    readings = HELD_READINGS[channel]
    out = {}
    for pose in poses:
        out[pose.name] = {"truth": {k: float(pose.truth[bh.C[k]]) for k in readings}}
        for view, seen in pose.views.items():
            read = read_frames(probe, seen[:, -FRAMES_PER_LATENT:]).controls.mean((0, 1))
            out[pose.name][view] = {k: float(read[bh.C[k]]) for k in readings}
        out[pose.name]["kept"] = None if pose is poses[0] else pixels_kept(poses[0], pose)
    return out


def pixels_kept(neutral: HeldPose, pose: HeldPose) -> float:
    """How much of `pose`'s change from `neutral` in pixels survives the VAE, over the last 4
    frames: the decoded change projected on the rendered one, over the rendered one's energy
    (1: all of it, 0: none, whatever else the VAE changes). The probe need not read it."""
    last = slice(-FRAMES_PER_LATENT, None)
    drawn = pose.views["raw"][:, last] - neutral.views["raw"][:, last]
    decoded = pose.views["decoded"][:, last] - neutral.views["decoded"][:, last]
    return float((drawn * decoded).sum() / drawn.pow(2).sum().clamp(min=1e-12))


def held_picture(poses: list[HeldPose], channel: str, identities: int = 3) -> Tensor:
    """The poses of `held_clips` to look at: a row per pose, and per character (the first
    `identities`) its last frame rendered and through the VAE side by side, cut to the
    channel's `PICTURE_REGION` (faces and gazes to the face); uint8 `[rows * h, identities *
    2 * w, 3]`."""
    h, w = poses[0].views["raw"].shape[-2:]
    cut = (slice(None), slice(None))
    if channel in PICTURE_REGION:
        region = PICTURE_REGION[channel](h, w)
        ys, xs = region.any(1).nonzero()[:, 0], region.any(0).nonzero()[:, 0]
        cut = (slice(int(ys[0]), int(ys[-1]) + 1), slice(int(xs[0]), int(xs[-1]) + 1))
    rows = []
    for pose in poses:
        last = [pose.views[v][:identities, -1] for v in ("raw", "decoded")]
        pairs = torch.stack(last, 1)[..., cut[0], cut[1]]  # [N, 2, 3, h', w']
        rows.append(torch.cat(list(pairs.flatten(0, 1)), -1))  # [3, h', 2N * w']
    image = (torch.cat(rows, -2).clamp(-1, 1) + 1) * 127.5
    return image.round().to(torch.uint8).permute(1, 2, 0)


def held_table(poses: dict, channel: str) -> str:
    """`held_poses` as a markdown table: per pose, truth / rendered / decoded of each reading,
    and the share of its pixels kept."""
    readings = HELD_READINGS[channel]
    lines = [
        f"| {channel} | "
        + " | ".join(f"{k}: truth / rendered / decoded" for k in readings)
        + " | pixels kept |",
        "| --- |" + " --- |" * (len(readings) + 1),
    ]
    for name, got in poses.items():
        cells = [
            f"{got['truth'][k]:.2f} / {got['raw'][k]:.2f} / {got['decoded'][k]:.2f}"
            for k in readings
        ]
        cells.append("" if got["kept"] is None else f"{got['kept']:.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def workdir_vae(workdir: Path, like: CausalVideoVAE) -> CausalVideoVAE:
    """The VAE of a run's `workdir` (its VAE stage's state), in the shape of `like` and on its
    device; raises `FileNotFoundError` if the workdir has no VAE stage."""
    path, vae = Path(workdir) / "vae" / "state.pt", CausalVideoVAE(like.config)
    if not StageState({"vae": vae}).load(path):
        raise FileNotFoundError(f"{workdir} holds no VAE stage ({path} is missing)")
    return vae.to(next(like.parameters()).device).eval().requires_grad_(False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=Path("checkpoints/demo"))
    parser.add_argument("--out", type=Path, default=Path("out/latent_readout.json"))
    parser.add_argument("--device", default=None)
    parser.add_argument("--vae", type=Path, default=None, help="a run's workdir whose VAE to read")
    held = parser.add_mutually_exclusive_group()
    held.add_argument(
        "--held",
        choices=bh.BEHAVIOR_CHANNELS,
        default=None,
        help="held poses of one behavior channel only, rendered and decoded",
    )
    held.add_argument("--faces", action="store_true", help="the same as --held face")
    defaults = asdict(ReadoutConfig())
    for name, value in defaults.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    args = parser.parse_args()
    cfg = ReadoutConfig(**{k: getattr(args, k) for k in defaults})
    bundle = load_checkpoint(args.checkpoint, pick_device(args.device))
    if args.vae is not None:
        try:
            bundle = replace(bundle, vae=workdir_vae(args.vae, bundle.vae))
        except FileNotFoundError as err:
            parser.error(str(err))  # exits 2 with the usage line
    channel = "face" if args.faces else args.held
    if channel is not None:
        poses = held_clips(bundle, channel, cfg.eval_clips, cfg.hold, cfg.seed)
        result = {"channel": channel, "held": held_poses(bundle.probe, poses, channel)}
    else:
        result = run_readout(bundle, cfg)
    result["checkpoint"] = str(args.checkpoint)
    result["vae"] = str(args.vae or args.checkpoint)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    if channel is not None:
        print(held_table(result["held"], channel))  # noqa: T201  (the command's output)
        picture = held_picture(poses, channel)
        if channel in PICTURE_REGION:  # cut to a small region: shown twice the size
            picture = picture.repeat_interleave(2, 0).repeat_interleave(2, 1)
        png = args.out.with_suffix(".png")
        png.write_bytes(encode_png(picture.numpy()))
        log.info("held_poses_written", channel=channel, report=str(args.out), picture=str(png))
        return
    png = plot_readout(result, args.out.with_suffix(".png"))
    log.info("latent_readout_written", report=str(args.out), plot=str(png))


if __name__ == "__main__":
    main()
