"""Phrasings mixed in embedding space: in training, a behavior prompt's sentence embedding is
now and then drawn between its own and another training phrasing of the same behavior.

The DiT reads a prompt by where its embedding falls. Trained on the 13-14 points that a
behavior's training phrasings embed at, it reads a new phrasing (the evaluation's held-out
ones) 0.09-0.10 worse than those points (the model card's "The eleventh run"). With
`PromptMix`, each buffer of a batch sees its own copy of the prompt table in which each
training phrasing is, with probability `prob`, replaced by `normalise(l * e_own + (1 - l) *
e_other)`, `l ~ U(0, 1)`, `e_other` a training phrasing of the same behavior picked at random.
So the DiT is asked to render a behavior over the stretch of text space between its phrasings,
not only at them. Held-out phrasings are never mixed, or mixed toward: they stay strings that
no training step sees, and their rows are never read in training anyway.

`heldout_reach` says what mixing can reach before any DiT trains on it: how near each
held-out phrasing lies to its behavior's nearest training phrasing, and to the nearest blend
of two of them, against the other behaviors of its channel.

A buffer uses one table throughout, so a prompt that holds over several chunks keeps one
embedding within it and does not look like a prompt change. Only the world knows which
phrasings share a behavior (`behaviors.prompt_table`); footage prompts are free text, so a
run on footage refuses `prompt_mix` (`workdir.WORLD_ONLY`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from flowact.renderer.training import behaviors as bh


@dataclass(frozen=True)
class PromptMix:
    """`siblings` `[N, S]`: for each prompt id of the table, the ids it may be mixed with (the
    other training phrasings of its behavior), padded with -1; all -1 for a prompt that is
    never mixed. `prob`: the chance that a phrasing is mixed, per buffer."""

    siblings: Tensor
    prob: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.prob <= 1.0:
            raise ValueError(f"prompt_mix must be within [0, 1], not {self.prob}")

    @classmethod
    def world(cls, prob: float) -> PromptMix:
        """The world's behaviors: each training phrasing with the others of its behavior."""
        texts, train, _ = bh.prompt_table()
        width = max(len(ids) for ids in train.values()) - 1
        siblings = torch.full((len(texts), width), -1, dtype=torch.long)
        for ids in train.values():
            for i in ids:
                others = [j for j in ids if j != i]
                siblings[i, : len(others)] = torch.tensor(others)
        return cls(siblings, prob)

    def tables(self, table: Tensor, batch: int, gen: torch.Generator) -> Tensor:
        """`table` `[N, D]` -> one mixed copy per buffer, `[batch, N, D]` (on `table`'s device,
        random draws from `gen`, which lives there)."""
        if table.shape[0] != self.siblings.shape[0]:
            raise ValueError(
                f"prompt mixing knows {self.siblings.shape[0]} prompts; the prompt table has "
                f"{table.shape[0]}: prepare the data again"
            )
        device = table.device
        siblings = self.siblings.to(device)
        count = (siblings >= 0).sum(-1)  # [N]
        n = table.shape[0]
        pick = (torch.rand(batch, n, generator=gen, device=device) * count).long()  # [B, N]
        other = siblings[torch.arange(n, device=device), pick]  # -1 where count is 0
        mixed = torch.rand(batch, n, generator=gen, device=device) < self.prob
        mixed &= count > 0
        share = torch.rand(batch, n, 1, generator=gen, device=device)
        blend = share * table + (1 - share) * table[other.clamp(min=0)]
        scale = table.norm(dim=-1, keepdim=True) / blend.norm(dim=-1, keepdim=True).clamp(1e-6)
        return torch.where(mixed[..., None], blend * scale, table.expand(batch, -1, -1))


def heldout_reach(table: Tensor, steps: int = 51) -> list[dict]:
    """For each held-out phrasing of `table` (`[len(prompts), D]`, the embeddings of
    `behaviors.prompt_table()`'s strings): the best cosine to a training phrasing of its own
    behavior (`own_point`), to a blend of two of them (`own_blend`, over `steps` shares), and
    the same for the best other behavior of its channel (`other_point`, `other_blend`)."""
    texts, train, heldout = bh.prompt_table()
    unit = table.double() / table.double().norm(dim=-1, keepdim=True)
    share = torch.linspace(0, 1, steps, dtype=torch.double)[:, None, None, None]

    def best(e: Tensor, ids: list[int]) -> tuple[float, float]:
        points = unit[ids]
        blends = share * points[None, :, None] + (1 - share) * points[None, None, :]
        blends = blends / blends.norm(dim=-1, keepdim=True)
        return float((points @ e).max()), float((blends @ e).max())

    rows = []
    for b, ids in heldout.items():
        channel = bh.BEHAVIORS[b].channel
        others = [c for c, o in enumerate(bh.BEHAVIORS) if o.channel == channel and c != b]
        for i in ids:
            own = best(unit[i], train[b])
            rival = [best(unit[i], train[c]) for c in others]
            rows.append(
                {
                    "behavior": bh.BEHAVIORS[b].name,
                    "prompt": texts[i],
                    "own_point": own[0],
                    "own_blend": own[1],
                    "other_point": max(r[0] for r in rival),
                    "other_blend": max(r[1] for r in rival),
                }
            )
    return rows
