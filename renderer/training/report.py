"""An evaluation's report (`EvalReport`: `report.json`, the table of `report.md`) and its
pictures: each metric over stream time, the behavior confusion, the film strip, and several
runs side by side (`compare_table`, `plot_comparison`, what `flowact compare` prints and draws).
`evaluate.py` measures; this module holds and shows what it measured."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import structlog

from flowact.renderer.training import behaviors as bh

log = structlog.get_logger(__name__)


@dataclass
class EvalReport:
    overall: dict[str, dict[str, float]]  # metric -> {"generated", "ground_truth"}
    bins: dict[str, dict[str, list[float]]]  # metric -> {"generated", "ground_truth"} per bin
    bin_seconds: float
    config: dict
    # ground truth through the VAE over the stream's first seconds: metric -> value, and
    # "psnr_by_second" (a VAE that decays as a stream goes on shows here first), and
    # "behavior_channels" (channel -> accuracy), and "lipsync_bands" ({"vae", "ground_truth"}
    # -> `evaluate.lipsync_bands`; absent in reports written before it was measured)
    vae: dict = field(default_factory=dict)
    # behavior accuracy of each prompt channel over the whole stream: channel ->
    # {"generated", "ground_truth"} (empty in reports written before it was measured)
    behavior_channels: dict[str, dict[str, float]] = field(default_factory=dict)
    # what each commanded behavior was read as, per channel (`behavior_confusion`):
    # {"generated", "ground_truth"} -> channel -> commanded -> classified -> windows
    behavior_confusion: dict[str, dict] = field(default_factory=dict)
    # how soon commands are followed (`behavior_timing`'s onset): {"generated",
    # "ground_truth"} -> {"seconds", "accuracy", "windows"}
    behavior_onset: dict[str, dict] = field(default_factory=dict)
    # how long finished commands linger (`behavior_timing`'s linger; empty in reports written
    # before it was measured): {"generated", "ground_truth"} -> {"seconds", "share", "windows"}
    behavior_linger: dict[str, dict] = field(default_factory=dict)
    # the probe's error on ground truth where the behavior classifier looks (`probe_error`):
    # channel -> feature -> {"error", "scale"}
    probe_error: dict[str, dict] = field(default_factory=dict)
    # where the classifier's features sat in each commanded behavior's windows
    # (`feature_levels_from`; empty in reports written before it was measured): {"generated",
    # "ground_truth", "prototype"} -> channel -> behavior -> feature -> mean (and "windows")
    behavior_features: dict[str, dict] = field(default_factory=dict)
    # how often each phrasing of a command was followed (`phrasing_reads_from`; empty in
    # reports written before it was measured): {"generated", "ground_truth"} -> channel ->
    # behavior -> phrasing -> {"windows", "read"}
    behavior_phrasings: dict[str, dict] = field(default_factory=dict)

    def table(self) -> str:
        columns = ["metric", "generated", "ground truth"]
        if self.vae:
            columns.append(f"through the VAE ({self.config.get('vae_seconds', 0):g} s)")
        rows = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
        for name, values in self.overall.items():
            cells = [name, f"{values['generated']:.3f}", f"{values['ground_truth']:.3f}"]
            if self.vae:
                cells.append(f"{self.vae[name]:.3f}" if name in self.vae else "")
            rows.append("| " + " | ".join(cells) + " |")
        vae_channels = self.vae.get("behavior_channels", {})
        for channel, values in self.behavior_channels.items():
            cells = [
                f"behavior: {channel}",
                f"{values['generated']:.3f}",
                f"{values['ground_truth']:.3f}",
            ]
            if self.vae:
                cells.append(f"{vae_channels[channel]:.3f}" if channel in vae_channels else "")
            rows.append("| " + " | ".join(cells) + " |")
        if "psnr_by_second" in self.vae:
            psnr = ", ".join(f"{v:.1f}" for v in self.vae["psnr_by_second"])
            rows.append(f"\nVAE reconstruction PSNR (dB) per second of stream: {psnr}")
        if "lipsync_bands" in self.vae:
            bands = self.vae["lipsync_bands"]
            cells = [
                f"{who} {b['latent_rate']:.3f} / {b['within_latent']:.3f}"
                for who, b in (
                    ("through the VAE", bands["vae"]),
                    ("ground truth", bands["ground_truth"]),
                )
            ]
            rows.append(f"\nLip-sync at the latent rate / within latents: {', '.join(cells)}")
        least = sorted(_phrasing_cells(self, "generated").items(), key=lambda kv: _share(kv[1]))
        if least:
            cells = [f"{b}: {p!r} {c['read']}/{c['windows']}" for (b, p), c in least[:LEAST]]
            lead = "\nPhrasings followed least (windows read as commanded): "
            rows.append(lead + "; ".join(cells))
        return "\n".join(rows)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def load(cls, path: str | Path) -> EvalReport:
        """A `report.json` as `run_eval` wrote it (or the folder that holds one)."""
        path = Path(path)
        path = path / "report.json" if path.is_dir() else path
        if not path.is_file():
            raise FileNotFoundError(f"no evaluation report at {path}")
        return cls(**json.loads(path.read_text()))


def compare_table(reports: dict[str, EvalReport]) -> str:
    """Overall generated figures of several runs side by side, with the first run's ground truth
    and, per run, the minute-5 over minute-0.5 drift ratio where its stream reaches minute 5."""
    names = list(reports)
    first = reports[names[0]]
    rows = [
        "| metric | " + " | ".join(names) + " | ground truth |",
        "|" + " --- |" * (len(names) + 2),
    ]
    for metric in first.overall:
        cells = [
            f"{r.overall[metric]['generated']:.3f}" if metric in r.overall else ""
            for r in reports.values()
        ]
        truth = f"{first.overall[metric]['ground_truth']:.3f}"
        rows.append(f"| {metric} | " + " | ".join(cells) + f" | {truth} |")
    ratios = [_drift_ratio(r) for r in reports.values()] + [_drift_ratio(first, "ground_truth")]
    cells = ["" if v is None else f"{v:.2f}" for v in ratios]
    rows.append("| drift min 5 / min 0.5 | " + " | ".join(cells) + " |")
    for start, end in ((0, 5), (5, 10)):
        means = [_drift_mean(r, start, end) for r in reports.values()]
        means.append(_drift_mean(first, start, end, "ground_truth"))
        cells = ["" if v is None else f"{v:.3f}" for v in means]
        rows.append(f"| drift, min {start}-{end} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


LEAST = 3  # phrasings `EvalReport.table` names as followed least


def _phrasing_cells(report: EvalReport, kind: str) -> dict[tuple[str, str], dict[str, int]]:
    """`report.behavior_phrasings[kind]` flattened: (behavior, phrasing) -> {"windows", "read"}."""
    return {
        (behavior, phrasing): cell
        for rows in report.behavior_phrasings.get(kind, {}).values()
        for behavior, cells in rows.items()
        for phrasing, cell in cells.items()
    }


def _share(cell: dict[str, int]) -> float:
    return cell["read"] / cell["windows"]


def phrasing_table(reports: dict[str, EvalReport]) -> str:
    """Per commanded behavior and phrasing, the windows each run read as commanded, with the
    first run's ground truth: where two runs differ, which phrasings moved. A run that did not
    draw a phrasing has an empty cell. Raises `ValueError` naming runs whose reports predate
    the measure."""
    lacking = [name for name, r in reports.items() if not r.behavior_phrasings]
    if lacking:
        raise ValueError(
            f"no behavior_phrasings in {', '.join(lacking)} (written before they were measured)"
        )
    cells = {name: _phrasing_cells(r, "generated") for name, r in reports.items()}
    truth = _phrasing_cells(next(iter(reports.values())), "ground_truth")
    keys = sorted({k for c in cells.values() for k in c})
    rows = [
        "| behavior | phrasing | " + " | ".join(reports) + " | ground truth |",
        "|" + " --- |" * (len(reports) + 3),
    ]

    def show(cell: dict[str, int] | None) -> str:
        return "" if cell is None else f"{cell['read']}/{cell['windows']}"

    for behavior, phrasing in keys:
        row = [show(c.get((behavior, phrasing))) for c in cells.values()]
        row.append(show(truth.get((behavior, phrasing))))
        rows.append(f"| {behavior} | {phrasing} | " + " | ".join(row) + " |")
    return "\n".join(rows)


def _drift_mean(
    report: EvalReport, start_min: float, end_min: float, which: str = "generated"
) -> float | None:
    """Mean drift over the whole bins inside [start, end) minutes of the stream, if the stream
    covers that span."""
    seconds = report.config.get("seconds", math.inf)
    if seconds < end_min * 60 - report.bin_seconds:
        return None
    series = report.bins["identity_drift"][which]
    width = report.bin_seconds
    inside = [
        v
        for i, v in enumerate(series)
        if i * width >= start_min * 60 and (i + 1) * width <= min(end_min * 60, seconds)
    ]
    return float(np.mean(inside)) if inside else None


def _drift_ratio(report: EvalReport, which: str = "generated") -> float | None:
    """Drift in the bin holding minute 5 over drift in the bin holding minute 0.5."""
    series = report.bins["identity_drift"][which]
    late, early = int(300 / report.bin_seconds), int(30 / report.bin_seconds)
    if late >= len(series) or series[early] <= 0:
        return None
    return series[late] / series[early]


def _save(plt, fig, out: str | Path) -> Path:
    """Lay `fig` out, write it to `out` as a PNG (making its folder) and close it."""
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_comparison(reports: dict[str, EvalReport], metric: str, out: str | Path) -> Path:
    """One PNG of `metric` over stream time for several runs, the first run's ground truth
    dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    for name, report in reports.items():
        series = report.bins[metric]["generated"]
        ax.plot(
            (np.arange(len(series)) + 0.5) * report.bin_seconds / 60, series, "o-", ms=3, label=name
        )
    first = next(iter(reports.values()))
    truth = first.bins[metric]["ground_truth"]
    x = (np.arange(len(truth)) + 0.5) * first.bin_seconds / 60
    ax.plot(x, truth, "k--", label="ground truth")
    ax.set_xlabel("stream time (min)")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(plt, fig, out)


def channel_bars(
    reports: dict[str, EvalReport], through_vae: bool = False
) -> tuple[list[str], dict[str, list[float]]]:
    """What `plot_channels` draws: the groups ("all", then each behavior channel) and, per run,
    its accuracy in each: of its generated frames, or with `through_vae` of ground truth through
    its VAE (`EvalReport.vae`, its latent space's ceiling); last, "ground truth", the first
    run's. Raises `ValueError` naming the runs whose reports hold no channels of that kind."""
    kind = "ground truth through the VAE" if through_vae else "behavior channels"
    missing = [
        name
        for name, r in reports.items()
        if not r.behavior_channels or (through_vae and not r.vae.get("behavior_channels"))
    ]
    if missing:
        raise ValueError(f"no {kind} in {', '.join(missing)}")
    first = next(iter(reports.values()))
    groups = ["all", *first.behavior_channels]

    def bars(report: EvalReport, which: str) -> list[float]:
        if which == "vae":
            overall, channels = report.vae["behavior"], report.vae["behavior_channels"]
            return [overall, *(channels[c] for c in groups[1:])]
        channels = report.behavior_channels
        return [report.overall["behavior"][which], *(channels[c][which] for c in groups[1:])]

    which = "vae" if through_vae else "generated"
    series = {name: bars(r, which) for name, r in reports.items()}
    series["ground truth"] = bars(first, "ground_truth")
    return groups, series


def plot_channels(
    reports: dict[str, EvalReport], out: str | Path, through_vae: bool = False
) -> Path:
    """One PNG of `channel_bars`: behavior accuracy, overall and per channel, for several runs
    side by side, with the first run's ground truth."""
    groups, series = channel_bars(reports, through_vae)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    width = 0.8 / len(series)
    for i, (name, values) in enumerate(series.items()):
        x = np.arange(len(groups)) + (i - (len(series) - 1) / 2) * width
        kw = {"color": "0.75"} if name == "ground truth" else {}
        ax.bar(x, values, width, label=name, **kw)
    ax.set_xticks(np.arange(len(groups)), groups)
    ax.set_ylabel("behavior accuracy" + (", through the VAE" if through_vae else ""))
    columns = min(len(series), 3)  # wider legends run off the figure
    rows = math.ceil(len(series) / columns)
    ax.set_ylim(0, 1.12 + 0.1 * rows)  # the legend sits above the bars
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, ncol=columns, loc="upper center")
    return _save(plt, fig, out)


def _plot_onset(plt, onset: dict[str, dict], linger: dict[str, dict], path: Path) -> Path:
    """Against the time since a command: the share of windows read as commanded, and (where
    measured) the share still read as the behavior the command ended."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    seconds = next(iter(onset.values()))["seconds"]
    for kind, style in (("generated", "o-"), ("ground_truth", "s--")):
        name = kind.replace("_", " ")
        if kind in onset:
            ax.plot(seconds, onset[kind]["accuracy"], style, color="C0", label=f"{name}: followed")
        if kind in linger:
            ax.plot(seconds, linger[kind]["share"], style, color="C3", label=f"{name}: lingering")
    ax.set_xticks(seconds, [f"{s:.1f}" for s in seconds[:-1]] + [f"{seconds[-1]:.1f}+"])
    ax.set_xlabel("window starts this long after the command (s)")
    ax.set_ylabel("share of windows")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return _save(plt, fig, path)


def write_plots(report: EvalReport, film: list[np.ndarray], out_dir: Path) -> list[Path]:
    """One PNG per metric over stream time, the behavior confusion, and a film strip of
    `film` (per moment `[B, 3, H, 2W]`: generated | ground truth side by side)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no plots (pip install matplotlib)")
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for metric, series in report.bins.items():
        fig, ax = plt.subplots(figsize=(6, 3.2))
        x = (np.arange(len(series["generated"])) + 0.5) * report.bin_seconds / 60
        ax.plot(x, series["generated"], "o-", label="generated")
        ax.plot(x, series["ground_truth"], "s--", label="ground truth")
        ax.set_xlabel("stream time (min)")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        paths.append(out_dir / f"{metric}.png")
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    if report.vae.get("psnr_by_second"):
        psnr = report.vae["psnr_by_second"]
        fig, ax = plt.subplots(figsize=(6, 3.2))
        ax.plot(np.arange(1, len(psnr) + 1), psnr, "o-")
        ax.set_xlabel("stream time (s)")
        ax.set_ylabel("VAE reconstruction PSNR (dB)")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        paths.append(out_dir / "vae_psnr.png")
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    if report.behavior_onset:
        path = out_dir / "behavior_onset.png"
        paths.append(_plot_onset(plt, report.behavior_onset, report.behavior_linger, path))
    if report.behavior_confusion:
        confusion = dict(report.behavior_confusion)
        if "behavior_confusion" in report.vae:
            confusion["through_vae"] = report.vae["behavior_confusion"]
        paths.append(plot_confusion(confusion, out_dir / "behavior_confusion.png"))
    if report.behavior_features:
        levels = report.behavior_features
        series = {k: levels[k] for k in ("prototype", "ground_truth", "generated")}
        paths.append(plot_feature_levels(series, out_dir / "behavior_features.png"))
    if film:
        rows = [np.concatenate(list(f), axis=-2) for f in film]  # [3, B*H, 2W]
        strip = np.concatenate(rows, axis=-1).transpose(1, 2, 0)
        plt.imsave(out_dir / "film.png", ((strip + 1) / 2).clip(0, 1))
        paths.append(out_dir / "film.png")
    return paths


def plot_confusion(confusion: dict[str, dict], path: Path) -> Path:
    """`EvalReport.behavior_confusion` as one heat map per channel and kind (generated, ground
    truth, and where given `through_vae`: the ground truth of the first `vae_seconds` through
    the VAE), each row a commanded behavior, its windows' shares by what they were read as."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [k for k in ("generated", "ground_truth", "through_vae") if k in confusion]
    titles = {"through_vae": "through the VAE"}
    channels = list(confusion[kinds[0]])
    fig, axes = plt.subplots(
        len(kinds), len(channels), figsize=(3.3 * len(channels), 3.2 * len(kinds)), squeeze=False
    )
    for row, kind in enumerate(kinds):
        for col, channel in enumerate(channels):
            table = confusion[kind][channel]
            names = list(table)
            counts = np.array([[table[a][b] for b in names] for a in names], float)
            shares = counts / np.maximum(counts.sum(1, keepdims=True), 1)
            ax = axes[row, col]
            ax.imshow(shares, vmin=0, vmax=1, cmap="viridis")
            ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
            ax.set_yticks(range(len(names)), names, fontsize=7)
            ax.set_title(f"{channel}, {titles.get(kind, kind.replace('_', ' '))}", fontsize=9)
            if row == len(kinds) - 1:
                ax.set_xlabel("read as", fontsize=8)
            if col == 0:
                ax.set_ylabel("commanded", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_feature_levels(series: dict[str, dict], path: str | Path) -> Path:
    """Levels of the classifier's features (`EvalReport.behavior_features`' kinds: channel ->
    behavior -> feature -> mean) as one panel per channel: for each commanded behavior, each
    feature it sets, one marker per series. A "prototype" series is drawn as a bar: a miss
    read as another behavior shows as how far a generated level fell short of it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    channels = bh.BEHAVIOR_CHANNELS
    fig, axes = plt.subplots(len(channels), 1, figsize=(11, 2.6 * len(channels)), squeeze=False)
    markers = iter("so^Dv<>pP*")
    styles = {
        name: ("k_", 14) if name == "prototype" else (next(markers, "o"), 5) for name in series
    }
    for ax, channel in zip(axes[:, 0], channels, strict=True):
        behaviors = [bh.BEHAVIORS[i] for i in bh.CHANNEL_BEHAVIORS[channel]]
        own = [(b.name, f) for b in behaviors for f in bh.own_features(b)]
        labels = [f"{b}: {f}" for b, f in own]
        x = np.arange(len(labels))
        for name, levels in series.items():
            rows = levels.get(channel, {})
            y = [rows.get(b, {}).get(f, float("nan")) for b, f in own]
            style, size = styles[name]
            ax.plot(x, y, style, ms=size, label=name.replace("_", " "), ls="none")
        ax.set_xticks(x, labels, rotation=60, ha="right", fontsize=7)
        ax.set_title(channel, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7, ncols=min(len(series), 4))
    return _save(plt, fig, path)
