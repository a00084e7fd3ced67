"""`PassthroughTTS`: speech a voice assistant already made, handed in as it streams.

A voice assistant (its own LLM and TTS) hands the agent its reply audio, at whatever rate its TTS
speaks, with `hand_in`; `stream` yields it at 16 kHz, so the agent publishes, times and plans it
exactly like speech of its own. One utterance at a time: `hand_in(..., end=True)` closes it, and
pieces handed in after that start the next one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np

from flowact.agents.base import SpeechPiece
from flowact.schemas.agent_settings import AgentSettings
from flowact.schemas.messages import SAMPLE_RATES
from flowact.schemas.pcm import StreamResampler, float_to_s16, s16_to_float

_END = None


class PassthroughTTS:
    """Handed-in speech, resampled to 16 kHz; `stream` plays the next handed-in utterance."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[SpeechPiece | None] = asyncio.Queue()
        self._resampler: StreamResampler | None = None
        self.open = False  # an utterance was started and not ended

    @classmethod
    def from_settings(cls, settings: AgentSettings) -> PassthroughTTS:
        return cls()

    def hand_in(self, pcm: bytes, rate: int, *, text: str = "", end: bool = False) -> bool:
        """Queue a piece of s16le mono speech at `rate`; True when it starts a new utterance."""
        if rate not in SAMPLE_RATES:
            raise ValueError(f"sample rate {rate} Hz is not one of {SAMPLE_RATES}")
        if len(pcm) % 2:
            raise ValueError("pcm is not whole s16le samples")
        fresh = not self.open
        if self._resampler is None or self._resampler.rate != rate:
            tail = self._resampler.flush() if self._resampler is not None else np.zeros(0)
            self._resampler = StreamResampler(rate)
        else:
            tail = np.zeros(0)
        out = np.concatenate([tail, self._resampler.push(s16_to_float(pcm))])
        if end:
            out = np.concatenate([out, self._resampler.flush()])
            self._resampler = None
        if len(out) or text:
            self._queue.put_nowait(SpeechPiece(float_to_s16(out), text))
        if end:
            self._queue.put_nowait(_END)
        self.open = not end
        return fresh

    def drop(self) -> None:
        """Forget speech handed in and not yet played (barge-in)."""
        while not self._queue.empty():
            self._queue.get_nowait()
        self._resampler = None
        self.open = False

    async def stream(self, text: str = "") -> AsyncIterator[SpeechPiece]:
        """The pieces of the next utterance until its end; `text` is not used (the voice
        assistant's words come with its pieces)."""
        while (piece := await self._queue.get()) is not _END:
            yield piece
