"""What the behavior figures of an evaluation read: per prompt channel, the windows of a
stream inside one commanded segment and past its ramp (`steady_windows`), what each was
classified as (`behaviors.classify` on the probe's controls), and from them the accuracy, the
confusion, how soon commands are followed and how long finished ones linger, and where the
classifier's features sat in each commanded behavior's windows (`feature_levels_from`) and how
often each phrasing of a command was followed (`phrasing_reads_from`); beside them, the probe's
own error where the classifier looks (`probe_error`). `evaluate.py` makes the
streams and reads them; this module holds the measures."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import NamedTuple

import numpy as np

from flowact.renderer.training import behaviors as bh
from flowact.schemas.timebase import FPS


def behavior_name(b: int) -> str:
    return "idle" if b < 0 else bh.BEHAVIORS[b].name


class Window(NamedTuple):
    """One channel's windows at one start that `steady_windows` keeps: which of the `[B]`
    streams qualify, and for those n what was commanded and in which phrasing, what the
    classifier read, and the features it read that from."""

    channel: str
    start: int
    steady: np.ndarray  # [B] bool
    commanded: np.ndarray  # [n] behavior id, -1 idle
    classified: np.ndarray  # [n]
    features: np.ndarray  # [n, features] `behaviors.window_features`
    # [n] the prompt id (`behaviors.prompt_table`) in force over the whole window; -1 where
    # none is, where it changes inside the window, or where no prompts were given
    phrasing: np.ndarray


def steady_windows(
    controls: np.ndarray,
    behavior: np.ndarray,
    window: int,
    protos: dict[str, np.ndarray],
    prompt: np.ndarray | None = None,
) -> Iterator[Window]:
    """The windows every behavior metric reads: per channel and window start, those inside one
    commanded segment and past its ramp, classified (`behaviors.classify`). `prompt`
    `[B, T, channels]`, the commanded prompt ids, names each window's phrasing."""
    ramp = int(bh.RAMP_SECONDS * FPS) + 2
    t = controls.shape[1]
    for ch, channel in enumerate(bh.BEHAVIOR_CHANNELS):
        for start in range(0, t - window + 1, window):
            span = behavior[:, max(0, start - ramp) : start + window, ch]  # [B, w + ramp]
            steady = (span == span[:, :1]).all(1)
            if not steady.any():
                continue
            feats = bh.window_features(controls[steady, start : start + window], channel)
            pred = bh.classify_features(feats, channel, protos)
            phrasing = np.full(int(steady.sum()), -1, np.int64)
            if prompt is not None:
                ids = prompt[steady, start : start + window, ch]  # [n, w]
                phrasing = np.where((ids == ids[:, :1]).all(1), ids[:, 0], -1)
            yield Window(channel, start, steady, span[steady, 0], pred, feats, phrasing)


def behavior_confusion(
    controls: np.ndarray, behavior: np.ndarray, window: int, protos: dict[str, np.ndarray]
) -> dict[str, dict[str, dict[str, int]]]:
    """Per channel: commanded behavior -> what its windows were classified as -> how many.
    The windows are `steady_windows`; every behavior of the channel and idle is a row and a
    column."""
    return confusion_from(steady_windows(controls, behavior, window, protos))


def confusion_from(windows) -> dict[str, dict[str, dict[str, int]]]:
    """`behavior_confusion` of windows `steady_windows` has already classified."""
    out = {}
    for channel in bh.BEHAVIOR_CHANNELS:
        names = [behavior_name(b) for b in (-1, *bh.CHANNEL_BEHAVIORS[channel])]
        out[channel] = {a: dict.fromkeys(names, 0) for a in names}
    for w in windows:
        for a, b in zip(w.commanded.tolist(), w.classified.tolist(), strict=True):
            out[w.channel][behavior_name(a)][behavior_name(b)] += 1
    return out


def feature_levels_from(windows: Iterable[Window]) -> dict[str, dict[str, dict[str, float]]]:
    """Where the classifier's features sit in each commanded behavior's windows: channel ->
    commanded -> {"windows": n, feature name: mean over those windows}. Beside
    `prototype_levels`, it tells how far a missed behavior fell short (raised arms read at
    0.7 where the prototype holds 0.85, say) and not only what it was read as."""
    sums: dict[str, dict[str, list]] = {}
    for w in windows:
        rows = sums.setdefault(w.channel, {})
        for b, f in zip(w.commanded.tolist(), w.features, strict=True):
            acc = rows.setdefault(behavior_name(b), [0, 0.0])
            acc[0] += 1
            acc[1] = acc[1] + f
    out = {}
    for channel, rows in sums.items():
        names = bh.feature_names(channel)
        out[channel] = {
            b: {"windows": n, **dict(zip(names, (total / n).tolist(), strict=True))}
            for b, (n, total) in rows.items()
        }
    return out


def phrasing_reads_from(windows: Iterable[Window]) -> dict[str, dict[str, dict[str, dict]]]:
    """How often each phrasing of a command was read as that command: channel -> commanded
    behavior -> phrasing -> {"windows": n, "read": those classified as commanded}. Windows
    with no single phrasing (`Window.phrasing` -1) are left out. Two phrasings of one behavior
    can fare far apart: the text encoder may place one nearer another behavior's prompts."""
    texts = bh.prompt_table()[0]
    out: dict[str, dict[str, dict[str, dict]]] = {}
    for w in windows:
        for b, got, p in zip(
            w.commanded.tolist(), w.classified.tolist(), w.phrasing.tolist(), strict=True
        ):
            if b < 0 or p < 0:
                continue
            rows = out.setdefault(w.channel, {}).setdefault(behavior_name(b), {})
            cell = rows.setdefault(texts[p], {"windows": 0, "read": 0})
            cell["windows"] += 1
            cell["read"] += int(got == b)
    return out


def prototype_levels(protos: dict[str, np.ndarray]) -> dict[str, dict[str, dict[str, float]]]:
    """The classifier's prototypes as `feature_levels_from` writes levels: channel -> behavior
    -> feature name -> value."""
    out = {}
    for channel in bh.BEHAVIOR_CHANNELS:
        names = bh.feature_names(channel)
        behaviors = (-1, *bh.CHANNEL_BEHAVIORS[channel])
        out[channel] = {
            behavior_name(b): dict(zip(names, row.tolist(), strict=True))
            for b, row in zip(behaviors, protos[channel], strict=True)
        }
    return out


def segment_starts(behavior: np.ndarray) -> np.ndarray:
    """Per stream, frame and channel, the frame its commanded segment began at `[B, T, P]`."""
    t = behavior.shape[1]
    change = np.ones(behavior.shape, bool)
    change[:, 1:] = behavior[:, 1:] != behavior[:, :-1]
    frames = np.arange(t)[None, :, None]
    return np.maximum.accumulate(np.where(change, frames, 0), axis=1)


def previous_behavior(behavior: np.ndarray) -> np.ndarray:
    """Per stream, frame and channel, the behavior commanded by the segment before the current
    one `[B, T, P]`: `NO_SEGMENT` in a stream's first segment, -1 where it was idle."""
    starts = segment_starts(behavior)
    before = np.take_along_axis(behavior, np.maximum(starts - 1, 0), axis=1)
    return np.where(starts > 0, before, NO_SEGMENT)


NO_SEGMENT = -2  # `previous_behavior` of a stream's first segment


def behavior_timing(
    controls: np.ndarray,
    behavior: np.ndarray,
    window: int,
    protos: dict[str, np.ndarray],
    bins: int = 5,
) -> dict[str, dict[str, list]]:
    """When commands are followed and let go, by how long after the command a window starts
    (in whole windows; the last bin pools the rest):
    - `onset`: of the windows of commanded behaviors (idle left out), the share classified as
      commanded: `{"seconds": bin starts, "accuracy", "windows"}`;
    - `linger`: of the windows whose segment follows one that commanded a behavior on the same
      channel (the new command idle or another behavior), the share still classified as that
      earlier behavior: `{"seconds", "share", "windows"}`.
    An empty bin's share is NaN."""
    return timing_from(steady_windows(controls, behavior, window, protos), behavior, window, bins)


def timing_from(windows, behavior: np.ndarray, window: int, bins: int = 5) -> dict[str, dict]:
    """`behavior_timing` of windows `steady_windows` has already classified."""
    starts, before = segment_starts(behavior), previous_behavior(behavior)
    counts = {key: (np.zeros(bins, int), np.zeros(bins, int)) for key in ("onset", "linger")}
    for w in windows:
        ch = bh.BEHAVIOR_CHANNELS.index(w.channel)
        late = np.minimum((w.start - starts[w.steady, w.start, ch]) // window, bins - 1)
        earlier = before[w.steady, w.start, ch]
        for key, counted, hit in (
            ("onset", w.commanded >= 0, w.classified == w.commanded),
            ("linger", earlier >= 0, w.classified == earlier),
        ):
            hits, total = counts[key]
            np.add.at(total, late[counted], 1)
            np.add.at(hits, late[counted], hit[counted])
    seconds = [k * window / FPS for k in range(bins)]

    def shares(key: str) -> list[float]:
        return [_share(int(h), int(n)) for h, n in zip(*counts[key], strict=True)]

    return {
        "onset": {
            "seconds": seconds,
            "accuracy": shares("onset"),
            "windows": counts["onset"][1].tolist(),
        },
        "linger": {
            "seconds": seconds,
            "share": shares("linger"),
            "windows": counts["linger"][1].tolist(),
        },
    }


def confusion_hits(table: dict[str, dict[str, int]]) -> tuple[int, int]:
    """One channel's `behavior_confusion`: windows classified as commanded, and all windows."""
    return sum(table[a][a] for a in table), sum(sum(row.values()) for row in table.values())


def _share(hits: int, total: int) -> float:
    return hits / total if total else float("nan")


def confusion_accuracy(
    confusion: dict[str, dict[str, dict[str, int]]],
) -> tuple[float, dict[str, float]]:
    """A `behavior_confusion`'s share of windows read as commanded: over every channel, and
    for each one."""
    hits = {channel: confusion_hits(table) for channel, table in confusion.items()}
    pooled = _share(sum(h for h, _ in hits.values()), sum(n for _, n in hits.values()))
    return pooled, {channel: _share(h, n) for channel, (h, n) in hits.items()}


def behavior_hits(
    controls: np.ndarray, behavior: np.ndarray, window: int, protos: dict[str, np.ndarray]
) -> dict[str, tuple[int, int]]:
    """Per channel: of the windows inside one commanded segment and past its ramp, how many
    are classified as the command (idle included), and how many there are."""
    confusion = behavior_confusion(controls, behavior, window, protos)
    return {channel: confusion_hits(table) for channel, table in confusion.items()}


def behavior_accuracy(
    controls: np.ndarray, behavior: np.ndarray, window: int, protos: dict[str, np.ndarray]
) -> tuple[float, int]:
    """Share of (window, channel) pairs classified as commanded (`behavior_hits` over every
    channel); and their count."""
    counts = behavior_hits(controls, behavior, window, protos).values()
    hits, total = sum(h for h, _ in counts), sum(n for _, n in counts)
    return _share(hits, total), total


def behavior_by_channel(
    controls: np.ndarray, behavior: np.ndarray, window: int, protos: dict[str, np.ndarray]
) -> dict[str, float]:
    """`behavior_accuracy` of each prompt channel alone."""
    return confusion_accuracy(behavior_confusion(controls, behavior, window, protos))[1]


def probe_error(
    read: np.ndarray, truth: np.ndarray, window: int, protos: dict[str, np.ndarray]
) -> dict[str, dict[str, dict[str, float]]]:
    """The instrument's own error where `classify` looks: per channel and classifier feature,
    the spread over the stream's windows of the probe's ground-truth reading `read` less the
    truth `truth` (both `[B, T, K]`), beside the scale `classify` divides that feature by. A
    feature whose error comes near its scale decides behaviors on the probe's noise."""
    n = truth.shape[1] // window * window
    k = truth.shape[-1]
    out = {}
    for channel in bh.BEHAVIOR_CHANNELS:
        feats = [
            bh.window_features(x[:, :n].reshape(-1, window, k), channel) for x in (read, truth)
        ]
        error = (feats[0] - feats[1]).std(0)
        scale = bh.classifier_scale(channel, protos)
        out[channel] = {
            name: {"error": float(e), "scale": float(s)}
            for name, e, s in zip(bh.feature_names(channel), error, scale, strict=True)
        }
    return out
