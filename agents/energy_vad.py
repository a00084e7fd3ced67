"""`EnergyVAD`: speech is a frame louder than a threshold. No dependency; the fallback.

Good enough for a close microphone or a voice assistant's clean stream; it cannot tell speech
from other loud sound, which `WebrtcVAD` can.
"""

from __future__ import annotations

import numpy as np

from flowact.schemas import timebase as tb
from flowact.schemas.agent_settings import AgentSettings

FRAME_MS = 20


class EnergyVAD:
    """A frame is speech when its RMS level is above `threshold_db` (dBFS)."""

    frame_samples = tb.SAMPLE_RATE * FRAME_MS // 1000

    def __init__(self, threshold_db: float = -38.0) -> None:
        self.threshold_db = threshold_db

    @classmethod
    def from_settings(cls, settings: AgentSettings) -> EnergyVAD:
        return cls(settings.energy_threshold_db)

    def is_speech(self, frame: bytes) -> bool:
        x = np.frombuffer(frame, dtype="<i2").astype(np.float32) / 32768.0
        power = float((x * x).mean()) if len(x) else 0.0
        return 10.0 * np.log10(power + 1e-12) > self.threshold_db
