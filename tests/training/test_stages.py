"""Every training stage runs on the tiny preset and lowers its loss on a fixed batch; the
buffer layout matches the stream buffer's; stages resume from their state files."""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch

from flowact.renderer.model import FlowActMMDiT
from flowact.renderer.training import behaviors as bh
from flowact.renderer.training import data, vae_train, world
from flowact.renderer.training.common import StageState
from flowact.renderer.training.distill import DistillConfig, distill_loss, train_distill
from flowact.renderer.training.pipeline import PipelineConfig
from flowact.renderer.training.refit import vae_config
from flowact.renderer.training.train import DiffusionConfig, diffusion_loss, train_diffusion
from flowact.renderer.training.vae_train import (
    ControlReadout,
    VAETrainConfig,
    clip_frames,
    control_head,
    control_loss,
    finetune_decoder,
    gain_vector,
    latent_controls,
    latent_targets,
    parse_control_gains,
    reads_mouth_frames,
    reconstruction_psnr,
    train_vae,
    training_chunks,
    vae_loss,
)
from flowact.renderer.vae import PRESETS, temporal_reach


def _fit(params, loss_fn, steps: int, lr: float) -> list[float]:
    opt = torch.optim.Adam(params, lr=lr)
    losses = []
    for _ in range(steps):
        loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_vae_loss_falls_on_a_fixed_batch(tiny_vae):
    vae = copy.deepcopy(tiny_vae).train()
    rng = np.random.default_rng(0)
    frames = world.make_clips(2, world.ClipConfig(chunks=1, size=(32, 32)), rng).frames
    torch.manual_seed(0)
    losses = _fit(vae.parameters(), lambda: vae_loss(vae, frames, 1e-4), 12, 3e-3)
    assert losses[-1] < 0.7 * losses[0]


def test_vae_stage_resumes_and_sets_latent_stats(tmp_path):
    cfg = VAETrainConfig(preset="tiny", size=(32, 32), steps=2, batch=1, stats_clips=1)
    vae, state = train_vae(cfg, tmp_path, torch.device("cpu"), progress=False)
    assert state.step == 2 and (tmp_path / "vae" / "state.pt").is_file()
    assert not torch.equal(vae.latent_std, torch.ones_like(vae.latent_std))
    vae2, state2 = train_vae(replace(cfg, steps=3), tmp_path, torch.device("cpu"), progress=False)
    assert state2.step == 3 and len(state2.losses) == 3


def test_a_finished_vae_stage_loads_without_measuring_again(tmp_path, monkeypatch):
    cfg = VAETrainConfig(preset="tiny", size=(32, 32), steps=2, batch=1, stats_clips=1)
    vae, _ = train_vae(cfg, tmp_path, torch.device("cpu"), progress=False)

    def no_measuring(*args, **kwargs):
        raise AssertionError("a finished stage measured the VAE's reach again")

    monkeypatch.setattr(vae_train, "training_chunks", no_measuring)
    again, state = train_vae(cfg, tmp_path, torch.device("cpu"), progress=False)
    assert state.step == 2 and not again.training
    for name, value in vae.state_dict().items():
        assert torch.equal(again.state_dict()[name], value), name


def test_latent_controls_average_each_latents_four_frames():
    controls = torch.arange(2 * 8 * 3, dtype=torch.float32).view(2, 8, 3)
    per_latent = latent_controls(controls, 2)
    assert per_latent.shape == (2, 2, 3)
    assert torch.equal(per_latent[1, 0], controls[1, :4].mean(0))
    assert torch.equal(per_latent[0, 1], controls[0, 4:].mean(0))


def test_latent_targets_add_the_mouths_motion_inside_each_latent():
    controls = torch.randn(2, 8, len(bh.CONTROLS))
    assert torch.equal(latent_targets(controls, 2, False), latent_controls(controls, 2))
    targets = latent_targets(controls, 2, True)
    k = len(bh.CONTROLS)
    assert targets.shape == (2, 2, k + 4)
    assert torch.equal(targets[..., :k], latent_controls(controls, 2))
    mouth = controls[1, 4:, bh.C["mouth"]]  # the second latent's four frames
    assert torch.allclose(targets[1, 1, k:], mouth - mouth.mean())
    assert torch.allclose(targets[..., k:].sum(-1), torch.zeros(2, 2), atol=1e-6)


def test_a_control_head_can_read_the_mouths_frames(tiny_vae):
    vae = copy.deepcopy(tiny_vae).train()
    head = control_head(vae, mouth_frames=True)
    assert reads_mouth_frames(head) and not reads_mouth_frames(control_head(vae))
    gains = gain_vector((("smile", 3.0),), mouth_frames=2.0)
    assert gains.shape == (len(bh.CONTROLS) + 4,) and gains[-4:].tolist() == [2.0] * 4
    assert gain_vector((("smile", 3.0),)).shape == (len(bh.CONTROLS),)
    clips = world.make_clips(2, world.ClipConfig(chunks=1, size=(32, 32)), np.random.default_rng(0))
    mean, _ = vae.encode_posterior(clips.frames)
    got, want = vae_train.head_reading(head, mean, clips.controls)
    assert got.shape == want.shape == (2 * 3, len(bh.CONTROLS) + 4)  # 12 frames: 3 latents
    # the term trains the encoder towards the mouth's frames, and falls on a fixed batch
    control_loss(head, mean, clips.controls, gains).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in vae.encoder.parameters())
    vae.zero_grad()
    torch.manual_seed(0)
    params = [*vae.encoder.parameters(), *head.parameters()]

    def term():
        return control_loss(head, vae.encode_posterior(clips.frames)[0], clips.controls, gains)

    losses = _fit(params, term, 12, 3e-3)
    assert losses[-1] < 0.7 * losses[0]


def test_the_control_readout_trains_the_encoder_and_not_the_decoder(tiny_vae):
    vae = copy.deepcopy(tiny_vae).train()
    head = control_head(vae)
    clips = world.make_clips(2, world.ClipConfig(chunks=1, size=(32, 32)), np.random.default_rng(0))
    mean, _ = vae.encode_posterior(clips.frames)
    control_loss(head, mean, clips.controls).backward()
    assert all(p.grad is None for p in vae.decoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in vae.encoder.parameters())
    # and, with the reconstruction, the joint loss falls on a fixed batch
    vae.zero_grad()
    torch.manual_seed(0)
    readout = ControlReadout(head, clips.controls, 1.0)
    params = [*vae.parameters(), *head.parameters()]
    joint = _fit(params, lambda: vae_loss(vae, clips.frames, 1e-4, readout=readout), 12, 3e-3)
    assert joint[-1] < 0.7 * joint[0]
    alone = control_loss(head, vae.encode_posterior(clips.frames)[0], clips.controls)
    assert alone.item() < joint[-1]  # the readout's part is not the whole of it


def test_control_gains_share_the_readout_term_out_among_the_controls(tiny_vae):
    head = control_head(tiny_vae)
    clips = world.make_clips(2, world.ClipConfig(chunks=1, size=(32, 32)), np.random.default_rng(0))
    with torch.no_grad():
        mean, _ = tiny_vae.encode_posterior(clips.frames)
        got, want = vae_train.head_reading(head, mean, clips.controls)
        per_control = ((got - want) / vae_train.CONTROL_STD).pow(2).mean(0)
        plain = control_loss(head, mean, clips.controls)
        ones = control_loss(head, mean, clips.controls, gain_vector(()))
        gains = parse_control_gains("smile=6, brows=2")
        weighted = control_loss(head, mean, clips.controls, gain_vector(gains))
    assert gains == (("smile", 6.0), ("brows", 2.0))
    assert ones.item() == pytest.approx(plain.item(), rel=1e-6)  # gains of 1: the plain mean
    g = torch.ones(len(bh.CONTROLS))
    g[bh.C["smile"]], g[bh.C["brows"]] = 6.0, 2.0
    assert weighted.item() == pytest.approx((per_control * g).sum().item() / g.sum().item(), 1e-5)
    # the smile's error now counts 6 times any unnamed control's
    assert weighted.item() != pytest.approx(plain.item(), rel=1e-3)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("grin=2", "names 'grin', not a control: mouth, yaw"),
        ("smile=2,smile=3", "names 'smile' twice"),
        ("smile", "'smile' is not NAME=GAIN"),
        ("smile=lots", "gain of 'smile' is 'lots', not a number"),
        ("brows=0", "gain of 'brows' must be a finite number > 0, not 0.0"),
        ("brows=nan", "gain of 'brows' must be a finite number > 0, not nan"),
    ],
)
def test_control_gains_name_what_is_wrong(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_control_gains(spec)
    assert parse_control_gains("") == parse_control_gains(" , ") == ()


def test_a_vae_stage_with_a_control_head_starts_it_fresh_on_a_headless_state(tmp_path):
    cfg = VAETrainConfig(preset="tiny", size=(32, 32), chunks=1, steps=2, batch=1, stats_clips=1)
    vae, _ = train_vae(cfg, tmp_path, torch.device("cpu"), progress=False)
    headless = copy.deepcopy(vae.state_dict())
    go_on = replace(cfg, steps=4, control_weight=1.0)
    with_head, state = train_vae(go_on, tmp_path, torch.device("cpu"), progress=False)
    assert state.step == 4 and "head" in state.modules
    assert any(not torch.equal(with_head.state_dict()[k], v) for k, v in headless.items())
    saved = torch.load(tmp_path / "vae" / "state.pt", weights_only=False)
    assert set(saved["modules"]) == {"vae", "head"}
    # a stage without the head in `optional` refuses the state that lacks it
    with pytest.raises(KeyError, match="head"):
        StageState({"vae": vae, "head": control_head(vae)}).load(_headless(tmp_path, headless))


def test_a_vae_stage_without_a_control_head_leaves_a_saved_one_behind(tmp_path):
    cfg = VAETrainConfig(preset="tiny", size=(32, 32), chunks=1, steps=2, batch=1, stats_clips=1)
    headed, _ = train_vae(replace(cfg, control_weight=1.0), tmp_path, torch.device("cpu"), False)
    # the stage as a workdir seeded from that run holds it (finished), without the readout term
    vae, state = train_vae(cfg, tmp_path, torch.device("cpu"), progress=False)
    assert set(state.modules) == {"vae"} and state.step == 2
    for name, value in headed.state_dict().items():
        assert torch.equal(vae.state_dict()[name], value), name
    # and goes on training without it, its optimizer started afresh
    _, state = train_vae(replace(cfg, steps=3), tmp_path, torch.device("cpu"), progress=False)
    assert state.step == 3
    # a saved head of another shape than the stage's (one that reads the mouth's frames) is
    # refused, naming it
    headed_cfg = replace(cfg, control_weight=1.0)
    train_vae(headed_cfg, tmp_path / "headed", torch.device("cpu"), progress=False)
    other = replace(headed_cfg, steps=4, mouth_frames=2.0)
    with pytest.raises(ValueError, match=r"state.pt holds a 'head' of another shape"):
        train_vae(other, tmp_path / "headed", torch.device("cpu"), progress=False)


def _headless(tmp_path, vae_state: dict):
    path = tmp_path / "headless.pt"
    torch.save({"modules": {"vae": vae_state}, "optimizers": {}, "step": 1, "losses": []}, path)
    return path


def test_the_face_weight_is_one_region_on_frames_and_latents(tiny_config):
    frame = world.face_weight(128, 128, 3.0)
    assert frame.mean().item() == pytest.approx(1.0)
    assert frame[51, 64] / frame[5, 5] == pytest.approx(3.0)  # the face centre against a corner
    assert frame[120, 64] == frame[5, 5]  # the shirt is not the face
    latent = world.face_weight(tiny_config.latent_height, tiny_config.latent_width, 3.0)
    assert torch.equal(data.face_weight(tiny_config), latent)


def test_the_mouth_region_holds_the_mouths_the_world_draws():
    clips = world.make_clips(16, world.ClipConfig(chunks=1), np.random.default_rng(3))
    controls = torch.as_tensor(clips.controls)[:, ::4]  # the poses and faces of real clips
    shut, wide = controls.clone(), controls.clone()
    shut[..., bh.C["mouth"]], wide[..., bh.C["mouth"]] = 0.0, 1.0
    size = (128, 128)
    changed = world.render(clips.identity, shut, size) - world.render(clips.identity, wide, size)
    changed = changed.abs().amax(2) > 0.05  # [B, T, H, W]: what opening the mouth changes
    region = world.mouth_region(*size)
    assert (changed & region).sum() >= 0.9 * changed.sum() > 0
    assert region.float().mean() < 0.05  # the mouth, not the face
    assert not (region & ~world.face_region(*size)).any()
    # the weight: the mouth `mouth_gain` times the rest of the face, which is `gain` times the
    # frame's rest, mean 1
    weight = world.face_weight(*size, 3.0, 4.0)
    assert weight.mean().item() == pytest.approx(1.0)
    assert weight[58, 64] / weight[40, 64] == pytest.approx(4.0)  # the mouth against the brow
    assert weight[40, 64] / weight[5, 5] == pytest.approx(3.0)
    assert torch.equal(world.face_weight(*size, 3.0, 1.0), world.face_weight(*size, 3.0))


def test_the_eye_region_holds_the_gazes_the_world_draws(tiny_vae):
    clips = world.make_clips(16, world.ClipConfig(chunks=1), np.random.default_rng(3))
    controls = torch.as_tensor(clips.controls)[:, ::4]  # the poses and faces of real clips
    size = (128, 128)
    changed = torch.zeros(1, dtype=torch.bool)
    for gaze in ("gaze_x", "gaze_y"):
        one, other = controls.clone(), controls.clone()
        one[..., bh.C[gaze]], other[..., bh.C[gaze]] = -1.0, 1.0
        diff = world.render(clips.identity, one, size) - world.render(clips.identity, other, size)
        changed = changed | (diff.abs().amax(2) > 0.05)  # [B, T, H, W]: what the gaze moves
    region = world.eye_region(*size)
    assert (changed & region).sum() >= 0.9 * changed.sum() > 0
    assert region.float().mean() < 0.06  # the eyes, not the face
    assert not (region & ~world.face_region(*size)).any()
    # the eyes `eye_gain` times the rest of the face; where they meet the mouth, the mouth's gain
    weight = world.face_weight(*size, 3.0, 4.0, 6.0)
    assert weight.mean().item() == pytest.approx(1.0)
    assert weight[42, 64] / weight[25, 64] == pytest.approx(6.0)  # an eye's row against the brow
    assert weight[49, 64] / weight[25, 64] == pytest.approx(4.0)  # both regions: the mouth's
    assert weight[25, 64] / weight[5, 5] == pytest.approx(3.0)
    assert torch.equal(world.face_weight(*size, 3.0, 4.0, 1.0), world.face_weight(*size, 3.0, 4.0))
    # the run's setting reaches the VAE's loss
    cfg = vae_config(PipelineConfig(vae_face_gain=3.0, vae_mouth_gain=4.0, vae_eye_gain=6.0), size)
    assert (cfg.face_gain, cfg.mouth_gain, cfg.eye_gain) == (3.0, 4.0, 6.0)
    frames = world.make_clips(
        1, world.ClipConfig(chunks=1, size=(32, 32)), np.random.default_rng(0)
    )
    losses = []
    for eye_gain in (1.0, 6.0):
        torch.manual_seed(0)  # the same sampled latent for both
        losses.append(vae_loss(tiny_vae, frames.frames, 0.0, 3.0, eye_gain=eye_gain).item())
    assert losses[0] != losses[1]


def test_the_decoder_alone_lowers_its_loss_with_the_encoder_frozen(tiny_vae):
    vae = copy.deepcopy(tiny_vae).train()
    vae.encoder.requires_grad_(False)
    encoder = copy.deepcopy(vae.encoder.state_dict())
    clip_cfg = world.ClipConfig(chunks=1, size=(32, 32))
    frames = world.make_clips(2, clip_cfg, np.random.default_rng(0)).frames
    torch.manual_seed(0)
    losses = _fit(vae.decoder.parameters(), lambda: vae_loss(vae, frames, 0.0, 3.0), 12, 3e-3)
    assert losses[-1] < 0.7 * losses[0]
    for name, value in vae.encoder.state_dict().items():
        assert torch.equal(encoder[name], value), name


def test_decoder_finetuning_keeps_the_latent_space_and_resumes(tmp_path):
    base, _ = train_vae(
        VAETrainConfig(preset="tiny", size=(32, 32), chunks=1, steps=2, batch=1, stats_clips=1),
        None,
        torch.device("cpu"),
        progress=False,
    )
    before = copy.deepcopy(base.state_dict())
    cfg = VAETrainConfig(preset="tiny", size=(32, 32), chunks=1, steps=2, batch=2, lr=3e-3)
    out, state, report = finetune_decoder(cfg, base, tmp_path, torch.device("cpu"), progress=False)
    assert state.step == 2 and (tmp_path / "vae_decoder" / "state.pt").is_file()
    assert report is not None and (out is not base) == report.improved
    for name, value in base.state_dict().items():  # the VAE it started from is left as it was
        assert torch.equal(before[name], value), name
    longer = replace(cfg, steps=40)
    cpu = torch.device("cpu")
    out, state, report = finetune_decoder(longer, base, tmp_path, cpu, progress=False)
    assert state.step == 40 and len(state.losses) == 40  # went on from step 2
    assert report.improved and report.tuned_face > report.base_face and out is not base
    tuned = out.state_dict()
    kept = {n: v for n, v in before.items() if not n.startswith("decoder.")}
    assert "latent_std" in kept and any(n.startswith("encoder.") for n in kept)
    for name, value in kept.items():  # the encoder and the latent statistics
        assert torch.equal(tuned[name], value), name
    assert any(not torch.equal(tuned[n], v) for n, v in before.items() if n not in kept)
    unseen = world.ClipConfig(chunks=1, size=(32, 32), split="eval")
    frames = world.make_clips(2, unseen, np.random.default_rng(1)).frames
    assert reconstruction_psnr(out, frames) > reconstruction_psnr(base, frames)


def test_noised_latents_decode_otherwise_and_the_decoder_still_learns(tiny_vae):
    vae = copy.deepcopy(tiny_vae).train()
    vae.encoder.requires_grad_(False)
    frames = world.make_clips(
        2, world.ClipConfig(chunks=1, size=(32, 32)), np.random.default_rng(0)
    )
    frames = frames.frames
    with torch.no_grad():
        clean = vae(frames, sample=False).recon
        none = vae(frames, sample=False, latent_noise=torch.zeros(2)).recon
        noised = vae(frames, sample=False, latent_noise=torch.tensor([0.0, 0.5])).recon
    assert torch.equal(clean, none)
    assert torch.equal(noised[0], clean[0]) and not torch.allclose(noised[1], clean[1])
    torch.manual_seed(0)
    losses = _fit(vae.decoder.parameters(), lambda: vae_loss(vae, frames, 0.0, 3.0, 0.3), 12, 3e-3)
    assert losses[-1] < 0.7 * losses[0]


def test_latent_noise_is_refused_where_the_latent_statistics_do_not_exist_yet():
    cfg = VAETrainConfig(preset="tiny", size=(32, 32), chunks=1, steps=1, latent_noise=0.2)
    with pytest.raises(ValueError, match="decoder stage"):
        train_vae(cfg, None, torch.device("cpu"), progress=False)


def test_vae_trains_on_clips_longer_than_its_reach():
    cfg = VAETrainConfig(preset="tiny")
    assert clip_frames(training_chunks(cfg)) > temporal_reach(PRESETS["tiny"])
    assert training_chunks(replace(cfg, chunks=2)) == 2


def test_buffer_layout_matches_the_stream_buffer(tiny_latents, tiny_config, text_table):
    gen = torch.Generator().manual_seed(0)
    b = data.sample_buffer(tiny_latents, tiny_config, text_table, gen, 64, None, start_prob=0.5)
    lpc, n_ctx = tiny_config.latents_per_chunk, tiny_config.context_latents
    assert b.x0.shape[1] == tiny_config.buffer_latents
    for i in range(64):
        k = int(b.k[i])
        # placeholders (before the session start) are the reference with no prompt
        for slot in range(n_ctx - 1):
            chunk = k - (n_ctx - 1) + slot
            if chunk < 0:
                assert not b.real_memory[i, slot]
                assert torch.equal(b.x0[i, 1 + slot], b.x0[i, 0])
                assert not b.text_mask[i, 1 + slot].any()
    # the stream is contiguous latents: find one buffer's stream inside its clip
    rows = [
        r
        for r in range(len(tiny_latents))
        if (tiny_latents.latents[r].float() == b.x0[0, n_ctx]).all((1, 2, 3)).any()
    ]
    assert rows
    start = 1 + int(b.k[0]) * lpc
    clip = tiny_latents.latents[rows[0]].float()
    assert torch.equal(clip[start : start + tiny_config.stream_latents], b.x0[0, n_ctx:])


def _fixed(latents, config, table, audio=None, batch=4):
    gen = torch.Generator().manual_seed(1)
    return data.sample_buffer(latents, config, table, gen, batch, audio, start_prob=0.5)


def _loss_on(fixed, fn):
    def loss():
        b = data.BufferBatch(**{k: v.clone() for k, v in vars(fixed).items()})
        return fn(b, torch.Generator().manual_seed(2))

    return loss


def test_stage1_lowers_its_loss(tiny_latents, tiny_config, text_table):
    torch.manual_seed(0)
    model = FlowActMMDiT(tiny_config)
    cfg = DiffusionConfig(text_drop=0, audio_drop=0, gen_memory_prob=0.5)
    fixed = _fixed(tiny_latents, tiny_config, text_table)
    fn = _loss_on(fixed, lambda b, g: diffusion_loss(model, b, cfg, g, True, True))
    losses = _fit(model.parameters(), fn, 10, 2e-3)
    assert losses[-1] < 0.8 * losses[0]


def test_stage2_trains_the_audio_encoder_jointly(tiny_latents, tiny_config, text_table, tiny_audio):
    torch.manual_seed(0)
    model = FlowActMMDiT(tiny_config)
    cfg = DiffusionConfig(audio=True, text_drop=0, audio_drop=0)
    before = copy.deepcopy(tiny_audio.state_dict())
    gen = torch.Generator().manual_seed(1)

    def loss():
        b = data.sample_buffer(
            tiny_latents, tiny_config, text_table, gen.manual_seed(1), 4, tiny_audio, start_prob=0.5
        )
        return diffusion_loss(model, b, cfg, torch.Generator().manual_seed(2))

    params = list(model.parameters()) + list(tiny_audio.parameters())
    losses = _fit(params, loss, 10, 2e-3)
    assert losses[-1] < 0.8 * losses[0]
    moved = [k for k, v in tiny_audio.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("proj_in") for k in moved)


def test_stage3_student_approaches_the_guided_teacher(
    tiny_latents, tiny_config, text_table, tiny_audio
):
    torch.manual_seed(0)
    teacher = FlowActMMDiT(tiny_config).eval().requires_grad_(False)
    student = FlowActMMDiT(tiny_config)  # a fresh student: its loss has room to fall
    cfg = DistillConfig(teacher_micro_steps=2, gen_memory_prob=0.5, no_guidance_prob=0.5)
    with torch.no_grad():
        fixed = _fixed(tiny_latents, tiny_config, text_table, tiny_audio)
    fn = _loss_on(fixed, lambda b, g: distill_loss(student, teacher, b, cfg, g))
    losses = _fit(student.parameters(), fn, 10, 2e-3)
    assert losses[-1] < 0.7 * losses[0]


def test_stages_resume_from_their_state(
    tmp_path, tiny_latents, tiny_config, text_table, tiny_audio
):
    torch.manual_seed(0)
    model = FlowActMMDiT(tiny_config)
    cfg = DiffusionConfig(steps=2, batch=2, save_every=1, gen_memory_after=1)
    train_diffusion(cfg, model, tiny_audio, tiny_latents, text_table, tmp_path, progress=False)
    fresh = FlowActMMDiT(tiny_config)
    state = StageState({"model": fresh})
    assert state.load(tmp_path / "stage1" / "state.pt") and state.step == 2
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    more = train_diffusion(
        replace(cfg, steps=3), fresh, tiny_audio, tiny_latents, text_table, tmp_path, progress=False
    )
    assert more.step == 3 and len(more.losses) == 3
    student, ema, st = train_distill(
        DistillConfig(steps=1, batch=2, teacher_micro_steps=2),
        fresh,
        tiny_audio,
        tiny_latents,
        text_table,
        tmp_path,
        progress=False,
    )
    assert st.step == 1 and (tmp_path / "stage3" / "state.pt").is_file()


def test_a_compiled_training_step_matches_the_eager_one(tiny_latents, tiny_config, text_table):
    """`compile=True` fuses the blocks; the loss and the gradients stay those of eager mode."""
    torch.manual_seed(0)
    model = FlowActMMDiT(tiny_config)
    model.set_attention_backend("split")
    cfg = DiffusionConfig(text_drop=0, audio_drop=0)
    fixed = _fixed(tiny_latents, tiny_config, text_table)

    def loss_and_grads() -> tuple[float, list[torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        gen = torch.Generator().manual_seed(3)
        copy = data.BufferBatch(**{k: v.clone() for k, v in vars(fixed).items()})
        loss = diffusion_loss(model, copy, cfg, gen)
        loss.backward()
        return loss.item(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    eager_loss, eager_grads = loss_and_grads()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.compile_blocks()
    model.compile_blocks()  # a second call keeps the compiled blocks
    assert model.state_dict().keys() == state.keys()
    compiled_loss, compiled_grads = loss_and_grads()
    assert compiled_loss == pytest.approx(eager_loss, rel=1e-5)
    for a, b in zip(eager_grads, compiled_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert all(getattr(b, "_compiled_call_impl", None) is not None for b in model.blocks)
