"""The behavior readout: labels from the world's prompts, a head that learns them from latents,
and the stage-2 term that asks the DiT's x0 prediction to be read as the truth is."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch

from flowact.renderer.model import FlowActMMDiT
from flowact.renderer.training import behaviors as bh
from flowact.renderer.training import data
from flowact.renderer.training.behavior_readout import (
    BehaviorHead,
    BehaviorHeadConfig,
    behavior_head,
    behavior_loss,
    channel_classes,
    chunk_labels,
    head_accuracy,
    prompt_classes,
    train_behavior_head,
)
from flowact.renderer.training.train import DiffusionConfig, diffusion_loss, train_diffusion


@pytest.fixture(scope="module")
def trained_head(tiny_latents, tiny_config) -> BehaviorHead:
    cfg = BehaviorHeadConfig(steps=40, batch=32, lr=2e-3, noise=0.0)
    return train_behavior_head(cfg, tiny_latents, tiny_config.latents_per_chunk, False)[0]


def test_every_prompt_is_labelled_with_its_behavior_within_its_channel():
    texts, train, heldout = bh.prompt_table()
    classes = prompt_classes()
    assert len(classes) == len(texts)
    for ch, n in zip(bh.BEHAVIOR_CHANNELS, channel_classes(), strict=True):
        members = bh.CHANNEL_BEHAVIORS[ch]
        assert n == 1 + len(members)
        for rank, b in enumerate(members):
            assert set(classes[train[b] + heldout[b]].tolist()) == {rank + 1}, bh.BEHAVIORS[b]
    # no prompt on a channel is idle (class 0); an id the world does not have is refused
    prompt = torch.tensor([[-1, train[0][1], -1, heldout[len(bh.BEHAVIORS) - 1][0]]])
    assert chunk_labels(prompt).tolist() == [[0, int(classes[train[0][1]]), 0, 5]]
    with pytest.raises(ValueError, match=f"prompt id {len(texts)} is not one of the world's"):
        chunk_labels(torch.tensor([[len(texts), -1, -1, -1]]))


def test_the_head_learns_the_labels_and_reports_unseen_clips(tiny_latents, tiny_config, tmp_path):
    lpc = tiny_config.latents_per_chunk
    cfg = BehaviorHeadConfig(steps=80, batch=32, lr=2e-3, heldout_share=0.25, noise=0.0)
    head, report = train_behavior_head(cfg, tiny_latents, lpc, progress=False)
    assert report["steps"] == 80 and report["heldout_clips"] == 1
    assert set(report["heldout_accuracy"]) == set(bh.BEHAVIOR_CHANNELS)
    # it fits what it trained on: the 3 training clips' chunks read as commanded
    fitted = head_accuracy(head, tiny_latents, lpc, torch.arange(3))
    assert min(fitted.values()) > 0.9, fitted
    assert not any(p.requires_grad for p in head.parameters()) and not head.training
    # kept in the workdir: a later piece loads the same head and trains nothing
    first, made = behavior_head(replace(cfg, steps=2), tiny_latents, lpc, tmp_path)
    again, loaded = behavior_head(replace(cfg, steps=2), tiny_latents, lpc, tmp_path)
    assert made is not None and loaded is None
    for a, b in zip(first.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)


@torch.no_grad()
def test_the_term_is_zero_for_the_truth_and_weighs_clean_chunks(
    trained_head, tiny_latents, tiny_config
):
    head = trained_head
    x0 = tiny_latents.latents[:2, 1 : 1 + tiny_config.stream_latents].float()
    reference = tiny_latents.latents[:2, 0].float()
    chunks = tiny_config.stream_chunks
    keep = torch.ones(2, dtype=torch.bool)
    clean = torch.zeros(2, chunks)
    assert float(behavior_loss(head, x0, x0, reference, clean, keep)) == pytest.approx(0, abs=1e-6)
    other = x0.flip(0)  # the other clip's stream: another reading
    assert float(behavior_loss(head, other, x0, reference, clean, keep)) > 1e-4
    # a chunk at level 1 is pure noise, and a buffer without its text has nothing to follow
    assert float(behavior_loss(head, other, x0, reference, torch.ones(2, chunks), keep)) == 0
    assert float(behavior_loss(head, other, x0, reference, clean, ~keep)) == 0


def test_stage2_with_the_term_trains_the_dit_toward_the_heads_reading(
    trained_head, tiny_latents, tiny_config, text_table
):
    head = trained_head
    torch.manual_seed(0)
    model = FlowActMMDiT(tiny_config)
    plain = DiffusionConfig(text_drop=0, audio_drop=0, gen_memory_prob=0)
    with_term = replace(plain, behavior_weight=1.0)
    gen = torch.Generator().manual_seed(1)
    fixed = data.sample_buffer(tiny_latents, tiny_config, text_table, gen, 4, None, start_prob=0)

    def loss(cfg, h=None):
        b = data.BufferBatch(**{k: v.clone() for k, v in vars(fixed).items()})
        return diffusion_loss(model, b, cfg, torch.Generator().manual_seed(2), head=h)

    with torch.no_grad():
        term = float(loss(with_term, head)) - float(loss(plain))
    assert term > 0  # the same batch and noise: the difference is the readout's
    # the head is frozen: training moves the DiT and lowers the sum, the head stays as it was
    before = copy.deepcopy(head.state_dict())
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(10):
        value = loss(with_term, head)
        opt.zero_grad()
        value.backward()
        opt.step()
        losses.append(value.item())
    assert losses[-1] < 0.8 * losses[0]
    assert all(torch.equal(v, before[k]) for k, v in head.state_dict().items())


def test_a_stage_asked_for_the_term_without_a_head_refuses(tiny_latents, tiny_config, text_table):
    model = FlowActMMDiT(tiny_config)
    cfg = DiffusionConfig(steps=1, batch=2, behavior_weight=0.1)
    with pytest.raises(ValueError, match="stage1: behavior_weight 0.1 needs a behavior head"):
        train_diffusion(cfg, model, torch.nn.Identity(), tiny_latents, text_table, None)
