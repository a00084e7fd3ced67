"""Phrasings mixed in embedding space: which prompts are mixed, with what, and how a batch of
buffers reads them."""

from __future__ import annotations

import pytest
import torch

from flowact.renderer.model import FlowActMMDiT
from flowact.renderer.training import behaviors as bh
from flowact.renderer.training import data
from flowact.renderer.training.distill import DistillConfig, train_distill
from flowact.renderer.training.prompt_mix import PromptMix, heldout_reach
from flowact.renderer.training.train import DiffusionConfig, train_diffusion


@pytest.fixture
def table(text_table) -> torch.Tensor:
    return text_table


def _behavior_of() -> dict[int, int]:
    _, train, heldout = bh.prompt_table()
    return {i: b for groups in (train, heldout) for b, ids in groups.items() for i in ids}


def test_a_phrasing_is_mixed_only_with_the_training_phrasings_of_its_behavior():
    mix = PromptMix.world(0.5)
    _, train, _ = bh.prompt_table()
    behavior = _behavior_of()
    trained = {i for ids in train.values() for i in ids}
    for i, row in enumerate(mix.siblings.tolist()):
        others = [j for j in row if j >= 0]
        if i in trained:
            assert others and i not in others
            assert set(others) == set(train[behavior[i]]) - {i}
        else:  # a held-out phrasing is never mixed
            assert not others
    assert all(j in trained for row in mix.siblings.tolist() for j in row if j >= 0)


def test_mixed_embeddings_lie_between_two_phrasings_of_one_behavior(table):
    mix = PromptMix.world(1.0)
    tables = mix.tables(table, 8, torch.Generator().manual_seed(0))
    assert tables.shape == (8, *table.shape)
    _, train, heldout = bh.prompt_table()
    held = [i for ids in heldout.values() for i in ids]
    assert torch.equal(tables[:, held], table[held].expand(8, -1, -1))  # never mixed
    assert torch.allclose(tables.norm(dim=-1), table.norm(dim=-1).expand(8, -1), atol=1e-5)
    for b, ids in train.items():
        rows = tables[:, ids]  # [8, n, D]
        assert not torch.allclose(rows, table[ids].expand(8, -1, -1))  # prob 1: all moved
        # each mixed row lies in the span of its behavior's phrasings: projecting it onto them
        # leaves (nearly) nothing out
        basis = torch.linalg.qr(table[ids].T).Q  # [D, n]
        residual = rows - rows @ basis @ basis.T
        assert residual.norm(dim=-1).max() < 1e-4, bh.BEHAVIORS[b].name


def test_no_mixing_at_probability_zero_and_a_clear_error_outside_it(table):
    still = PromptMix.world(0.0).tables(table, 3, torch.Generator().manual_seed(0))
    assert torch.equal(still, table.expand(3, -1, -1))
    with pytest.raises(ValueError, match=r"prompt_mix must be within \[0, 1\], not 1.5"):
        PromptMix.world(1.5)
    known = len(bh.prompt_table()[0])
    with pytest.raises(ValueError, match=f"knows {known} prompts; the prompt table has 10"):
        PromptMix.world(0.5).tables(table[:10], 2, torch.Generator())


def test_a_buffer_reads_one_mixed_table_throughout(tiny_latents, tiny_config, text_table):
    mix = PromptMix.world(1.0)
    args = (tiny_latents, tiny_config, text_table)
    plain = data.sample_buffer(*args, torch.Generator().manual_seed(1), 16, None)
    mixed = data.sample_buffer(*args, torch.Generator().manual_seed(1), 16, None, mix=mix)
    assert torch.equal(plain.text_mask, mixed.text_mask)
    assert torch.equal(plain.x0, mixed.x0)  # the same buffers: mixing draws after the cut
    shown = plain.text_mask
    assert not torch.allclose(plain.text[shown], mixed.text[shown])
    # within a buffer, every frame conditioned on one prompt reads one embedding
    ids = _prompt_ids(plain.text, text_table)
    for b in range(16):
        for p in range(ids.shape[2]):
            for prompt in ids[b, :, p][shown[b, :, p]].unique():
                frames = (ids[b, :, p] == prompt) & shown[b, :, p]
                seen = mixed.text[b, frames, p]
                assert torch.allclose(seen, seen[:1].expand_as(seen))


@pytest.mark.parametrize("stage", ["diffusion", "distill"])
def test_the_training_stages_read_mixed_prompts(
    stage, tiny_latents, tiny_config, text_table, tiny_audio
):
    """The same first step with and without mixing: the prompts, and so the loss, differ."""

    def first_loss(mix: float) -> float:
        torch.manual_seed(0)
        model = FlowActMMDiT(tiny_config)
        if stage == "diffusion":
            cfg = DiffusionConfig(steps=1, batch=4, text_drop=0, prompt_mix=mix)
            state = train_diffusion(
                cfg, model, tiny_audio, tiny_latents, text_table, None, progress=False
            )
        else:
            cfg = DistillConfig(steps=1, batch=4, teacher_micro_steps=2, prompt_mix=mix)
            state = train_distill(
                cfg, model.eval(), tiny_audio, tiny_latents, text_table, None, progress=False
            )[2]
        return state.losses[0]

    assert first_loss(1.0) != pytest.approx(first_loss(0.0), rel=1e-6)


def _prompt_ids(text: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """The table row each unmixed embedding `[B, F, P, D]` came from, `[B, F, P]`."""
    return (text @ table.T).argmax(-1)


def test_heldout_reach_finds_a_phrasing_that_lies_between_two_trained_ones(text_table):
    _, train, heldout = bh.prompt_table()
    table = text_table.clone()
    smile = next(i for i, b in enumerate(bh.BEHAVIORS) if b.name == "smile")
    a, c = train[smile][:2]
    h = heldout[smile][0]
    table[h] = (table[a] + table[c]) / 2  # a held-out phrasing halfway between two trained ones
    rows = {row["prompt"]: row for row in heldout_reach(table)}
    assert len(rows) == sum(len(ids) for ids in heldout.values())
    row = rows[bh.prompt_table()[0][h]]
    assert row["own_blend"] == pytest.approx(1.0, abs=1e-9)
    assert row["own_point"] < 0.9 and row["other_blend"] < 0.9
    for got in rows.values():  # a blend's end points are the phrasings themselves
        assert got["own_blend"] >= got["own_point"] - 1e-12
        assert got["other_blend"] >= got["other_point"] - 1e-12
