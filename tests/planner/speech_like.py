"""Speech-like test signals with known timing: voiced bursts, silences and one loud accent."""

from __future__ import annotations

import numpy as np

from flowact.schemas import timebase as tb


def bursts(spec: list[tuple[str, int]], seed: int = 0) -> bytes:
    """16 kHz s16le from (kind, frames) parts: "v" voiced, "s" silence, "a" accent (+12 dB)."""
    rng = np.random.default_rng(seed)
    parts = []
    for kind, frames in spec:
        n = frames * tb.SAMPLES_PER_FRAME
        t = np.arange(n) / tb.SAMPLE_RATE
        if kind == "s":
            parts.append(rng.normal(0, 1e-4, n))
            continue
        gain = 0.4 if kind == "a" else 0.1
        tone = np.sin(2 * np.pi * 140 * t) + 0.5 * np.sin(2 * np.pi * 420 * t)
        parts.append(gain * tone * (0.8 + 0.2 * rng.random(n)))
    x = np.concatenate(parts)
    return (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()
