"""From frame-level voice activity to turns: when the user starts and stops speaking.

A single voiced frame is not a turn (a cough, a click), and a short gap between words is not its
end; the tracker asks for `start_ms` of continuous speech to open a turn and `end_ms` of silence to
close it. Frames of any piece size are cut to the detector's frame length, so the decision never
waits for more than one detector frame after the audio that settles it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from flowact.agents.base import VAD
from flowact.schemas import timebase as tb


@dataclass(frozen=True)
class VoiceChange:
    """The user started or stopped speaking; `at` counts samples fed to the tracker so far
    (the sample where the speech began, or where the closing silence began)."""

    kind: Literal["onset", "offset"]
    at: int


class VoiceTracker:
    """Turn onsets and offsets of a 16 kHz s16le stream fed in pieces of any size."""

    def __init__(self, vad: VAD, *, start_ms: int = 90, end_ms: int = 600) -> None:
        self.vad = vad
        self._frame_bytes = vad.frame_samples * tb.BYTES_PER_SAMPLE
        self._start = max(1, -(-start_ms * tb.SAMPLE_RATE // 1000 // vad.frame_samples))
        self._end = max(1, -(-end_ms * tb.SAMPLE_RATE // 1000 // vad.frame_samples))
        self._pending = b""
        self._fed = 0  # samples judged so far
        self._voiced_run = 0
        self._silent_run = 0
        self.speaking = False

    def feed(self, pcm: bytes) -> list[VoiceChange]:
        """Judge the whole frames now available; return the changes they caused, in order."""
        data = self._pending + pcm
        whole = len(data) - len(data) % self._frame_bytes
        self._pending = data[whole:]
        changes = []
        for offset in range(0, whole, self._frame_bytes):
            change = self._judge(data[offset : offset + self._frame_bytes])
            if change is not None:
                changes.append(change)
        return changes

    def reset(self) -> None:
        self._pending = b""
        self._voiced_run = self._silent_run = 0
        self.speaking = False

    def _judge(self, frame: bytes) -> VoiceChange | None:
        voiced = self.vad.is_speech(frame)
        self._fed += self.vad.frame_samples
        if voiced:
            self._voiced_run += 1
            self._silent_run = 0
        else:
            self._silent_run += 1
            self._voiced_run = 0
        if not self.speaking and self._voiced_run >= self._start:
            self.speaking = True
            return VoiceChange("onset", self._fed - self._voiced_run * self.vad.frame_samples)
        if self.speaking and self._silent_run >= self._end:
            self.speaking = False
            return VoiceChange("offset", self._fed - self._silent_run * self.vad.frame_samples)
        return None
