"""PCM on the session clock: s16le bytes <-> float arrays, and resampling at the edge.

The renderer works at 16 kHz; TTS engines and voice assistants often give 22.05 or 24 kHz. A
stream is resampled piece by piece with `StreamResampler`, which keeps the few samples of history
its kernel needs, so pieces join exactly (no drift, no gaps, no clicks at the seams).
"""

from __future__ import annotations

import numpy as np

from flowact.schemas import timebase as tb

_TAPS = 16  # half-width of the windowed-sinc kernel, in input samples


def s16_to_float(pcm: bytes) -> np.ndarray:
    """s16le bytes -> float32 in [-1, 1)."""
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0


def float_to_s16(samples: np.ndarray) -> bytes:
    """float in [-1, 1] -> s16le bytes (clipped)."""
    return (np.clip(samples, -1.0, 32767 / 32768) * 32768.0).astype("<i2").tobytes()


def to_clock(position: int, rate: int, target: int = tb.SAMPLE_RATE) -> int:
    """A sample position at `rate` on the `target` clock."""
    return position * target // rate


class StreamResampler:
    """Resample a stream piece by piece; the pieces join exactly as if resampled whole.

    A windowed sinc, low-passed below the lower Nyquist frequency. `push` returns the output
    samples whose kernel is complete (it holds back `_TAPS` input samples); `flush` returns the
    rest, padding the end with silence. After a flush, `produced == to_clock(pushed)`.
    """

    def __init__(self, rate: int, target: int = tb.SAMPLE_RATE) -> None:
        self.rate, self.target = rate, target
        self._buf = np.zeros(0, dtype=np.float32)
        self._buf_start = 0  # absolute input index of _buf[0]
        self.produced = 0

    @property
    def pushed(self) -> int:
        return self._buf_start + len(self._buf)

    def push(self, samples: np.ndarray) -> np.ndarray:
        self._buf = np.concatenate([self._buf, np.asarray(samples, dtype=np.float32)])
        if self.rate == self.target:
            return self._take(self.pushed - self.produced)
        # Output j needs inputs up to floor(j * rate / target) + _TAPS.
        ready = (self.pushed - _TAPS) * self.target // self.rate
        return self._take(
            max(0, min(ready, to_clock(self.pushed, self.rate, self.target)) - self.produced)
        )

    def flush(self) -> np.ndarray:
        return self._take(to_clock(self.pushed, self.rate, self.target) - self.produced)

    def _take(self, count: int) -> np.ndarray:
        if count <= 0:
            return np.zeros(0, dtype=np.float32)
        if self.rate == self.target:
            first = self.produced - self._buf_start
            out = self._buf[first : first + count].copy()
        else:
            out = self._interpolate(self.produced + np.arange(count))
        self.produced += count
        keep = self.produced * self.rate // self.target - _TAPS - self._buf_start
        if keep > 0:
            self._buf, self._buf_start = self._buf[keep:], self._buf_start + keep
        return out

    def _interpolate(self, outputs: np.ndarray) -> np.ndarray:
        where = outputs * (self.rate / self.target) - self._buf_start  # position in _buf
        cutoff = min(1.0, self.target / self.rate)
        offsets = np.arange(-_TAPS + 1, _TAPS + 1)
        idx = np.floor(where).astype(np.int64)[:, None] + offsets[None, :]  # [count, 2*TAPS]
        kernel = cutoff * np.sinc(cutoff * (where[:, None] - idx))
        kernel *= np.hanning(2 * _TAPS + 2)[1:-1][None, :]
        kernel /= kernel.sum(axis=1, keepdims=True)
        valid = (idx >= 0) & (idx < len(self._buf)) & (idx + self._buf_start >= 0)
        taken = np.where(valid, self._buf[np.clip(idx, 0, len(self._buf) - 1)], 0.0)
        return (taken * kernel).sum(axis=1).astype(np.float32)


def resample(samples: np.ndarray, rate: int, target: int = tb.SAMPLE_RATE) -> np.ndarray:
    """Resample a whole clip: `to_clock(len(samples))` samples at `target`."""
    resampler = StreamResampler(rate, target)
    return np.concatenate([resampler.push(samples), resampler.flush()])
