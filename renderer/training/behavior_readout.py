"""The behavior readout: a classifier of what each channel of a chunk does, read from latents.

The flow-matching loss weighs a latent's every value alike, and a commanded behavior (a tilt,
a look to the left, a raised arm) moves few of them: a DiT that renders the right character
with its mouth in time but its head straight loses little by it. The readout turns that miss
into a loss of its own:

- `BehaviorHead` reads one chunk's latents `[B, L, C, h, w]` beside the reference latent
  `[B, C, h, w]` and gives, per behavior channel (posture, gaze, face, gesture), logits over
  idle and that channel's behaviors (`channel_classes`).
- `train_behavior_head` fits it to the ground-truth latents of a `LatentSet`, labelled by the
  prompt each channel was given (`chunk_labels`), and reports its accuracy on clips it never
  saw. It is then frozen, and `behavior_head` keeps it in a run's workdir.
- `behavior_loss` is the term stage 2 adds (`DiffusionConfig.behavior_weight`): the DiT's x0
  prediction of each stream chunk should be read as the ground-truth chunk is read (the KL
  divergence from the head's reading of the truth to its reading of the prediction), weighted
  by `(1 - level)^2`, since a prediction from noise can only be the blur of what might be.

The head is the DiT's teacher here and never the judge: every figure of behavior comes from
the pose probe on decoded frames (`evaluate.py`), which this term does not see, so a DiT that
learned to fool the head would not score by it. The labels are the world's prompt ids
(`behaviors.prompt_table`); footage has no behavior labels, and a run on it refuses the term.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import structlog
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from flowact.renderer.training import behaviors as bh
from flowact.renderer.training.common import save_atomically
from flowact.renderer.training.data import LatentSet

log = structlog.get_logger(__name__)


def channel_classes() -> tuple[int, ...]:
    """Classes of each channel, in `BEHAVIOR_CHANNELS` order: idle + its behaviors."""
    return tuple(1 + len(bh.CHANNEL_BEHAVIORS[ch]) for ch in bh.BEHAVIOR_CHANNELS)


def prompt_classes() -> Tensor:
    """Class index within its channel of every prompt id of `prompt_table()`, `[n_prompts]`
    (1 = the channel's first behavior; 0, idle, is what no prompt means)."""
    texts, train, heldout = bh.prompt_table()
    out = torch.zeros(len(texts), dtype=torch.long)
    for ch in bh.BEHAVIOR_CHANNELS:
        for rank, b in enumerate(bh.CHANNEL_BEHAVIORS[ch]):
            out[train[b] + heldout[b]] = rank + 1
    return out


def chunk_labels(prompt: Tensor) -> Tensor:
    """Per chunk and channel the prompt id `[..., P]` (-1 none) -> its class `[..., P]`.
    Raises `ValueError` when an id is not one of the world's prompts."""
    table = prompt_classes().to(prompt.device)
    if prompt.numel() and int(prompt.max()) >= len(table):
        raise ValueError(
            f"prompt id {int(prompt.max())} is not one of the world's {len(table)} prompts: "
            "the behavior readout needs the world's labels"
        )
    return torch.where(prompt >= 0, table[prompt.clamp(min=0)], 0)


class BehaviorHead(nn.Module):
    """Chunk latents `[B, L, C, h, w]` and reference `[B, C, h, w]` -> logits `[B, sum(classes)]`,
    the channels' logits one after another (`split` cuts them apart). Strided convolutions keep
    a coarse map to the end, since left and right differ only in where things are."""

    def __init__(self, channels: int, latents: int, width: int = 64) -> None:
        super().__init__()
        self.classes = channel_classes()
        self.body = nn.Sequential(
            nn.Conv2d(channels * (latents + 1), width, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1),
            nn.GELU(),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(2 * width * 16, 256),
            nn.GELU(),
            nn.Linear(256, sum(self.classes)),
        )

    def forward(self, chunk: Tensor, reference: Tensor) -> Tensor:
        x = torch.cat([chunk, reference[:, None]], 1).flatten(1, 2)  # [B, (L+1)*C, h, w]
        return self.body(x.float())

    def split(self, logits: Tensor) -> tuple[Tensor, ...]:
        return logits.split(self.classes, dim=-1)


def readout_loss(head: BehaviorHead, logits: Tensor, labels: Tensor) -> Tensor:
    """Mean over channels of the cross-entropy of `logits` `[N, sum]` against `labels` `[N, P]`."""
    parts = head.split(logits)
    return torch.stack([F.cross_entropy(p, labels[:, i]) for i, p in enumerate(parts)]).mean()


# ---------------------------------------------------------------------------------- training


@dataclass(frozen=True)
class BehaviorHeadConfig:
    steps: int = 1500
    seconds: float = 60.0
    batch: int = 256
    lr: float = 1e-3
    heldout_share: float = 0.1  # of the latent set's clips, never trained on: the report's
    noise: float = 0.2  # inputs blended with noise up to this level, as a DiT's x0 is not clean
    seed: int = 0


def _chunk_batch(
    data: LatentSet, labels: Tensor, lpc: int, rows: Tensor, chunks: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Chunk latents `[B, L, C, h, w]`, reference `[B, C, h, w]`, and their rows of `labels`
    (`chunk_labels` of the whole set, `[N, chunks, P]`): `[B, P]`."""
    cols = 1 + chunks[:, None] * lpc + torch.arange(lpc, device=rows.device)  # [B, L]
    latents = data.latents[rows[:, None], cols].float()
    return latents, data.latents[rows, 0].float(), labels[rows, chunks]


@torch.no_grad()
def head_accuracy(head: BehaviorHead, data: LatentSet, lpc: int, rows: Tensor) -> dict:
    """Per channel, the share of the chunks of clips `rows` read as their commanded class."""
    all_labels = chunk_labels(data.prompt)
    hits = torch.zeros(len(head.classes))
    total = 0
    for r in rows.split(16):
        chunks = torch.arange(data.chunks, device=r.device).repeat(len(r))
        rr = r.repeat_interleave(data.chunks)
        latents, reference, labels = _chunk_batch(data, all_labels, lpc, rr, chunks)
        for i, part in enumerate(head.split(head(latents, reference))):
            hits[i] += (part.argmax(-1) == labels[:, i]).sum().cpu()
        total += len(rr)
    return {ch: float(hits[i] / max(total, 1)) for i, ch in enumerate(bh.BEHAVIOR_CHANNELS)}


def train_behavior_head(
    cfg: BehaviorHeadConfig, data: LatentSet, lpc: int, progress: bool = True
) -> tuple[BehaviorHead, dict]:
    """Fit a head to `data`'s ground-truth latents; returns it frozen (eval mode, no grads)
    and a report: steps, seconds, final loss, held-out accuracy per channel and their mean."""
    device = data.latents.device
    all_labels = chunk_labels(data.prompt)  # refuses ids that are not the world's, at once
    n_held = max(1, int(len(data) * cfg.heldout_share))
    if len(data) - n_held < 1:
        raise ValueError(f"the behavior head needs 2 clips or more; the latent set has {len(data)}")
    train_rows = torch.arange(len(data) - n_held, device=device)
    held_rows = torch.arange(len(data) - n_held, len(data), device=device)
    gen = torch.Generator(device).manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    head = BehaviorHead(data.latents.shape[2], lpc).to(device)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=0.01)
    start, losses = time.monotonic(), []
    for i in tqdm(range(cfg.steps), desc="behavior head", unit="step", disable=not progress):
        if time.monotonic() - start > cfg.seconds:
            break
        pick = torch.randint(len(train_rows), (cfg.batch,), generator=gen, device=device)
        chunks = torch.randint(data.chunks, (cfg.batch,), generator=gen, device=device)
        latents, reference, labels = _chunk_batch(data, all_labels, lpc, train_rows[pick], chunks)
        level = torch.rand(cfg.batch, 1, 1, 1, 1, generator=gen, device=device) * cfg.noise
        noise = torch.randn(latents.shape, generator=gen, device=device)
        latents = (1 - level) * latents + level * noise
        lr = cfg.lr * 0.5 * (1 + math.cos(math.pi * i / cfg.steps))
        for group in opt.param_groups:
            group["lr"] = lr
        loss = readout_loss(head, head(latents, reference), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    head.eval().requires_grad_(False)
    accuracy = head_accuracy(head, data, lpc, held_rows)
    report = {
        "steps": len(losses),
        "seconds": time.monotonic() - start,
        "loss": float(torch.stack(losses[-50:]).mean()) if losses else None,
        "heldout_clips": n_held,
        "heldout_accuracy": accuracy,
        "heldout_mean": float(np.mean(list(accuracy.values()))),
    }
    log.info("behavior_head_trained", **report)
    return head, report


def behavior_head(
    cfg: BehaviorHeadConfig, data: LatentSet, lpc: int, work: Path
) -> tuple[BehaviorHead, dict | None]:
    """A run's head: trained on `data` once and kept in `work/behavior_head.pt`, loaded from
    there by the run's later pieces (with no report: the first piece's summary holds it)."""
    path = work / "behavior_head.pt"
    if path.is_file():
        head = BehaviorHead(data.latents.shape[2], lpc).to(data.latents.device)
        head.load_state_dict(torch.load(path, map_location=data.latents.device))
        return head.eval().requires_grad_(False), None
    head, report = train_behavior_head(cfg, data, lpc)
    save_atomically(head.state_dict(), path)
    return head, report


# ------------------------------------------------------------------------------ the DiT's term


def behavior_loss(
    head: BehaviorHead,
    x0_pred: Tensor,
    x0: Tensor,
    reference: Tensor,
    levels: Tensor,
    keep: Tensor,
) -> Tensor:
    """How far the head's reading of the predicted stream `x0_pred` `[B, S, C, h, w]` lies from
    its reading of the true `x0` (KL, truth to prediction, mean over channels), per chunk
    weighted by `(1 - level)^2` (`levels` `[B, chunks]`) and over the buffers `keep` `[B]`
    (those whose text was not dropped: without a prompt there is nothing to follow)."""
    b, s = x0.shape[:2]
    chunks = levels.shape[1]
    lpc = s // chunks
    ref = reference[:, None].expand(-1, chunks, -1, -1, -1).flatten(0, 1)  # [B*chunks, C, h, w]
    pred = head(x0_pred.unflatten(1, (chunks, lpc)).flatten(0, 1), ref)
    with torch.no_grad():
        truth = head(x0.unflatten(1, (chunks, lpc)).flatten(0, 1), ref)
    parts = zip(head.split(pred), head.split(truth), strict=True)
    kl = torch.stack(
        [(t.softmax(-1) * (t.log_softmax(-1) - p.log_softmax(-1))).sum(-1) for p, t in parts]
    ).mean(0)  # [B*chunks]
    weight = (1 - levels).pow(2) * keep[:, None]  # [B, chunks]
    return (kl.view(b, chunks) * weight).sum() / weight.sum().clamp_min(1e-6)
