"""What the VAE stage and the latent builder train on: `Clip`, a batch of clips, and the role
`ClipSource`, where clips come from.

Two sources implement it: `world.WorldClips`, the synthetic world, whose clips carry the
ground truth they were drawn from (controls, behaviors, identities), and
`footage.FootageClips`, prepared real video, whose clips carry frames, speech and prompts only.
What needs the ground truth (the VAE's control readout, the probe, the evaluation) asks
`ClipSource.ground_truth` first and refuses a source without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor


@dataclass
class Clip:
    """A batch of clips. frames `[B, 1 + T, 3, H, W]` in [-1, 1], frame 0 the reference frame;
    pcm `[B, T * 640]` float32 16 kHz speech aligned with frames 1..T; prompt ids
    `[B, T, channels]` (-1 none, channels as `BEHAVIOR_CHANNELS`). The world's ground truth,
    None for footage: controls `[B, T, K]`, behavior ids `[B, T, channels]`, identity
    `[B, IDENTITY_DIM]`."""

    frames: Tensor
    pcm: Tensor
    prompt: Tensor
    controls: Tensor | None = None
    behavior: Tensor | None = None
    identity: Tensor | None = None


class ClipSource(Protocol):
    """Where training clips come from.

    `make(n, chunks, rng, device)` draws `n` clips of `chunks` chunks (12 frames each) after a
    reference frame, at `size` (height, width), taking every random choice from `rng` (the
    caller's stream: a stage resumed from step s draws what it would have drawn).
    `heldout()` is the source of clips no training step sees, for held-out reports; it raises
    `ValueError` naming what is missing where there are none. `training_phrasings()` names,
    per behavior channel, the prompt texts its training clips carry (channels with none left
    out): what a checkpoint trained on it anchors prompts on (`flowact.renderer.anchors`)."""

    @property
    def size(self) -> tuple[int, int]: ...

    @property
    def ground_truth(self) -> bool:
        """Whether clips carry controls, behaviors and identities."""
        ...

    def make(
        self, n: int, chunks: int, rng: np.random.Generator, device: str | torch.device
    ) -> Clip: ...

    def heldout(self) -> ClipSource: ...

    def training_phrasings(self) -> dict[str, list[str]]: ...
