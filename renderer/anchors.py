"""Prompt anchoring: a behavior asked for in words the DiT never saw reaches it in words it did.

The DiT learns each behavior from a handful of phrasings, one sentence embedding each, and
reads a new phrasing by where its embedding falls among them. Trained on four phrasings a
behavior, the sixth demo checkpoint read the same streams at 0.77-0.78 with training phrasings
and 0.54-0.56 with held-out ones, and anchoring won back about half of that; the seventh,
trained on 13-14, loses less and reads held-out phrasings better without anchors (the model
card's "Prompt anchoring" and "The eleventh run"). Anchoring moves the choice to the text
encoder: a checkpoint names the phrasings it was trained on per behavior channel, and each
incoming prompt of a channel is given to the DiT as the blend of that channel's trained
phrasings, weighted by `softmax(cosine / temperature)`; temperature 0 takes the nearest
phrasing alone, so the DiT sees only embeddings it was trained on.

In `sampling.json`:

    "prompt_anchors": {"temperature": 0.0, "prompts": {"posture": ["tilts the head to the
    left", ...], "gaze": [...], ...}}

`PromptAnchors.from_spec(spec, encode)` embeds the phrasings once with the renderer's text
encoder; `apply(embeddings, channel)` maps a channel's prompt embeddings `[N, D]` to anchored
ones `[N, D]` (unit rows, as the encoder's contract has them).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from flowact.renderer.presets import BEHAVIOR_CHANNELS

SPEC_KEY = "prompt_anchors"  # where `sampling.json` holds the spec


def anchor_spec(prompts: Mapping[str, Sequence[str]], temperature: float = 0.0) -> dict:
    """The `sampling.json` entry for trained phrasings `prompts` (channel -> phrasings),
    checked as `from_spec` checks it."""
    _check({"temperature": temperature, "prompts": prompts})
    return {
        "temperature": float(temperature),
        "prompts": {ch: list(p) for ch, p in prompts.items()},
    }


def _check(spec: Mapping) -> None:
    temperature = spec.get("temperature")
    if not isinstance(temperature, int | float) or temperature < 0:
        raise ValueError(f"prompt_anchors: temperature must be a number >= 0, not {temperature!r}")
    prompts = spec.get("prompts")
    if not isinstance(prompts, Mapping) or not prompts:
        raise ValueError("prompt_anchors: prompts must map behavior channels to phrasings")
    for channel, phrasings in prompts.items():
        if channel not in BEHAVIOR_CHANNELS:
            raise ValueError(
                f"prompt_anchors: {channel!r} is not a behavior channel "
                f"({', '.join(BEHAVIOR_CHANNELS)})"
            )
        if isinstance(phrasings, str) or not phrasings:
            raise ValueError(f"prompt_anchors: {channel!r} needs a list of one phrasing or more")


@dataclass(frozen=True)
class PromptAnchors:
    temperature: float
    embeddings: dict[str, Tensor]  # channel -> [n, D] unit rows of its trained phrasings

    @classmethod
    def from_spec(cls, spec: Mapping, encode: Callable[[list[str]], Tensor]) -> PromptAnchors:
        """Embed the phrasings of `spec` with `encode` (N strings -> `[N, D]`)."""
        _check(spec)
        embeddings = {
            ch: F.normalize(encode(list(p)).float(), dim=-1) for ch, p in spec["prompts"].items()
        }
        return cls(float(spec["temperature"]), embeddings)

    def apply(self, embeddings: Tensor, channel: str) -> Tensor:
        """Prompt embeddings `[N, D]` of `channel` -> anchored `[N, D]`; a channel with no
        trained phrasings keeps its prompts as they are."""
        anchors = self.embeddings.get(channel)
        if anchors is None:
            return embeddings
        anchors = anchors.to(embeddings.device)
        sims = F.normalize(embeddings.float(), dim=-1) @ anchors.T  # [N, n]
        if self.temperature == 0:
            weights = F.one_hot(sims.argmax(-1), anchors.shape[0]).float()
        else:
            weights = (sims / self.temperature).softmax(-1)
        return F.normalize(weights @ anchors, dim=-1).to(embeddings.dtype)  # [N, D]


def table_encoder(texts: Sequence[str], table: Tensor) -> Callable[[list[str]], Tensor]:
    """An `encode` that looks phrasings up in a prepared table (`texts[i]` -> `table[i]`), for
    machines without the text encoder; a phrasing not in it is refused by name."""
    index = {t: i for i, t in enumerate(texts)}

    def encode(phrasings: list[str]) -> Tensor:
        missing = [p for p in phrasings if p not in index]
        if missing:
            raise ValueError(f"prompt_anchors: {missing[0]!r} is not in the prompt table")
        return table[torch.tensor([index[p] for p in phrasings])]

    return encode
