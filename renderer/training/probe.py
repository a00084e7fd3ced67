"""The pose probe: a small CNN that reads frames back into the world's controls and identity.

It is the instrument of every metric: mouth openness for lip-sync, head / face / gaze / arm
controls for behavior accuracy and smoothness, and an identity embedding (its reading of the
identity's visible attributes, `world.identity_targets`) for identity drift.

Frames `[N, 3, H, W]` in [-1, 1] -> `ProbeOutput(controls [N, K], identity [N, D])`. Trained on
renders with independent random controls (every combination seen) and behavior-driven clips,
optionally passed through the VAE so that it reads decoded frames as well as clean ones.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import structlog
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from flowact.renderer.training import behaviors as bh
from flowact.renderer.training import world

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class ProbeConfig:
    size: tuple[int, int] = (128, 128)  # frames are resized to this
    width: int = 32  # channels of the first conv; doubled at each stride, capped at 4x
    grid: int = 4  # spatial size before the head: positions matter (gaze, arms)
    hidden: int = 256


@dataclass(frozen=True)
class ProbeTrainConfig:
    steps: int = 2000
    batch: int = 128
    lr: float = 2e-3
    seconds: float = math.inf  # wall-clock budget; stops early when reached
    seed: int = 0
    identity_weight: float = 0.5
    # each control's squared error over its spread in training (`CONTROL_STD`), so that a
    # control with a small range or a small visual footprint (brows, gaze) counts as much as
    # the mouth; False: plain squared error, as the shipped probes were trained
    balanced: bool = False
    # the share of each batch that `train_probe`'s `transform` maps (through the VAE): the
    # probe reads decoded frames, not renders, in every generated stream
    decoded_share: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.decoded_share <= 1.0:
            raise ValueError(f"decoded_share must be within [0, 1], not {self.decoded_share}")


class ProbeOutput(NamedTuple):
    controls: Tensor  # [N, K]
    identity: Tensor  # [N, IDENTITY_TARGET_DIM]


class PoseProbe(nn.Module):
    """Strided conv stack -> `grid x grid` map -> MLP -> controls and identity."""

    def __init__(self, cfg: ProbeConfig) -> None:
        super().__init__()
        self.config = cfg
        layers: list[nn.Module] = []
        c_in, width = 3, cfg.width
        side = cfg.size[0]
        while side > cfg.grid:
            layers += [
                nn.Conv2d(c_in, width, 3, stride=2, padding=1),
                nn.GroupNorm(8, width),
                nn.SiLU(),
                nn.Conv2d(width, width, 3, padding=1),
                nn.SiLU(),
            ]
            c_in, width, side = width, min(width * 2, cfg.width * 4), side // 2
        self.features = nn.Sequential(*layers)
        flat = c_in * cfg.grid * cfg.grid
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(flat, cfg.hidden), nn.SiLU())
        self.controls = nn.Linear(cfg.hidden, len(bh.CONTROLS))
        self.identity = nn.Linear(cfg.hidden, world.IDENTITY_TARGET_DIM)

    def forward(self, frames: Tensor) -> ProbeOutput:
        if tuple(frames.shape[-2:]) != self.config.size:
            frames = F.interpolate(frames, self.config.size, mode="bilinear", antialias=True)
        h = self.features(frames)  # [N, C, grid, grid]
        h = F.adaptive_avg_pool2d(h, self.config.grid)
        h = self.head(h)  # [N, hidden]
        return ProbeOutput(self.controls(h), self.identity(h))


@torch.no_grad()
def read_frames(probe: PoseProbe, frames: Tensor, batch: int = 512) -> ProbeOutput:
    """Frames `[B, T, 3, H, W]` -> controls `[B, T, K]`, identity `[B, T, D]`."""
    b, t = frames.shape[:2]
    flat = frames.reshape(b * t, *frames.shape[2:])
    param = next(probe.parameters())
    outs = [
        probe(flat[s : s + batch].to(param.device, param.dtype)) for s in range(0, b * t, batch)
    ]
    controls = torch.cat([o.controls for o in outs]).view(b, t, -1)
    identity = torch.cat([o.identity for o in outs]).view(b, t, -1)
    return ProbeOutput(controls.float(), identity.float())


def random_frames(
    n: int, size: tuple[int, int], rng: np.random.Generator, device: str | torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    """n single frames with fresh training identities and random controls:
    (frames `[n, 3, H, W]`, controls `[n, K]`, identity targets `[n, D]`)."""
    identity = world.sample_identities(n, "train", int(rng.integers(1 << 30))).to(device)
    controls = torch.from_numpy(bh.random_controls(n, rng)).to(device)
    frames = world.render(identity, controls[:, None], size)[:, 0]
    return frames, controls, world.identity_targets(identity)


# the spread of each control under `random_controls`, what probes are trained on
CONTROL_STD = torch.from_numpy(bh.random_controls(1 << 16, np.random.default_rng(0)).std(0))


def probe_loss(
    probe: PoseProbe,
    frames: Tensor,
    controls: Tensor,
    ident: Tensor,
    w: float,
    balanced: bool = False,
) -> Tensor:
    """Squared error of the controls (each over its spread if `balanced`) + `w` x that of the
    identity attributes."""
    out = probe(frames)
    err = out.controls - controls
    if balanced:
        err = err / CONTROL_STD.to(err.device, err.dtype)
    return err.pow(2).mean() + w * F.mse_loss(out.identity, ident)


def training_batch(
    train: ProbeTrainConfig,
    size: tuple[int, int],
    rng: np.random.Generator,
    device: str | torch.device = "cpu",
    transform: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """One batch as `train_probe` trains on: fresh renders (`random_frames`), the first
    `train.decoded_share` of them mapped by `transform` when one is given."""
    frames, controls, ident = random_frames(train.batch, size, rng, device)
    mapped = round(train.batch * train.decoded_share) if transform is not None else 0
    if mapped:
        with torch.no_grad():
            frames = torch.cat([transform(frames[:mapped]), frames[mapped:]])
    return frames, controls, ident


def train_probe(
    cfg: ProbeConfig,
    train: ProbeTrainConfig,
    device: str | torch.device = "cpu",
    probe: PoseProbe | None = None,
    transform: Callable[[Tensor], Tensor] | None = None,
    progress: bool = True,
) -> tuple[PoseProbe, list[float]]:
    """Train (or keep training) a probe on fresh random renders; `transform` maps
    `train.decoded_share` of each batch's frames (e.g. through the VAE) so that the probe reads
    both kinds."""
    torch.manual_seed(train.seed)
    rng = np.random.default_rng(train.seed)
    probe = (probe or PoseProbe(cfg)).to(device).train()
    opt = torch.optim.AdamW(probe.parameters(), lr=train.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, train.lr, total_steps=train.steps, pct_start=0.1
    )
    losses: list[float] = []
    start = time.monotonic()
    bar = tqdm(range(train.steps), desc="probe", disable=not progress)
    for _ in bar:
        frames, controls, ident = training_batch(train, cfg.size, rng, device, transform)
        loss = probe_loss(probe, frames, controls, ident, train.identity_weight, train.balanced)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if time.monotonic() - start > train.seconds:
            break
    log.info("probe_trained", steps=len(losses), loss=losses[-1])
    return probe.eval(), losses


@dataclass(frozen=True)
class ProbeScore:
    """Accuracy of a probe on held-out renders (unseen identities)."""

    control_corr: dict[str, float]  # Pearson r per control
    identity_corr: float  # mean r over identity attributes
    identity_rank1: float  # nearest-identity retrieval accuracy (reading vs truth)


def score_probe(
    probe: PoseProbe,
    n: int = 256,
    seed: int = 123,
    transform: Callable[[Tensor], Tensor] | None = None,
) -> ProbeScore:
    """Correlations of the probe's readings with the truth on renders of eval identities, or,
    with `transform` (`[N, 3, H, W]` -> the same, e.g. through the VAE), on those renders
    mapped: the same renders either way, so the two scores compare."""
    rng = np.random.default_rng(seed)
    param = next(probe.parameters())
    identity = world.sample_identities(n, "eval", seed).to(param.device)
    controls = torch.from_numpy(bh.random_controls(n, rng)).to(param.device)
    frames = world.render(identity, controls[:, None], probe.config.size)
    if transform is not None:
        with torch.no_grad():
            frames = torch.cat([transform(part[:, 0]) for part in frames.split(64)])[:, None]
    out = read_frames(probe, frames)
    got, want = out.controls[:, 0].cpu().numpy(), controls.cpu().numpy()
    corr = {name: pearson(got[:, k], want[:, k]) for k, name in enumerate(bh.CONTROLS)}
    ident_got, ident_want = out.identity[:, 0].cpu(), world.identity_targets(identity).cpu()
    id_corr = float(
        np.mean(
            [
                pearson(ident_got[:, d].numpy(), ident_want[:, d].numpy())
                for d in range(ident_want.shape[1])
            ]
        )
    )
    rank1 = (torch.cdist(ident_got, ident_want).argmin(1) == torch.arange(n)).float().mean()
    return ProbeScore(corr, id_corr, float(rank1))


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else 0.0
