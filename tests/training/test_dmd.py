"""DMD on streaming rollouts: the rollout is the renderer's stream, the generator's loss
vanishes when the fake score equals the real one, the fake score learns, the stage resumes."""

from __future__ import annotations

import copy
from dataclasses import replace

import torch

from flowact.renderer.model import FlowActMMDiT
from flowact.renderer.sampler import FlowMatchEulerSampler
from flowact.renderer.stream import StreamConfig, StreamingGenerator
from flowact.renderer.training.common import StageState
from flowact.renderer.training.dmd import (
    DMDConfig,
    fake_loss,
    generated,
    generator_loss,
    rollout,
    session_conditions,
    train_dmd,
)

ROWS = torch.tensor([0, 1])


def _model(config, seed: int) -> FlowActMMDiT:
    torch.manual_seed(seed)
    return FlowActMMDiT(config).eval()


def _session(data, config, encoder, table, emitted: int):
    conditions = session_conditions(
        data,
        ROWS,
        encoder,
        table,
        config.latents_per_chunk,
        config.audio_overlap,
        emitted + config.stream_chunks,
    )
    return conditions, data.latents[ROWS, :1].float()


def test_generated_chunk_is_what_the_stream_emits_next(
    tiny_latents, tiny_config, text_table, tiny_audio
):
    student = _model(tiny_config, 0)
    conditions, reference = _session(tiny_latents, tiny_config, tiny_audio, text_table, 2)
    guidance = torch.full((2,), 2.0)
    inputs, level = rollout(
        student, reference, conditions, 2, guidance, torch.Generator().manual_seed(5), 3.0
    )
    with torch.no_grad():
        x0 = generated(student, inputs, level, guidance)

    stream = StreamingGenerator(
        student,
        FlowMatchEulerSampler(3.0, tiny_config.stream_chunks, 1),
        StreamConfig(guidance=2.0),
    )
    stream.start(reference, conditions[:3], torch.Generator().manual_seed(5))
    stream.next_chunk(conditions[3])
    stream.next_chunk(conditions[4])
    assert stream.next_index == 2
    torch.testing.assert_close(x0, stream.step(), rtol=1e-4, atol=1e-5)


def test_generator_loss_vanishes_when_the_fake_score_is_the_real_one(
    tiny_latents, tiny_config, text_table, tiny_audio
):
    teacher = _model(tiny_config, 1).requires_grad_(False)
    student = _model(tiny_config, 0)
    conditions, reference = _session(tiny_latents, tiny_config, tiny_audio, text_table, 1)
    guidance = torch.ones(2)  # scale 1: the guided teacher is the plain teacher
    inputs, level = rollout(student, reference, conditions, 1, guidance, torch.Generator(), 3.0)
    x0 = generated(student, inputs, level, guidance)
    cfg = DMDConfig()
    same = generator_loss(
        x0, copy.deepcopy(teacher), teacher, inputs, guidance, cfg, torch.Generator().manual_seed(0)
    )
    other = generator_loss(
        x0, _model(tiny_config, 2), teacher, inputs, guidance, cfg, torch.Generator().manual_seed(0)
    )
    assert float(same.detach()) < 1e-8 < 1e-3 < float(other.detach())
    other.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


def test_fake_score_learns_the_generated_chunks(tiny_latents, tiny_config, text_table, tiny_audio):
    student = _model(tiny_config, 0)
    fake = _model(tiny_config, 3).train()
    conditions, reference = _session(tiny_latents, tiny_config, tiny_audio, text_table, 1)
    guidance = torch.full((2,), 2.0)
    inputs, level = rollout(student, reference, conditions, 1, guidance, torch.Generator(), 3.0)
    with torch.no_grad():
        x0 = generated(student, inputs, level, guidance)
    opt = torch.optim.Adam(fake.parameters(), lr=2e-3)
    losses = []
    for _ in range(12):
        loss = fake_loss(fake, inputs, x0, DMDConfig(), torch.Generator().manual_seed(0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0]


def test_dmd_stage_runs_and_resumes(tmp_path, tiny_latents, tiny_config, text_table, tiny_audio):
    student, teacher = _model(tiny_config, 0), _model(tiny_config, 1)
    cfg = DMDConfig(steps=2, batch=2, max_rollout=2, save_every=1)
    args = (teacher, tiny_audio, tiny_latents, text_table, tmp_path)
    trained, ema, state = train_dmd(cfg, student, *args, progress=False)
    assert state.step == 2 and len(state.losses) == 2
    assert any(
        not torch.equal(a, b)
        for a, b in zip(trained.state_dict().values(), student.state_dict().values(), strict=True)
    )
    saved = StageState({"student": _model(tiny_config, 9)})
    assert saved.load(tmp_path / "stage3_dmd" / "state.pt") and saved.step == 2
    _, _, more = train_dmd(replace(cfg, steps=3), student, *args, progress=False)
    assert more.step == 3
