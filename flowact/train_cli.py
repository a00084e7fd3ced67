"""The `flowact train`, `flowact eval` and `flowact compare` commands: the renderer's training
pipeline, its evaluation, and evaluation reports side by side."""

from __future__ import annotations

import json
import os
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from flowact.options import AutoDeviceOption


class Phrasing(str, Enum):
    """Which phrasings of the behavior prompts an evaluation gives."""

    heldout = "heldout"
    train = "train"


train_app = typer.Typer(
    help="Train a renderer in the synthetic avatar world, or on your own footage.",
    no_args_is_help=True,
)


@train_app.command("prepare")
def train_prepare(
    data: Annotated[Path, typer.Option(help="Folder for the training data.")] = Path(".train_data"),
    preset: Annotated[str, typer.Option(help="Renderer preset to train.")] = "demo",
) -> None:
    """Render the synthetic world's clips and speech for training (CPU; needs espeak-ng)."""
    from flowact.renderer.training.pipeline import prepare_data

    prepare_data(data, preset)


@train_app.command("prepare-footage")
def train_prepare_footage(
    videos: Annotated[Path, typer.Option(help="Folder of videos, each with <stem>.json.")],
    data: Annotated[Path, typer.Option(help="Folder for the training data.")],
    preset: Annotated[str, typer.Option(help="Renderer preset to train.")] = "demo",
) -> None:
    """Decode real videos with sound and their prompt annotations into training data (see
    docs/training.md, "Training on your own footage")."""
    from flowact.renderer.training.footage import prepare_footage

    try:
        prepare_footage(videos, data, preset)
    except (FileNotFoundError, ValueError) as err:
        raise typer.BadParameter(str(err)) from None


@train_app.command("run")
def train_run(
    preset: Annotated[str, typer.Option(help="Renderer preset to train.")] = "demo",
    data: Annotated[
        Path, typer.Option(help="Folder made by `flowact train prepare` or `prepare-footage`.")
    ] = Path(".train_data"),
    workdir: Annotated[Path, typer.Option(help="Resumable state of the run.")] = Path("out/train"),
    checkpoint: Annotated[Path, typer.Option(help="Where the checkpoint is exported.")] = Path(
        "out/checkpoint"
    ),
    deadline: Annotated[
        float, typer.Option(help="Seconds this piece may run; run again to go on.")
    ] = float("inf"),
    init_from: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="A checkpoint or another run's workdir to take the VAE and probe from."),
    ] = None,
    init_dit: Annotated[
        bool, typer.Option(help="With --init-from CHECKPOINT: go on training its DiT too.")
    ] = False,
    vae_continue: Annotated[
        bool,
        typer.Option(
            help="With --init-from CHECKPOINT: go on training its VAE (a new latent space)."
        ),
    ] = False,
    compile_dit: Annotated[
        bool, typer.Option("--compile", help="torch.compile the DiT blocks (stages 1-3).")
    ] = False,
    settings: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option(
            "--set",
            metavar="FIELD=VALUE",
            help="Any other setting of the curriculum, e.g. stage2_seconds=480 or "
            "prompt_mix=0.5 (the fields of `python -m flowact.renderer.training.pipeline run "
            "--help`); repeat for more.",
        ),
    ] = None,
    device: AutoDeviceOption = None,
) -> None:
    """VAE, probe, stages 1-3 and evaluation (on footage: no probe, no evaluation); resumes
    from `--workdir`."""
    from flowact.renderer.training.pipeline import PipelineConfig, parse_setting, run_pipeline
    from flowact.renderer.training.workdir import check_config

    named = {"preset", "data", "workdir", "checkpoint", "deadline", "device", "init_from"}
    named |= {"init_dit", "vae_continue", "compile"}
    overrides = {}
    for text in settings or []:
        try:
            name, value = parse_setting(text)
        except ValueError as err:
            raise typer.BadParameter(str(err), param_hint="--set") from None
        if name in named:
            flag = "--" + name.replace("_", "-")
            raise typer.BadParameter(f"{name} has its own option: {flag}", param_hint="--set")
        overrides[name] = value
    config = PipelineConfig(
        preset=preset,
        data=str(data),
        workdir=str(workdir),
        checkpoint=str(checkpoint),
        deadline=deadline,
        device=device,
        init_from=str(init_from) if init_from else "",
        init_dit=init_dit,
        vae_continue=vae_continue,
        compile=compile_dit,
        **overrides,
    )
    try:
        check_config(config)
    except (FileNotFoundError, ValueError) as err:
        raise typer.BadParameter(str(err)) from None
    typer.echo(json.dumps(run_pipeline(config), indent=1, default=str))


def evaluate(
    checkpoint: Annotated[Path, typer.Option(help="Checkpoint directory.")] = Path(
        "checkpoints/demo"
    ),
    out: Annotated[Path, typer.Option(help="Folder for the table and plots.")] = Path("out/eval"),
    seconds: Annotated[float, typer.Option(help="Stream length per identity.")] = 300.0,
    identities: Annotated[int, typer.Option(help="Unseen identities.")] = 4,
    seed: Annotated[
        int,
        typer.Option(
            help="Stream seed: which unseen characters, speech and prompts (compare two models "
            "over two or more).",
            min=0,
        ),
    ] = 0,
    vae_seconds: Annotated[
        float, typer.Option(help="Ground truth through the VAE for this long (0: skip).")
    ] = 20.0,
    speech_bank: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="Held-out speech from `flowact train prepare` (default: espeak-ng now)."),
    ] = None,
    guidance: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option(help="CFG scale of the prompts (default: the checkpoint's sampling.json)."),
    ] = None,
    text_table: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            help="Prompt embeddings from `flowact train prepare` (text_table.pt), where the "
            "preset's text encoder is not installed (default: encode with it now).",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    prompts: Annotated[
        Phrasing,
        typer.Option(
            help="Phrasings of the behavior prompts: heldout (never trained on; the targets are "
            "figures of these) or train (the same behaviors at the same times, in phrasings the "
            "checkpoint's sampling.json says it was trained on).",
        ),
    ] = Phrasing.heldout,
    anchors: Annotated[
        bool,
        typer.Option(help="Give prompts through the checkpoint's prompt anchors, if it has them."),
    ] = True,
    anchor_temperature: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option(
            help="Anchor prompts at this temperature (0: the nearest trained phrasing), over the "
            "phrasings the checkpoint was trained on where it names no anchors (the world's "
            "training phrasings where it names neither).",
            min=0.0,
        ),
    ] = None,
    probe_from: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="Read the frames with this checkpoint's probe (default: its own)."),
    ] = None,
    also_probe_from: Annotated[
        Optional[list[Path]],  # noqa: UP045
        typer.Option(
            help="Read the same frames with this checkpoint's probe too; its report goes to "
            "OUT/probe-NAME. Repeat for more.",
        ),
    ] = None,
    device: AutoDeviceOption = None,
) -> None:
    """Lip-sync, behavior accuracy, identity drift and smoothness of a checkpoint, with plots."""
    from flowact.renderer.training.common import pick_device
    from flowact.renderer.training.evaluate import EvalConfig, also_dir, run_eval
    from flowact.renderer.training.export import load_checkpoint
    from flowact.renderer.weights import read_index

    torch_device = pick_device(device)
    where = str(torch_device)
    if torch_device.type == "cpu":
        # oneDNN keeps a kernel for each shape it meets, and over a long stream that cache grew
        # a reading to 12 GB; without it a reading stays near 1 GB at the same speed
        # (docs/training.md). Read when oneDNN makes its first kernel, which is still to come.
        os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "0")

    config = EvalConfig(
        seconds=seconds,
        identities=identities,
        seed=seed,
        vae_seconds=vae_seconds,
        speech_bank=str(speech_bank) if speech_bank else None,
        guidance=guidance,
        text_table=str(text_table) if text_table else None,
        prompts=prompts.value,
        anchors=anchors,
        anchor_temperature=anchor_temperature,
        probe=str(probe_from) if probe_from is not None else None,
    )

    def probe_of(source: Path, hint: str):
        probe = load_checkpoint(source, where).probe
        if probe is None:
            raise typer.BadParameter(f"{source} holds no probe", param_hint=hint)
        return probe

    probe = None
    if probe_from is not None:
        probe = probe_of(probe_from, "--probe-from")
    elif "probe" not in read_index(checkpoint)["parts"]:
        raise typer.BadParameter(
            f"{checkpoint} holds no probe: name a checkpoint that does with --probe-from",
            param_hint="--checkpoint",
        )
    also = {str(p): probe_of(p, "--also-probe-from") for p in also_probe_from or []}
    try:
        report = run_eval(checkpoint, out, config, probe, device=where, also=also)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    typer.echo(report.table())
    typer.echo(f"plots and report in {out}")
    for source in also:
        typer.echo(f"read by the probe of {source} too: report in {also_dir(out, source)}")


def compare(
    runs: Annotated[
        list[str],
        typer.Argument(help="NAME=DIR pairs: a label and a folder that `flowact eval` wrote."),
    ],
    out: Annotated[Path, typer.Option(help="PNG of the metric over stream time.")] = Path(
        "out/compare.png"
    ),
    metric: Annotated[
        str, typer.Option(help="lipsync, behavior, identity_drift, control_jitter or seam_ratio.")
    ] = "identity_drift",
    channels: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="Also a PNG of behavior accuracy per channel, run by run."),
    ] = None,
    features: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            help="Also a PNG of where each run's generated windows held the features each "
            "commanded behavior sets, beside the prototypes and the first run's ground truth."
        ),
    ] = None,
    through_vae: Annotated[
        bool,
        typer.Option(
            help="Draw --channels from ground truth through each run's VAE (`flowact eval "
            "--vae-seconds`), the ceiling of its latent space, not from its generated frames."
        ),
    ] = False,
    phrasings: Annotated[
        bool,
        typer.Option(
            help="Also a table of how often each phrasing of each command was followed, run by "
            "run, beside the first run's ground truth."
        ),
    ] = False,
) -> None:
    """Evaluation reports of several runs side by side: a table and one plot over stream time."""
    from flowact.renderer.training.report import (
        EvalReport,
        compare_table,
        phrasing_table,
        plot_channels,
        plot_comparison,
        plot_feature_levels,
    )

    reports = {}
    for run in runs:
        name, sep, folder = run.partition("=")
        if not sep or not name or not folder:
            raise typer.BadParameter(f"{run!r} is not NAME=DIR", param_hint="RUNS")
        try:
            reports[name] = EvalReport.load(folder)
        except FileNotFoundError as err:
            raise typer.BadParameter(str(err), param_hint="RUNS") from None
    missing = [name for name, r in reports.items() if metric not in r.bins]
    if missing:
        raise typer.BadParameter(f"no {metric!r} in {', '.join(missing)}", param_hint="--metric")
    if through_vae and channels is None:
        raise typer.BadParameter("needs --channels, the PNG it draws", param_hint="--through-vae")
    if features is not None:
        if {"prototype", "ground truth"} & set(reports):
            raise typer.BadParameter(
                "'prototype' and 'ground truth' name the plot's own series; rename the run",
                param_hint="RUNS",
            )
        lacking = [name for name, r in reports.items() if not r.behavior_features]
        if lacking:
            raise typer.BadParameter(
                f"no behavior_features in {', '.join(lacking)} (written before they were measured)",
                param_hint="--features",
            )
    by_phrasing = None
    if phrasings:
        try:
            by_phrasing = phrasing_table(reports)
        except ValueError as err:
            raise typer.BadParameter(str(err), param_hint="--phrasings") from None
    typer.echo(compare_table(reports))
    typer.echo(f"plot in {plot_comparison(reports, metric, out)}")
    if channels is not None:
        try:
            typer.echo(f"channels in {plot_channels(reports, channels, through_vae)}")
        except ValueError as err:
            raise typer.BadParameter(str(err), param_hint="--channels") from None
    if features is not None:
        first = next(iter(reports.values())).behavior_features
        series = {"prototype": first["prototype"], "ground truth": first["ground_truth"]}
        series |= {name: r.behavior_features["generated"] for name, r in reports.items()}
        typer.echo(f"features in {plot_feature_levels(series, features)}")
    if by_phrasing is not None:
        typer.echo(by_phrasing)
