"""Prosody of a speech window, measured per video frame: loudness, pauses, emphasis.

Working at the video frame (640 samples, 40 ms) gives every cue a frame number directly, the
unit behavior prompts are timed in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flowact.schemas import timebase as tb

FLOOR_DB = -90.0


@dataclass(frozen=True)
class Prosody:
    """Cues of one window; frame numbers are relative to the window's first frame.

    `level_db`: [frames] RMS level per video frame in dBFS. `pauses`: (start, stop) frame ranges
    of silence inside speech (not leading or trailing). `peaks`: frames of emphasis (local loudness
    maxima well above the window's typical voiced level), loudest first.
    """

    level_db: np.ndarray
    voiced: np.ndarray
    pauses: list[tuple[int, int]]
    peaks: list[int]

    @property
    def speech_frames(self) -> int:
        return int(self.voiced.sum())

    @property
    def loudness_db(self) -> float:
        """Median level of the voiced frames (FLOOR_DB when nothing is voiced)."""
        return float(np.median(self.level_db[self.voiced])) if self.voiced.any() else FLOOR_DB


def frame_levels(pcm: bytes) -> np.ndarray:
    """RMS level in dBFS of every whole or partial video frame of 16 kHz s16le `pcm`."""
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    frames = -(-len(x) // tb.SAMPLES_PER_FRAME)
    x = np.pad(x, (0, frames * tb.SAMPLES_PER_FRAME - len(x)))
    power = (x.reshape(frames, tb.SAMPLES_PER_FRAME) ** 2).mean(axis=1)  # [frames]
    return np.maximum(10.0 * np.log10(power + 1e-12), FLOOR_DB)


def analyse(
    pcm: bytes,
    *,
    silence_db: float = -40.0,
    min_pause_frames: int = 5,
    emphasis_db: float = 4.0,
    peak_spacing: int = tb.FPS // 2,
) -> Prosody:
    """Cues of 16 kHz s16le speech. A pause is at least `min_pause_frames` below `silence_db`;
    an emphasis peak stands `emphasis_db` above the voiced median, `peak_spacing` frames apart."""
    level = frame_levels(pcm)
    voiced = level > silence_db
    pauses = _pauses(voiced, min_pause_frames)
    peaks: list[int] = []
    if voiced.any():
        smooth = np.convolve(level, np.ones(3) / 3, mode="same")  # [frames]
        bar = float(np.median(level[voiced])) + emphasis_db
        local_max = (smooth >= np.roll(smooth, 1)) & (smooth >= np.roll(smooth, -1))
        candidates = np.flatnonzero(local_max & (smooth > bar) & voiced)
        for frame in sorted(candidates, key=lambda f: -smooth[f]):
            if all(abs(int(frame) - p) >= peak_spacing for p in peaks):
                peaks.append(int(frame))
    return Prosody(level, voiced, pauses, peaks)


def _pauses(voiced: np.ndarray, min_frames: int) -> list[tuple[int, int]]:
    spoken = np.flatnonzero(voiced)
    if len(spoken) == 0:
        return []
    out = []
    start = None
    for i in range(int(spoken[0]), int(spoken[-1]) + 1):
        if not voiced[i] and start is None:
            start = i
        elif voiced[i] and start is not None:
            if i - start >= min_frames:
                out.append((start, i))
            start = None
    return out
