"""`WebrtcVAD`: the WebRTC voice activity detector (package `webrtcvad-wheels`).

It models speech spectra, so steady noise and music trigger it far less than a level threshold.
"""

from __future__ import annotations

from flowact.agents.base import MissingDependency
from flowact.schemas import timebase as tb
from flowact.schemas.agent_settings import AgentSettings

try:
    import webrtcvad
except ModuleNotFoundError as err:
    raise MissingDependency(
        "WebrtcVAD needs the 'webrtcvad-wheels' package: pip install flowact[vad] "
        "(or set agent.vad to 'energy')",
        name=err.name,
    ) from err

FRAME_MS = 30  # WebRTC takes 10, 20 or 30 ms frames; 30 judges most reliably


class WebrtcVAD:
    """`aggressiveness` 0 (lets most sound count as speech) to 3 (strictest)."""

    frame_samples = tb.SAMPLE_RATE * FRAME_MS // 1000

    def __init__(self, aggressiveness: int = 2) -> None:
        self._vad = webrtcvad.Vad(aggressiveness)

    @classmethod
    def from_settings(cls, settings: AgentSettings) -> WebrtcVAD:
        return cls(settings.vad_aggressiveness)

    def is_speech(self, frame: bytes) -> bool:
        return self._vad.is_speech(frame, tb.SAMPLE_RATE)
