"""The whole curriculum as one resumable run: data -> VAE (-> its decoder alone) -> probe ->
latents -> stage 1 -> stage 2 -> stage 3 -> checkpoint -> evaluation.

Every stage has a wall-clock budget and saves its state under `workdir`; `run_pipeline` skips
what is done and continues what is not, and stops cleanly at `deadline` seconds, so the run can
be cut into pieces of a few minutes (one `python -m flowact.renderer.training.pipeline ...`
each). `prepare_data` makes the inputs that need tools the GPU machine may lack: the espeak-ng
speech banks (training sentences, held-out evaluation sentences) and the prompt embedding table.
`refit` (`refit.refit_checkpoint`) trains anew what an exported checkpoint's latent space does
not depend on, its VAE decoder and its probe, and writes the checkpoint with them; the
curriculum's decoder and probe stages are the same code (`refit.decoder_stage`,
`refit.probe_stage`).

`prepare-footage` makes a data folder of real video instead (`footage.prepare_footage`); a run
on it trains the VAE (and its decoder), the latents and stages 1-3 on that footage
(`footage.FootageClips`), and skips the probe and the evaluation, the synthetic world's
instruments, which read a ground truth that footage does not have (`FOOTAGE_SKIPS`).

    python -m flowact.renderer.training.pipeline prepare --data .train_data --preset demo
    python -m flowact.renderer.training.pipeline run --preset demo --data .train_data \
        --workdir out/train --checkpoint checkpoints/demo --deadline 560
    python -m flowact.renderer.training.pipeline refit --init-from checkpoints/demo \
        --workdir out/refit --checkpoint out/refit_ckpt --vae-decoder-seconds 480 \
        --vae-face-gain 3 --vae-latent-noise 0.2 --probe-seconds 240
    python -m flowact.renderer.training.pipeline prepare-footage --videos VIDEOS \
        --data .footage --preset demo
    python -m flowact.renderer.training.pipeline run --preset demo --data .footage \
        --workdir out/footage --checkpoint out/footage_ckpt
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import structlog
import torch

from flowact.renderer.anchors import SPEC_KEY, anchor_spec
from flowact.renderer.engine import AUDIO_PRESET, audio_encoder_for
from flowact.renderer.media import encode_png
from flowact.renderer.model import FlowActMMDiT, count_parameters
from flowact.renderer.presets import get_preset
from flowact.renderer.training import behaviors as bh
from flowact.renderer.training import data as data_mod
from flowact.renderer.training import footage, speech
from flowact.renderer.training.base import ClipSource
from flowact.renderer.training.behavior_readout import BehaviorHeadConfig, behavior_head
from flowact.renderer.training.common import EMA, pick_device
from flowact.renderer.training.distill import DistillConfig, train_distill
from flowact.renderer.training.dmd import DMDConfig, train_dmd
from flowact.renderer.training.evaluate import EvalConfig, run_eval
from flowact.renderer.training.export import (
    TRAINED_KEY,
    Bundle,
    export_checkpoint,
    load_checkpoint,
    phrasings_record,
)
from flowact.renderer.training.refit import (
    NO_PROBE_ON_FOOTAGE,
    decoder_stage,
    probe_stage,
    refit_checkpoint,
    vae_config,
)
from flowact.renderer.training.train import DiffusionConfig, train_diffusion
from flowact.renderer.training.vae_train import heldout_report, readout_report, train_vae
from flowact.renderer.training.workdir import (
    DATA_FILES,
    check_config,
    clip_source,
    open_summary,
    probe_to_continue,
    seed_workdir,
    take_data,
)
from flowact.renderer.weights import read_sampling

log = structlog.get_logger(__name__)

# what a run on footage leaves out, and why (its summary's "skipped")
FOOTAGE_SKIPS = {
    "probe": NO_PROBE_ON_FOOTAGE,
    "eval": "the evaluation measures streams of the world's unseen characters against their "
    "ground truth; footage has none, and a checkpoint without a probe has no instrument",
}


@dataclass(frozen=True)
class PipelineConfig:
    preset: str = "demo"
    data: str = ".train_data"
    workdir: str = "out/train"
    checkpoint: str = "checkpoints/demo"
    deadline: float = math.inf  # seconds this piece may run
    seed: int = 0
    # wall-clock budgets per stage (seconds)
    vae_seconds: float = 240.0
    vae_decoder_seconds: float = 0.0  # then the decoder alone, encoder frozen; 0 = skip
    probe_seconds: float = 90.0
    stage1_seconds: float = 150.0
    stage2_seconds: float = 450.0
    stage3_seconds: float = 180.0  # 0 = no distillation: evaluate the teacher only
    dmd_seconds: float = 0.0  # DMD on streaming rollouts after step distillation; 0 = skip
    # sizes
    vae_chunks: int = 0  # chunks per VAE training clip; 0 = enough to outlast the VAE's reach
    vae_batch: int = 2  # clips of the VAE's reach: 133 frames each for `small`
    vae_face_gain: float = 1.0  # the VAE's reconstruction loss weight over the face region
    vae_mouth_gain: float = 1.0  # and over the mouth's, against the face's (VAETrainConfig)
    vae_eye_gain: float = 1.0  # and over the eyes' band, against the face's
    # the latent control readout's weight in the VAE's loss (VAETrainConfig.control_weight)
    vae_control_weight: float = 0.0
    # each control's share of that term, "NAME=GAIN,..." (VAETrainConfig.control_gains); "" = 1
    vae_control_gains: str = ""
    # the readout also asks for the mouth's motion inside each latent, with this gain for each
    # frame (VAETrainConfig.mouth_frames); 0 = not asked
    vae_mouth_frames: float = 0.0
    vae_decoder_lr: float = 2e-4
    vae_latent_noise: float = 0.0  # the decoder stage's input-latent noise (VAETrainConfig)
    probe_batch: int = 128
    probe_width: int = 24
    probe_lr: float = 2e-3
    probe_balanced: bool = False  # ProbeTrainConfig.balanced: each control over its spread
    # ProbeTrainConfig.identity_weight; balanced scales the controls' error by about 6.7
    probe_identity_weight: float = 0.5
    probe_decoded_share: float = 0.5  # ProbeTrainConfig.decoded_share: through the VAE
    # go on training the checkpoint's probe rather than a new one (`probe_width` unused): in a
    # refit, or in a run from init_from with vae_continue, whose new latent space the probe then
    # learns to read through (without vae_continue a run keeps the checkpoint's probe)
    probe_continue: bool = False
    latent_clips: int = 768
    clip_chunks: int = 20
    batch: int = 64
    distill_batch: int = 32
    dmd_batch: int = 16
    teacher_micro_steps: int = 4
    # the teacher's CFG scale: the target stage 3 folds in for a student given no scale, and
    # DMD's real score
    guidance: float = 2.0
    # the CFG scale written into the checkpoint's sampling.json and used by the run's own
    # evaluations; None = `guidance`. The student learns scales 1-3 (DistillConfig); the eighth
    # checkpoint is sampled at 2.5 (the model card, "Guidance 2.5")
    sample_guidance: float | None = None
    # the curriculum's choices, flags so that ablations are runs of the same pipeline
    staggered_prob: float = 0.7  # 0 = plain diffusion forcing (independent chunk levels)
    gen_memory_prob: float = 0.25  # 0 = no generated-GT latents in the memory slots
    refine_every: int = 8
    # the behavior readout term of stages 1-2 (DiffusionConfig.behavior_weight), and how long
    # its head trains on the latents first (behavior_readout.py); 0 = no term
    behavior_weight: float = 0.0
    behavior_head_seconds: float = 60.0
    # training phrasings mixed in embedding space in stages 1-3 (prompt_mix.PromptMix): the
    # chance per phrasing and buffer; 0 = none
    prompt_mix: float = 0.0
    # prompt anchoring in the checkpoint's sampling.json (`flowact.renderer.anchors`): the
    # world's training phrasings at this temperature; None = none
    anchor_temperature: float | None = None
    compile: bool = False  # torch.compile the DiT blocks in stages 1-3 (fuses elementwise work)
    eval_seconds: float = 600.0
    eval_identities: int = 4
    teacher_eval_seconds: float = 120.0
    device: str | None = None
    # an exported checkpoint whose VAE and probe a new workdir starts from, or another run's
    # workdir whose VAE, probe and latents it takes (ablations share the latent space and the
    # instrument of the run they are compared with); empty = train them
    init_from: str = ""
    # with init_from: its DiT and audio encoder too, in place of stage 1 (stage 2 goes on from
    # them), so that DiT training adds up over runs on machines that do not last
    init_dit: bool = False
    # with init_from a checkpoint: go on training its VAE, encoder and decoder, for
    # `vae_seconds` (a warm start of a new latent space: the latents are made anew in it, and an
    # init_dit DiT adapts to it in stage 2); without it the VAE is kept as it is
    vae_continue: bool = False
    # end the run once the latents are made, before any DiT trains on them: a gate reads the new
    # latent space (a run seeded from this workdir exports it), and the same command without
    # this flag goes on from stage 1
    stop_after_latents: bool = False


def sampling_guidance(cfg: PipelineConfig) -> float:
    """The CFG scale a run's checkpoint is sampled at: `sample_guidance`, else `guidance`."""
    return cfg.guidance if cfg.sample_guidance is None else cfg.sample_guidance


def prepare_data(out: str | Path, preset: str = "demo", train_sentences: int = 160) -> None:
    """Speech banks (espeak-ng) and the prompt-embedding table of `preset`'s text encoder."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train = speech.training_sentences(train_sentences)
    held = set(speech.EVAL_SENTENCES)
    assert not held & set(train), "an evaluation sentence leaked into training"
    speech.save_bank(out / "speech_train.npz", speech.speech_bank(train, seed=1))
    speech.save_bank(out / "speech_eval.npz", speech.speech_bank(list(speech.EVAL_SENTENCES), 2))
    from flowact.renderer.engine import build_text_encoder

    table = build_text_encoder("auto", preset).encode(bh.prompt_table()[0])
    torch.save(table, out / "text_table.pt")
    log.info("data_prepared", out=str(out), train=len(train), prompts=table.shape[0])


def run_pipeline(cfg: PipelineConfig) -> dict:
    """Run (or continue) every stage; returns a summary written to `workdir/summary.json`."""
    check_config(cfg)
    start = time.monotonic()
    device = pick_device(cfg.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    work, data_dir = Path(cfg.workdir), Path(cfg.data)
    work.mkdir(parents=True, exist_ok=True)
    summary, save_summary = open_summary(work, cfg)
    table = torch.load(data_dir / "text_table.pt", map_location="cpu").to(device)
    size = (get_preset(cfg.preset).height, get_preset(cfg.preset).width)
    source = clip_source(data_dir, size)
    trained = trained_record(cfg, source)
    eval_bank = take_data(data_dir, work) if source.ground_truth else None
    if not source.ground_truth:
        summary["footage"] = footage.footage_summary(data_dir)
        summary["skipped"] = FOOTAGE_SKIPS
        log.info("footage_run", skipped=FOOTAGE_SKIPS)
    if cfg.init_from:
        seed_workdir(work, cfg)

    def left() -> float:
        return max(0.0, cfg.deadline - (time.monotonic() - start))

    # VAE
    vae_cfg = vae_config(cfg, size)
    vae, vae_state = train_vae(vae_cfg, work, device, source, piece_seconds=left())
    vae.requires_grad_(False)
    # the reports of a finished VAE stage, made once and kept by the summary over later pieces
    heldout = summary.get("vae", {}).get("heldout")
    readout = summary.get("vae", {}).get("readout")
    vae_done = vae_state.seconds >= cfg.vae_seconds - 1
    summary["vae"] = {
        "steps": vae_state.step,
        "seconds": vae_state.seconds,
        "loss": float(np.mean(vae_state.losses[-50:])) if vae_state.losses else None,
    }
    if cfg.vae_continue and vae_done:
        # the new latent space against the checkpoint's, on the same unseen clips
        if heldout is None:
            base = load_checkpoint(cfg.init_from, device).vae.float()
            heldout = asdict(heldout_report(base, vae, vae_cfg, source, device))
            log.info("vae_continued_heldout", **heldout)
        summary["vae"]["heldout"] = heldout
    if "head" in vae_state.modules and vae_done:
        # what the latents carry of each control on unseen characters, read by the head
        if readout is None:
            head = vae_state.modules["head"]
            readout = readout_report(vae, head, vae_cfg, source, device)
            log.info("vae_control_readout", **readout)
        summary["vae"]["readout"] = readout
    if cfg.vae_decoder_seconds > 0:
        # sharper frames from the same latent space: a DiT from init_from keeps its latents
        vae = decoder_stage(cfg, vae_cfg, vae, work, device, source, left(), summary)

    # probe: half of each batch through the VAE, so it reads decoded frames too (a new one, the
    # checkpoint's kept, or the checkpoint's gone on with on a new latent space)
    probe = None
    if source.ground_truth:
        seconds = min(left(), cfg.probe_seconds)
        first = probe_to_continue(work, cfg, device)
        probe = probe_stage(cfg, work, device, vae, size, seconds, summary, first)

    # latents
    latents_path = work / "latents.pt"
    if latents_path.is_file():
        latents = data_mod.LatentSet(**torch.load(latents_path, map_location=device))
    else:
        t0 = time.monotonic()
        rng = np.random.default_rng(cfg.seed + 7)
        latents = data_mod.build_latent_set(
            vae, source, cfg.latent_clips, cfg.clip_chunks, rng, device
        )
        torch.save(vars(latents), latents_path)
        summary["latents"] = {"clips": len(latents), "seconds": time.monotonic() - t0}
    save_summary()
    if cfg.stop_after_latents:
        log.info("stopped_after_latents", workdir=str(work), clips=len(latents))
        return summary

    # stage 1 and 2
    config = get_preset(cfg.preset)
    head = None
    if cfg.behavior_weight > 0:
        hcfg = BehaviorHeadConfig(seconds=cfg.behavior_head_seconds, seed=cfg.seed)
        head, report = behavior_head(hcfg, latents, config.latents_per_chunk, work)
        summary["behavior_head"] = report or summary.get("behavior_head")
    torch.manual_seed(cfg.seed)
    model = FlowActMMDiT(config).to(device)
    model.set_attention_backend("split")
    encoder = audio_encoder_for(config, AUDIO_PRESET[cfg.preset]).to(device)
    summary["dit_parameters"] = count_parameters(model)
    ema = EMA(model, 0.999)
    s1 = DiffusionConfig(
        "stage1",
        audio=False,
        batch=cfg.batch,
        steps=100_000,
        seconds=cfg.stage1_seconds,
        seed=cfg.seed,
        staggered_prob=cfg.staggered_prob,
        gen_memory_prob=cfg.gen_memory_prob,
        behavior_weight=cfg.behavior_weight,
        prompt_mix=cfg.prompt_mix,
        compile=cfg.compile,
    )
    stage = partial(train_diffusion, head=head)
    st1 = stage(s1, model, encoder, latents, table, work, ema, piece_seconds=left())
    summary["stage1"] = st1.summary()
    # stage 2 starts from stage 1's model, encoder and EMA (the objects stage 1 left)
    s2 = replace(s1, name="stage2", audio=True, seconds=cfg.stage2_seconds, gen_memory_after=0)
    st2 = stage(s2, model, encoder, latents, table, work, ema, piece_seconds=left())
    summary["stage2"] = st2.summary()
    save_summary()

    # stage 3; without it (an ablation of stages 1-2) only the teacher is evaluated
    teacher = ema.model
    teacher.set_attention_backend("split")
    if cfg.stage3_seconds <= 0:
        if source.ground_truth:
            summary["eval"] = _evaluate(
                cfg, None, teacher, vae, encoder, probe, table, work, eval_bank, trained
            )
        save_summary()
        return summary
    d = DistillConfig(
        batch=cfg.distill_batch,
        steps=100_000,
        seconds=cfg.stage3_seconds,
        teacher_micro_steps=cfg.teacher_micro_steps,
        default_guidance=cfg.guidance,
        gen_memory_prob=cfg.gen_memory_prob,
        prompt_mix=cfg.prompt_mix,
        compile=cfg.compile,
    )
    student, student_ema, st3 = train_distill(
        d, teacher, encoder, latents, table, work, piece_seconds=left()
    )
    summary["stage3"] = st3.summary()

    sampling = {
        "micro_steps": 1,
        "guidance": sampling_guidance(cfg),
        "shift": d.shift,
        "refine_every": cfg.refine_every,
        "text_encoder": "auto",
    }
    sampling[TRAINED_KEY] = trained
    if cfg.anchor_temperature is not None:
        sampling[SPEC_KEY] = anchor_spec(source.training_phrasings(), cfg.anchor_temperature)
    final = student_ema.model
    before_dmd = None
    done = st3.seconds >= d.seconds - 1
    if cfg.dmd_seconds > 0 and done:
        dmd = DMDConfig(
            batch=cfg.dmd_batch,
            steps=100_000,
            seconds=cfg.dmd_seconds,
            seed=cfg.seed,
            shift=d.shift,
            guidance=cfg.guidance,
        )
        _, dmd_ema, st_dmd = train_dmd(
            dmd, final, teacher, encoder, latents, table, work, piece_seconds=left()
        )
        summary["stage3_dmd"] = st_dmd.summary()
        before_dmd, final = final, dmd_ema.model
        done = st_dmd.seconds >= dmd.seconds - 1
        # the step-distilled student too, so that what DMD did can be measured and either shipped
        summary["checkpoint_before_dmd"] = before_dmd_path(cfg.checkpoint)
        export_checkpoint(
            summary["checkpoint_before_dmd"], before_dmd, vae, encoder, probe, sampling
        )
    out = export_checkpoint(cfg.checkpoint, final, vae, encoder, probe, sampling)
    if not source.ground_truth:
        _write_reference(out, data_dir)
    summary["checkpoint"] = cfg.checkpoint
    save_summary()
    # evaluation runs once distillation is complete, whatever is left of this piece's deadline
    if done and source.ground_truth:
        summary["eval"] = _evaluate(
            cfg, final, teacher, vae, encoder, probe, table, work, eval_bank, trained, before_dmd
        )
    save_summary()
    return summary


def _write_reference(checkpoint: Path, data: Path) -> None:
    """Give a checkpoint trained on footage the reference frame of a held-out video (of a
    training one if none is held out) as `reference.png`, an image to start a session from."""
    try:
        clips = footage.FootageClips(data, "eval")
    except ValueError:
        clips = footage.FootageClips(data)
    (checkpoint / "reference.png").write_bytes(encode_png(clips.reference_image()))


def before_dmd_path(checkpoint: str) -> str:
    """Where a run with DMD exports its step-distilled student, beside `checkpoint`."""
    return f"{checkpoint.rstrip('/')}_before_dmd"


def trained_record(cfg: PipelineConfig, source: ClipSource) -> dict[str, list[str]]:
    """The phrasings this run's DiT is trained on (`export.TRAINED_KEY`): the clip source's,
    and those a DiT from `init_from` had learned before."""
    earlier = read_sampling(cfg.init_from).get(TRAINED_KEY) if cfg.init_dit else None
    return phrasings_record(source.training_phrasings(), earlier)


def _evaluate(
    cfg, student, teacher, vae, encoder, probe, table, work, eval_bank, trained, before_dmd=None
) -> dict:
    """The distilled student with and without memory refinement, the step-distilled student
    before DMD where DMD ran (with refinement), and the teacher; `student` None evaluates the
    teacher alone. A run given 0 seconds (`eval_seconds`, `teacher_eval_seconds`) is left out.
    Each is read as its checkpoint will be, with the record of what it was `trained` on."""
    results = {}
    base = EvalConfig(
        seconds=cfg.eval_seconds,
        identities=cfg.eval_identities,
        speech_bank=str(eval_bank),
    )
    teacher_cfg = replace(
        base,
        seconds=cfg.teacher_eval_seconds,
        micro_steps=cfg.teacher_micro_steps,
        refine_every=0,
    )
    runs = {"teacher_12nfe_no_cfg": (teacher, teacher_cfg, {})}
    if student is not None:
        guided = {"guidance": sampling_guidance(cfg)}
        refined = replace(base, refine_every=cfg.refine_every)
        runs = {
            "distilled_3nfe_refine": (student, refined, guided),
            "distilled_3nfe_no_refine": (student, replace(base, refine_every=0), guided),
            **runs,
        }
        if before_dmd is not None:
            runs["distilled_3nfe_before_dmd_refine"] = (before_dmd, refined, guided)
    for name, (model, ecfg, sampling) in runs.items():
        if ecfg.seconds <= 0:
            continue
        t0 = time.monotonic()
        read_as = {"shift": 3.0, TRAINED_KEY: trained, **sampling}
        bundle = Bundle(model.config, model, vae, encoder, probe, read_as)
        report = run_eval(bundle, work / "eval" / name, ecfg, probe, text_table=table)
        results[name] = {
            "overall": report.overall,
            "bins": report.bins,
            "seconds": time.monotonic() - t0,
        }
    return results


# fields given as text: names and paths
_TEXT_FIELDS = ("preset", "data", "workdir", "checkpoint", "device", "init_from")


def _field_kind(name: str, default: object) -> type:
    """The type a `PipelineConfig` field's value is given in on the command line."""
    if name in _TEXT_FIELDS:
        return str
    return float if default is None or isinstance(default, float) else type(default)


def parse_setting(text: str) -> tuple[str, object]:
    """`FIELD=VALUE` -> the `PipelineConfig` field (dashes or underscores) and its value in the
    field's type; raises `ValueError` naming what is wrong."""
    name, sep, raw = text.partition("=")
    name = name.strip().replace("-", "_")
    defaults = asdict(PipelineConfig())
    if not sep or not name:
        raise ValueError(f"{text!r} is not FIELD=VALUE")
    if name not in defaults:
        raise ValueError(f"{name!r} is not a setting of the pipeline; it has {', '.join(defaults)}")
    kind, raw = _field_kind(name, defaults[name]), raw.strip()
    if kind is bool:
        if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"{name} is true or false, not {raw!r}")
        return name, raw.lower() in ("true", "1", "yes")
    try:
        return name, kind(raw)
    except ValueError:
        raise ValueError(f"{name} takes {kind.__name__}, not {raw!r}") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    prep = sub.add_parser("prepare")
    prep.add_argument("--data", default=".train_data")
    prep.add_argument("--preset", default="demo")
    prep_footage = sub.add_parser(
        "prepare-footage", help="a folder of videos with sidecar annotations as training data"
    )
    prep_footage.add_argument("--videos", required=True, help="folder of videos and sidecars")
    prep_footage.add_argument("--data", required=True, help="folder to write the data to")
    prep_footage.add_argument("--preset", default="demo", help="preset whose frame size")
    run = sub.add_parser("run")
    refit = sub.add_parser(
        "refit", help="a checkpoint's VAE decoder and probe trained anew (see refit_checkpoint)"
    )
    for name, value in asdict(PipelineConfig()).items():
        flag = f"--{name.replace('_', '-')}"
        for command in (run, refit):
            if isinstance(value, bool):
                command.add_argument(flag, action=argparse.BooleanOptionalAction, default=value)
                continue
            command.add_argument(flag, type=_field_kind(name, value), default=value)
    args = parser.parse_args()
    if args.cmd == "prepare":
        prepare_data(args.data, args.preset)
        return
    if args.cmd == "prepare-footage":
        try:
            footage.prepare_footage(args.videos, args.data, args.preset)
        except (FileNotFoundError, ValueError) as err:
            prep_footage.error(str(err))
        return
    config = PipelineConfig(**{k: getattr(args, k) for k in asdict(PipelineConfig())})
    command = run if args.cmd == "run" else refit
    needs = DATA_FILES
    if args.cmd == "refit":
        # the decoder trains on speaking clips; a probe alone trains on still renders
        needs = ("speech_train.npz",) if config.vae_decoder_seconds > 0 else ()
    try:
        check_config(config, needs)
        if args.cmd == "refit" and not config.init_from:
            raise ValueError("refit needs --init-from: the checkpoint whose decoder and probe")
    except (FileNotFoundError, ValueError) as err:
        command.error(str(err))  # exits 2 with the usage line, as argparse does
    work = run_pipeline if args.cmd == "run" else refit_checkpoint
    print(json.dumps(work(config), indent=1, default=str))  # noqa: T201


if __name__ == "__main__":
    main()
