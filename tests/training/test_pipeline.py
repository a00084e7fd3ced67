"""The whole curriculum on the tiny preset, and runs that start from its checkpoint: an ablation
that shares its VAE and probe, and a continuation that goes on training its DiT."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from flowact.renderer.text import HashTextEncoder
from flowact.renderer.training import behaviors as bh
from flowact.renderer.training import speech
from flowact.renderer.training.export import (
    TRAINED_KEY,
    combine_checkpoints,
    export_checkpoint,
    load_checkpoint,
    trained_phrasings,
)
from flowact.renderer.training.pipeline import PipelineConfig, run_pipeline
from flowact.renderer.training.pipeline import main as pipeline_main
from flowact.renderer.training.refit import refit_checkpoint

TINY_BUDGETS = dict(
    preset="tiny",
    device="cpu",
    vae_seconds=1.0,
    probe_seconds=1.0,
    stage1_seconds=1.0,
    stage2_seconds=1.0,
    stage3_seconds=1.0,
    dmd_seconds=1.0,
    dmd_batch=2,
    vae_batch=2,
    probe_batch=8,
    latent_clips=4,
    clip_chunks=8,
    batch=4,
    distill_batch=2,
    teacher_micro_steps=2,
    eval_seconds=3.0,
    teacher_eval_seconds=3.0,
    eval_identities=1,
)


def _data(tmp_path):
    """Speech banks of synthetic babble and a hashed prompt table (no espeak-ng, no MiniLM)."""
    rng = np.random.default_rng(0)
    bank = [speech.syllable_speech(2.0, rng) for _ in range(4)]
    out = tmp_path / "data"
    out.mkdir()
    speech.save_bank(out / "speech_train.npz", bank)
    speech.save_bank(out / "speech_eval.npz", bank[:2])
    torch.save(HashTextEncoder().encode(bh.prompt_table()[0]), out / "text_table.pt")
    return out


@pytest.fixture(scope="module")
def main_run(tmp_path_factory):
    """One tiny run of the whole curriculum: its data folder, checkpoint and summary."""
    tmp_path = tmp_path_factory.mktemp("pipeline")
    data = _data(tmp_path)
    main = PipelineConfig(
        data=str(data),
        workdir=str(tmp_path / "main"),
        checkpoint=str(tmp_path / "ckpt"),
        **TINY_BUDGETS,
    )
    t0 = time.monotonic()
    summary = run_pipeline(main)
    summary["measured_seconds"] = time.monotonic() - t0
    return data, tmp_path / "ckpt", summary


def test_pipeline_runs_every_stage_and_evaluates(main_run):
    data, _, summary = main_run
    assert summary["stage3"]["steps"] > 0 and summary["stage3_dmd"]["steps"] > 0
    # the held-out speech the evaluation read is the workdir's own copy
    workdir = Path(summary["config"]["workdir"])
    assert (workdir / "speech_eval.npz").read_bytes() == (data / "speech_eval.npz").read_bytes()
    config = json.loads((workdir / "eval" / "teacher_12nfe_no_cfg" / "report.json").read_text())
    assert config["config"]["speech_bank"] == str(workdir / "speech_eval.npz")
    assert set(summary["eval"]) == {
        "distilled_3nfe_refine",
        "distilled_3nfe_no_refine",
        "distilled_3nfe_before_dmd_refine",
        "teacher_12nfe_no_cfg",
    }


def test_a_run_with_dmd_keeps_the_student_from_before_it(main_run):
    _, ckpt, summary = main_run
    before = summary["checkpoint_before_dmd"]
    assert before == f"{ckpt}_before_dmd"
    # both record the phrasings their DiT was trained on: the world's training phrasings
    for exported in (ckpt, before):
        assert load_checkpoint(exported).sampling[TRAINED_KEY] == bh.training_phrasings()
    a, b = load_checkpoint(ckpt).model.state_dict(), load_checkpoint(before).model.state_dict()
    assert a.keys() == b.keys()
    assert any(not torch.equal(a[k], b[k]) for k in a)  # DMD changed the student it was given
    runs = summary["eval"]
    assert (
        runs["distilled_3nfe_before_dmd_refine"]["overall"]
        != runs["distilled_3nfe_refine"]["overall"]
    )


def test_a_finished_run_resumes_to_the_same_summary(main_run):
    data, ckpt, summary = main_run
    # the recorded wall time is the run's own, counted once
    assert 0.8 * summary["measured_seconds"] < summary["wall_seconds"]
    assert summary["wall_seconds"] <= summary["measured_seconds"]
    workdir = summary["config"]["workdir"]
    t0 = time.monotonic()
    again = run_pipeline(
        PipelineConfig(data=str(data), workdir=workdir, checkpoint=str(ckpt), **TINY_BUDGETS)
    )
    piece = time.monotonic() - t0
    for stage in ("vae", "stage1", "stage2", "stage3"):
        assert again[stage]["steps"] == summary[stage]["steps"], stage
    added = again["wall_seconds"] - summary["wall_seconds"]
    assert 0.8 * piece < added <= piece


def test_an_ablation_shares_the_vae_and_probe(main_run, tmp_path):
    data, ckpt, _ = main_run
    shipped = load_checkpoint(ckpt)

    ablation = PipelineConfig(
        data=str(data),
        workdir=str(tmp_path / "abl"),
        checkpoint=str(tmp_path / "abl_ckpt"),
        init_from=str(ckpt),
        gen_memory_prob=0.0,
        staggered_prob=0.0,
        **{**TINY_BUDGETS, "stage3_seconds": 0.0, "dmd_seconds": 0.0},
    )
    result = run_pipeline(ablation)
    assert "vae" in result and "stage3" not in result
    assert set(result["eval"]) == {"teacher_12nfe_no_cfg"}
    assert not (tmp_path / "abl_ckpt").exists()  # nothing distilled, nothing exported
    assert result["stage2"]["steps"] > 0
    # the ablation trained no VAE or probe of its own: it kept the checkpoint's
    vae = torch.load(tmp_path / "abl" / "vae" / "state.pt", weights_only=False)["modules"]["vae"]
    for name, value in shipped.vae.state_dict().items():
        assert torch.equal(vae[name], value.float()), name
    probe = torch.load(tmp_path / "abl" / "probe.pt")
    for name, value in shipped.probe.state_dict().items():
        assert torch.equal(probe[name], value.float()), name
    saved = json.loads((tmp_path / "abl" / "summary.json").read_text())
    assert saved["config"]["gen_memory_prob"] == 0.0


def test_an_ablation_starts_from_a_running_workdir(main_run, tmp_path):
    data, _, summary = main_run
    source = Path(summary["config"]["workdir"])
    ablation = PipelineConfig(
        data=str(data),
        workdir=str(tmp_path / "abl"),
        checkpoint=str(tmp_path / "abl_ckpt"),
        init_from=str(source),
        staggered_prob=0.0,
        **{**TINY_BUDGETS, "vae_seconds": 50.0, "stage3_seconds": 0.0, "dmd_seconds": 0.0},
    )
    result = run_pipeline(ablation)
    assert result["stage2"]["steps"] > 0 and "latents" not in result  # its latents were taken
    for name in ("probe.pt", "latents.pt"):
        assert (tmp_path / "abl" / name).read_bytes() == (source / name).read_bytes(), name
    mine = torch.load(tmp_path / "abl" / "vae" / "state.pt", weights_only=False)
    theirs = torch.load(source / "vae" / "state.pt", weights_only=False)
    assert mine["step"] == theirs["step"]  # a larger VAE budget here trained nothing more
    for name, value in theirs["modules"]["vae"].items():
        assert torch.equal(mine["modules"]["vae"][name], value), name


def test_init_from_names_what_it_cannot_start_from(main_run, tmp_path):
    data, _, summary = main_run
    half = tmp_path / "half"
    (half / "vae").mkdir(parents=True)
    (half / "vae" / "state.pt").write_bytes(b"")
    runs = {
        "nothing": (tmp_path / "empty", "is neither an exported checkpoint"),
        "half": (half, "has not made probe.pt, latents.pt yet"),
    }
    (tmp_path / "empty").mkdir()
    for source, message in runs.values():
        cfg = PipelineConfig(
            data=str(data), workdir=str(tmp_path / "w"), init_from=str(source), **TINY_BUDGETS
        )
        with pytest.raises(FileNotFoundError, match=message):
            run_pipeline(cfg)
    workdir = summary["config"]["workdir"]
    cfg = PipelineConfig(
        data=str(data), workdir=str(tmp_path / "w"), init_from=workdir, init_dit=True
    )
    with pytest.raises(ValueError, match="init_dit takes an exported checkpoint's DiT"):
        run_pipeline(cfg)
    with pytest.raises(ValueError, match="vae_continue takes an exported checkpoint's VAE"):
        run_pipeline(replace(cfg, init_dit=False, vae_continue=True))


def _continuation(main_run, tmp_path, name: str, **flags) -> PipelineConfig:
    """A run that goes on from the main run's checkpoint with its DiT, into `tmp_path/name`."""
    data, ckpt, _ = main_run
    return PipelineConfig(
        data=str(data),
        workdir=str(tmp_path / name),
        checkpoint=str(tmp_path / f"{name}_ckpt"),
        init_from=str(ckpt),
        init_dit=True,
        **{**TINY_BUDGETS, "dmd_seconds": 0.0, **flags},
    )


def test_a_continuation_goes_on_training_the_checkpoints_dit_and_decoder(main_run, tmp_path):
    shipped = load_checkpoint(main_run[1])
    result = run_pipeline(
        _continuation(
            main_run,
            tmp_path,
            "more",
            vae_decoder_seconds=1.0,
            eval_seconds=0.0,
            teacher_eval_seconds=0.0,
        )
    )
    # 0 seconds of evaluation: none is streamed (the GPU runs evaluate with `flowact eval`)
    assert result["eval"] == {} and not (tmp_path / "more" / "eval").exists()
    # stage 1 is the checkpoint's DiT and audio encoder, not a training of its own
    assert result["stage1"]["steps"] == 1 and result["stage1"]["loss_first50"] is None
    assert result["vae"]["steps"] == 1 and "heldout" not in result["vae"]  # the VAE as it was
    seeded = torch.load(tmp_path / "more" / "stage1" / "state.pt", weights_only=False)["modules"]
    for name, value in shipped.model.state_dict().items():
        assert torch.equal(seeded["model"][name], value.float()), name
    for name, value in shipped.audio.state_dict().items():
        assert torch.equal(seeded["encoder"][name], value.float()), name
    assert result["stage2"]["steps"] > 0 and result["stage3"]["steps"] > 0
    went_on = load_checkpoint(tmp_path / "more_ckpt")
    assert went_on.sampling["guidance"] == 2.0  # no sample_guidance: the teacher's
    moved = [
        not torch.equal(a, b)
        for a, b in zip(went_on.model.parameters(), shipped.model.parameters(), strict=True)
    ]
    assert any(moved)
    # the decoder trained alone; the encoder, and so the DiT's latent space, is the checkpoint's
    tuned = result["vae_decoder"]
    assert tuned["steps"] > 0 and tuned["heldout"]["clips"] > 0
    assert tuned["kept"] == (tuned["heldout"]["tuned_face"] > tuned["heldout"]["base_face"])
    for name, value in shipped.vae.state_dict().items():
        same = torch.equal(went_on.vae.state_dict()[name], value)
        assert same or (tuned["kept"] and name.startswith("decoder.")), name


def test_a_continuation_with_the_behavior_readout_trains_its_head_first(main_run, tmp_path):
    flags = dict(
        behavior_weight=0.5,
        behavior_head_seconds=1.0,
        anchor_temperature=0.0,
        prompt_mix=0.5,
        sample_guidance=3.0,
    )
    # it starts from a checkpoint whose DiT was trained on one more phrasing than the world has
    earlier = tmp_path / "earlier"
    shutil.copytree(main_run[1], earlier)
    spec = json.loads((earlier / "sampling.json").read_text())
    spec[TRAINED_KEY]["face"].append("wrinkles the nose, amused")
    (earlier / "sampling.json").write_text(json.dumps(spec))
    cfg = _continuation(main_run, tmp_path, "readout", eval_seconds=0.0, **flags)
    result = run_pipeline(replace(cfg, teacher_eval_seconds=0.0, init_from=str(earlier)))
    # the checkpoint names the world's training phrasings as its prompt anchors
    sampling = load_checkpoint(tmp_path / "readout_ckpt").sampling
    assert sampling["prompt_anchors"] == {"temperature": 0.0, "prompts": bh.training_phrasings()}
    # and records them as trained on, with the one its DiT had learned before
    world = bh.training_phrasings()
    assert sampling[TRAINED_KEY] == {**world, "face": world["face"] + ["wrinkles the nose, amused"]}
    # sampled at its own guidance, where the teacher's (`guidance`) stays 2.0
    assert sampling["guidance"] == 3.0 and result["config"]["guidance"] == 2.0
    head = result["behavior_head"]
    assert head["steps"] > 0 and head["heldout_clips"] == 1
    assert set(head["heldout_accuracy"]) == set(bh.BEHAVIOR_CHANNELS)
    assert (tmp_path / "readout" / "behavior_head.pt").is_file()
    assert result["stage2"]["steps"] > 0 and result["config"]["behavior_weight"] == 0.5
    assert result["config"]["prompt_mix"] == 0.5 and result["stage3"]["steps"] > 0
    with pytest.raises(ValueError, match="behavior_weight must be >= 0, not -1.0"):
        run_pipeline(replace(cfg, behavior_weight=-1.0))
    with pytest.raises(ValueError, match="anchor_temperature must be >= 0, not -0.5"):
        run_pipeline(replace(cfg, anchor_temperature=-0.5))
    with pytest.raises(ValueError, match="sample_guidance must be >= 0, not -1.0"):
        run_pipeline(replace(cfg, sample_guidance=-1.0))
    with pytest.raises(ValueError, match=r"prompt_mix must be within \[0, 1\], not 1.5"):
        run_pipeline(replace(cfg, prompt_mix=1.5))


def test_a_continuation_can_go_on_training_the_checkpoints_vae(main_run, tmp_path):
    shipped = load_checkpoint(main_run[1])
    more = _continuation(main_run, tmp_path, "vae", vae_continue=True, vae_control_weight=0.5)
    result = run_pipeline(more)
    # the checkpoint's VAE, encoder and all, went on training: a new latent space
    assert result["vae"]["steps"] > 1 and result["vae"]["loss"] is not None
    # ... measured against the checkpoint's on the same unseen clips
    heldout = result["vae"]["heldout"]
    assert heldout["clips"] == 4 and heldout["tuned_face"] != heldout["base_face"]
    # the control head, new beside the checkpoint's VAE, read each control of unseen characters
    readout = result["vae"]["readout"]
    assert set(readout) == set(bh.CONTROLS)
    assert all(-1.0 <= r <= 1.0 for r in readout.values()) and any(readout.values())
    went_on = load_checkpoint(tmp_path / "vae_ckpt")
    for part in ("encoder", "decoder"):
        before = getattr(shipped.vae, part).state_dict()
        after = getattr(went_on.vae, part).state_dict()
        assert any(not torch.equal(after[k], v) for k, v in before.items()), part
    trained = torch.load(tmp_path / "vae" / "vae" / "state.pt", weights_only=False)["modules"]
    for name, value in went_on.vae.state_dict().items():  # the export, in bf16
        bf16 = trained["vae"][name].to(torch.bfloat16)
        assert torch.equal(bf16, value.to(torch.bfloat16)), name
    assert result["stage2"]["steps"] > 0
    # the instrument is the checkpoint's probe, so the two are read alike
    for name, value in shipped.probe.state_dict().items():
        assert torch.equal(went_on.probe.state_dict()[name], value), name
    with pytest.raises(ValueError, match="vae_continue needs init_from"):
        run_pipeline(replace(more, workdir=str(tmp_path / "none"), init_from="", init_dit=False))
    kept = replace(more, workdir=str(tmp_path / "kept"), vae_continue=False)
    with pytest.raises(ValueError, match="vae_control_weight trains the VAE"):
        run_pipeline(kept)
    assert not (tmp_path / "kept" / "vae").exists()  # refused before the workdir was seeded


def test_a_continued_vae_can_take_the_probe_along_to_its_new_latent_space(main_run, tmp_path):
    shipped = load_checkpoint(main_run[1])
    flags = dict(vae_continue=True, vae_control_weight=0.5, vae_control_gains="smile=6,brows=6")
    more = _continuation(
        main_run, tmp_path, "probe", probe_continue=True, vae_mouth_frames=2.0, **flags
    )
    result = run_pipeline(replace(more, eval_seconds=0.0, teacher_eval_seconds=0.0))
    assert result["config"]["vae_control_gains"] == "smile=6,brows=6"
    # the head read the mouth's motion inside each latent as well as every control
    readout = result["vae"]["readout"]
    assert set(readout) == {*bh.CONTROLS, "mouth_frames"} and -1 <= readout["mouth_frames"] <= 1
    # the probe went on from the checkpoint's (scored before and after), not from scratch
    probe = result["probe"]
    assert probe["steps"] > 0 and probe["started_from"] is not None
    went_on = load_checkpoint(tmp_path / "probe_ckpt")
    assert went_on.probe.config == shipped.probe.config
    before, after = shipped.probe.state_dict(), went_on.probe.state_dict()
    assert any(not torch.equal(after[k], v) for k, v in before.items())
    # read before a DiT is trained on it (a gate): a run seeded from this workdir, whose VAE
    # stage had a control head, exports its VAE and probe as they are beside a fresh DiT
    gate = PipelineConfig(
        data=more.data,
        workdir=str(tmp_path / "gate"),
        checkpoint=str(tmp_path / "gate_ckpt"),
        init_from=more.workdir,
        **{**TINY_BUDGETS, "dmd_seconds": 0.0, "eval_seconds": 0.0, "teacher_eval_seconds": 0.0},
    )
    assert "latents" not in run_pipeline(gate)  # the workdir's latents were taken
    gated = load_checkpoint(tmp_path / "gate_ckpt")
    for part in ("vae", "probe"):
        mine, theirs = getattr(gated, part).state_dict(), getattr(went_on, part).state_dict()
        for name, value in theirs.items():
            assert torch.equal(mine[name], value), (part, name)
    # gains without the term they share out are refused before the workdir is seeded
    bare = replace(more, workdir=str(tmp_path / "bare"), vae_control_weight=0.0)
    with pytest.raises(ValueError, match="vae_control_gains share out"):
        run_pipeline(bare)
    with pytest.raises(ValueError, match="names 'frown', not a control"):
        run_pipeline(replace(bare, vae_control_weight=0.5, vae_control_gains="frown=2"))
    with pytest.raises(ValueError, match="vae_mouth_frames asks the control readout"):
        run_pipeline(replace(bare, vae_control_gains=""))
    with pytest.raises(ValueError, match="vae_mouth_frames must be a finite number >= 0, not -1"):
        run_pipeline(replace(more, workdir=str(tmp_path / "bare"), vae_mouth_frames=-1.0))
    assert not (tmp_path / "bare" / "vae").exists()


def test_a_run_stopped_after_its_latents_goes_on_from_stage_1(main_run, tmp_path):
    quiet = {"eval_seconds": 0.0, "teacher_eval_seconds": 0.0}
    gate = _continuation(
        main_run, tmp_path, "gated", vae_continue=True, stop_after_latents=True, **quiet
    )
    first = run_pipeline(gate)
    # a new latent space is made, and nothing is trained on it or exported yet
    assert first["vae"]["steps"] > 1
    assert first["latents"]["clips"] == TINY_BUDGETS["latent_clips"]
    assert not {"stage1", "stage2", "stage3"} & set(first)
    assert not Path(gate.checkpoint).exists()
    latents = Path(gate.workdir) / "latents.pt"
    made = latents.stat().st_mtime_ns
    # the same command without the flag goes on from there, in the same latent space
    rest = run_pipeline(replace(gate, stop_after_latents=False))
    assert latents.stat().st_mtime_ns == made and rest["latents"] == first["latents"]
    assert rest["vae"]["steps"] == first["vae"]["steps"]
    assert rest["stage2"]["steps"] > 0 and (Path(gate.checkpoint) / "index.json").is_file()


def test_flowact_eval_reads_one_stream_with_a_second_probe(main_run, tmp_path):
    data, ckpt, _ = main_run
    other = tmp_path / "other"  # the same checkpoint whose probe went on training elsewhere
    bundle = load_checkpoint(ckpt)
    probe = bundle.probe
    torch.manual_seed(0)
    with torch.no_grad():
        for p in probe.parameters():
            p.add_(0.05 * torch.randn_like(p))
    export_checkpoint(other, bundle.model, bundle.vae, bundle.audio, probe, bundle.sampling)
    out = tmp_path / "eval"
    common = ["--seconds", "1", "--vae-seconds", "1", "--identities", "1"]
    common += ["--speech-bank", str(data / "speech_eval.npz")]
    common += ["--text-table", str(data / "text_table.pt")]
    args = [sys.executable, "-m", "flowact", "eval", "--checkpoint", str(ckpt), *common]

    env = {**os.environ, "FLOWACT_LOG_FORMAT": "json"}
    logged: list[dict] = []

    def flowact_eval(*more: str) -> str:
        done = subprocess.run([*args, *more], capture_output=True, text=True, timeout=300, env=env)
        assert done.returncode == 0, done.stderr
        logged.extend(json.loads(line) for line in done.stderr.splitlines() if line[:1] == "{")
        return done.stdout

    said = flowact_eval("--out", str(out), "--also-probe-from", str(other))
    assert f"report in {out / 'probe-other'}" in said
    # with no --device it reads on the GPU where there is one, as `train run` trains there
    (started,) = [e for e in logged if e["event"] == "eval_streams"]
    assert started["device"] == ("cuda:0" if torch.cuda.is_available() else "cpu")
    second = json.loads((out / "probe-other" / "report.json").read_text())
    assert second["config"]["probe"] == str(other)
    # as if that probe had read the stream alone
    flowact_eval("--out", str(tmp_path / "alone"), "--probe-from", str(other))
    by_itself = json.loads((tmp_path / "alone" / "report.json").read_text())
    assert json.dumps(second["overall"]) == json.dumps(by_itself["overall"])
    first = json.loads((out / "report.json").read_text())
    assert first["config"]["probe"] is None
    assert json.dumps(first["overall"]) != json.dumps(second["overall"])


def test_a_checkpoint_takes_the_decoder_of_another_in_its_latent_space(main_run, tmp_path):
    _, ckpt, _ = main_run
    shipped = load_checkpoint(ckpt)
    with torch.no_grad():
        next(shipped.vae.decoder.parameters()).add_(0.5)
    export_checkpoint(tmp_path / "decoder", shipped.model, shipped.vae, shipped.audio)
    combined = load_checkpoint(combine_checkpoints(ckpt, tmp_path / "out", tmp_path / "decoder"))
    for name, value in shipped.vae.state_dict().items():
        assert torch.equal(combined.vae.state_dict()[name], value), name
    base = load_checkpoint(ckpt)
    assert combined.probe is not None and combined.sampling == base.sampling
    for name, value in base.model.state_dict().items():
        assert torch.equal(combined.model.state_dict()[name], value), name
    with torch.no_grad():
        next(shipped.vae.encoder.parameters()).add_(0.5)
    export_checkpoint(tmp_path / "encoder", shipped.model, shipped.vae, shipped.audio)
    with pytest.raises(ValueError, match=r"another latent space .* \(encoder\.\S+ differs"):
        combine_checkpoints(ckpt, tmp_path / "bad", tmp_path / "encoder")
    assert not (tmp_path / "bad").exists()


def test_a_checkpoint_takes_the_probe_of_another(main_run, tmp_path):
    _, ckpt, _ = main_run
    other = load_checkpoint(ckpt)
    with torch.no_grad():
        next(other.probe.parameters()).add_(0.5)
        next(other.vae.encoder.parameters()).add_(0.5)  # a probe comes with any VAE
    export_checkpoint(tmp_path / "other", other.model, other.vae, other.audio, other.probe)
    combined = load_checkpoint(
        combine_checkpoints(ckpt, tmp_path / "out", probe_from=tmp_path / "other")
    )
    for name, value in other.probe.state_dict().items():
        assert torch.equal(combined.probe.state_dict()[name], value), name
    base = load_checkpoint(ckpt)
    for name, value in base.vae.state_dict().items():
        assert torch.equal(combined.vae.state_dict()[name], value), name
    export_checkpoint(tmp_path / "bare", other.model, other.vae, other.audio)
    with pytest.raises(ValueError, match="holds no probe"):
        combine_checkpoints(ckpt, tmp_path / "bad", probe_from=tmp_path / "bare")
    with pytest.raises(ValueError, match="nothing to combine"):
        combine_checkpoints(ckpt, tmp_path / "bad")


def test_a_checkpoint_blends_its_dit_with_another_of_its_latent_space(main_run, tmp_path):
    _, ckpt, _ = main_run
    base = load_checkpoint(ckpt)
    other = load_checkpoint(ckpt)
    with torch.no_grad():  # another run of the same lineage: every weight moved
        for module in (other.model, other.audio):
            for p in module.parameters():
                p.add_(torch.randn_like(p) * 0.1)
    other.sampling[TRAINED_KEY] = {"face": ["a phrasing only the other learned"]}
    export_checkpoint(
        tmp_path / "other", other.model, other.vae, other.audio, other.probe, other.sampling
    )
    other = load_checkpoint(tmp_path / "other")  # as shipped: bf16 where large
    ends = {
        w: load_checkpoint(
            combine_checkpoints(ckpt, tmp_path / f"w{w}", blend_from=tmp_path / "other", blend=w)
        )
        for w in (0.0, 0.5, 1.0)
    }
    for module in ("model", "audio"):
        mine, theirs = getattr(base, module).state_dict(), getattr(other, module).state_dict()
        for name, value in getattr(ends[0.0], module).state_dict().items():
            assert torch.equal(value, mine[name]), name
        for name, value in getattr(ends[1.0], module).state_dict().items():
            assert torch.equal(value, theirs[name]), name
        half = getattr(ends[0.5], module).state_dict()
        moved = [
            n for n, v in mine.items() if v.is_floating_point() and not torch.equal(v, theirs[n])
        ]
        assert moved
        for name in moved:  # the mean, to the shard's bf16
            mean = (mine[name] + theirs[name]) / 2
            assert torch.allclose(half[name], mean, rtol=1e-2, atol=1e-3), name
            assert not torch.equal(half[name], mine[name]), name
    # the VAE and the probe are the base's, and the record holds what both were trained on
    for name, value in base.vae.state_dict().items():
        assert torch.equal(ends[0.5].vae.state_dict()[name], value), name
    for name, value in base.probe.state_dict().items():
        assert torch.equal(ends[0.5].probe.state_dict()[name], value), name
    record = ends[0.5].sampling[TRAINED_KEY]
    assert record["face"][-1] == "a phrasing only the other learned"
    assert trained_phrasings(ends[0.5].sampling) == trained_phrasings(base.sampling) | {
        "a phrasing only the other learned"
    }
    # a blend with a checkpoint that does not say what it was trained on cannot say either
    bare = dict(other.sampling)
    del bare[TRAINED_KEY]
    export_checkpoint(tmp_path / "bare", other.model, other.vae, other.audio, other.probe, bare)
    unsaid = load_checkpoint(
        combine_checkpoints(ckpt, tmp_path / "unsaid", blend_from=tmp_path / "bare")
    )
    assert TRAINED_KEY not in unsaid.sampling
    # a DiT of another latent space is not blended, nor is a weight outside [0, 1]
    with torch.no_grad():
        next(other.vae.encoder.parameters()).add_(0.5)
    export_checkpoint(tmp_path / "elsewhere", other.model, other.vae, other.audio)
    with pytest.raises(ValueError, match=r"another latent space .* \(encoder\.\S+ differs"):
        combine_checkpoints(ckpt, tmp_path / "bad", blend_from=tmp_path / "elsewhere")
    with pytest.raises(ValueError, match=r"blend must lie in \[0, 1\], not 1.5"):
        combine_checkpoints(ckpt, tmp_path / "bad", blend_from=tmp_path / "other", blend=1.5)
    assert not (tmp_path / "bad").exists()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "flowact.renderer.training.export",
            "--base",
            str(ckpt),
            "--blend-from",
            str(tmp_path / "other"),
            "--blend",
            "-0.1",
            "--out",
            str(tmp_path / "bad"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "blend must lie in [0, 1], not -0.1" in done.stderr


def test_a_refit_trains_the_decoder_and_probe_and_keeps_the_rest(main_run, tmp_path):
    data, ckpt, _ = main_run
    cfg = PipelineConfig(
        data=str(data),
        workdir=str(tmp_path / "refit"),
        checkpoint=str(tmp_path / "refit_ckpt"),
        init_from=str(ckpt),
        vae_decoder_seconds=1.0,
        vae_latent_noise=0.2,
        probe_balanced=True,
        **TINY_BUDGETS,
    )
    summary = refit_checkpoint(cfg)
    assert summary["vae_decoder"]["steps"] > 0 and summary["probe"]["steps"] > 0
    assert json.loads((tmp_path / "refit" / "summary.json").read_text())["checkpoint"]
    base, refit = load_checkpoint(ckpt), load_checkpoint(tmp_path / "refit_ckpt")
    assert refit.sampling == base.sampling
    for part in ("model", "audio"):
        for name, value in getattr(base, part).state_dict().items():
            assert torch.equal(getattr(refit, part).state_dict()[name], value), (part, name)
    kept = summary["vae_decoder"]["kept"]
    for name, value in base.vae.state_dict().items():
        same = torch.equal(refit.vae.state_dict()[name], value)
        assert same or (kept and name.startswith("decoder.")), name
    assert any(
        not torch.equal(a, b)
        for a, b in zip(refit.probe.parameters(), base.probe.parameters(), strict=True)
    )
    # a probe that goes on from the checkpoint's: its architecture, its score before and after
    # with the decoder kept, a refit trains the probe on still renders: no speech bank read
    (tmp_path / "no_speech").mkdir()
    again = replace(
        cfg,
        data=str(tmp_path / "no_speech"),
        workdir=str(tmp_path / "again"),
        checkpoint=str(tmp_path / "again_ckpt"),
        vae_decoder_seconds=0.0,
        probe_continue=True,
        probe_width=base.probe.config.width * 2,  # unused: the checkpoint's probe is kept
        probe_identity_weight=3.0,
        probe_decoded_share=0.75,
    )
    went_on = refit_checkpoint(again)
    assert went_on["config"]["probe_identity_weight"] == 3.0
    assert went_on["config"]["probe_decoded_share"] == 0.75
    assert went_on["probe"]["started_from"]["control_corr"].keys() == set(bh.CONTROLS)
    for score in (went_on["probe"], went_on["probe"]["started_from"]):
        assert score["decoded"]["control_corr"].keys() == set(bh.CONTROLS)  # through the VAE
    assert load_checkpoint(again.checkpoint).probe.config == base.probe.config
    assert summary["probe"]["started_from"] is None
    # a checkpoint without a probe is refused before any training
    export_checkpoint(tmp_path / "bare", base.model, base.vae, base.audio, None, base.sampling)
    bare = replace(again, init_from=str(tmp_path / "bare"), workdir=str(tmp_path / "bare_w"))
    with pytest.raises(ValueError, match="holds no probe to go on training"):
        refit_checkpoint(replace(bare, vae_decoder_seconds=1.0))
    assert not (tmp_path / "bare_w" / "vae_decoder").exists()
    with pytest.raises(FileNotFoundError, match="not an exported checkpoint"):
        refit_checkpoint(PipelineConfig(data=str(data), init_from=str(tmp_path / "refit")))


def test_the_refit_command_asks_for_speech_only_when_it_trains_the_decoder(
    main_run, tmp_path, monkeypatch, capsys
):
    _, ckpt, _ = main_run
    empty = tmp_path / "empty"
    empty.mkdir()
    flags = ["--preset", "tiny", "--device", "cpu", "--data", str(empty), "--init-from", str(ckpt)]
    flags += ["--probe-seconds", "1", "--probe-batch", "8", "--probe-continue"]
    out = tmp_path / "probe_only"
    argv = ["pipeline", "refit", *flags, "--workdir", str(tmp_path / "w"), "--checkpoint", str(out)]
    monkeypatch.setattr(sys, "argv", [*argv, "--vae-decoder-seconds", "0"])
    pipeline_main()
    printed = capsys.readouterr().out  # the log lines, then the summary as indented JSON
    assert json.loads(printed[printed.index("\n{\n") :])["probe"]["steps"] > 0
    assert (out / "index.json").is_file()
    monkeypatch.setattr(sys, "argv", [*argv, "--vae-decoder-seconds", "1"])
    with pytest.raises(SystemExit) as exit_:
        pipeline_main()
    assert exit_.value.code == 2
    assert "lacks speech_train.npz" in capsys.readouterr().err


def test_a_run_names_missing_data_before_it_trains(tmp_path):
    data = _data(tmp_path)
    (data / "speech_eval.npz").unlink()
    cfg = PipelineConfig(data=str(data), workdir=str(tmp_path / "w"), **TINY_BUDGETS)
    with pytest.raises(FileNotFoundError, match=r"lacks speech_eval.npz: make it with"):
        run_pipeline(cfg)
    assert not (tmp_path / "w" / "vae").exists()


def test_a_continuation_names_what_is_wrong(main_run, tmp_path):
    data, ckpt, _ = main_run
    with pytest.raises(ValueError, match="init_dit needs init_from"):
        run_pipeline(PipelineConfig(data=str(data), workdir=str(tmp_path / "a"), init_dit=True))
    share = PipelineConfig(data=str(data), workdir=str(tmp_path / "s"), probe_decoded_share=2.0)
    with pytest.raises(ValueError, match=r"probe_decoded_share must be within \[0, 1\], not 2.0"):
        run_pipeline(share)
    assert not (tmp_path / "s" / "vae").exists()  # refused before the VAE stage
    for name in ("vae_mouth_gain", "vae_eye_gain"):
        for gain in (0.0, float("nan")):
            bad = PipelineConfig(data=str(data), workdir=str(tmp_path / "m"), **{name: gain})
            with pytest.raises(ValueError, match=f"{name} must be a finite number > 0, not {gain}"):
                run_pipeline(bad)
    other = PipelineConfig(
        data=str(data),
        workdir=str(tmp_path / "b"),
        init_from=str(ckpt),
        init_dit=True,
        **{**TINY_BUDGETS, "preset": "demo"},
    )
    with pytest.raises(ValueError, match="holds a 'tiny' DiT; this run trains 'demo'"):
        run_pipeline(other)
