"""`EspeakTTS`: speech from the `espeak-ng` program (Debian package `espeak-ng`).

Robotic but instant, offline and free: the default voice. Each sentence is synthesized by its own
`espeak-ng --stdout` call, so the first sentence can play while the rest is made; the 22,050 Hz
WAV it writes is resampled to 16 kHz, one resampler for the whole reply so sentences join exactly.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import struct
from collections.abc import AsyncIterator

import numpy as np

from flowact.agents.base import SpeechPiece
from flowact.schemas.agent_settings import AgentSettings
from flowact.schemas.pcm import StreamResampler, float_to_s16, s16_to_float

SENTENCE = re.compile(r"[^.!?;:]+[.!?;:]*")


class TTSError(RuntimeError):
    """espeak-ng is missing or failed."""


class EspeakTTS:
    """espeak-ng speech, a sentence per piece, at 16 kHz."""

    def __init__(
        self, voice: str = "en-us", words_per_minute: int = 165, binary: str = "espeak-ng"
    ) -> None:
        self.voice = voice
        self.words_per_minute = words_per_minute
        self.binary = shutil.which(binary)
        if self.binary is None:
            raise TTSError(
                f"{binary!r} is not installed: apt-get install espeak-ng "
                "(or brew install espeak-ng), or set agent.tts to 'passthrough'"
            )

    @classmethod
    def from_settings(cls, settings: AgentSettings) -> EspeakTTS:
        return cls(settings.voice, settings.words_per_minute)

    async def stream(self, text: str) -> AsyncIterator[SpeechPiece]:
        resampler: StreamResampler | None = None
        sentences = split_sentences(text)
        for i, sentence in enumerate(sentences):
            rate, pcm = await self.synthesize(sentence)
            resampler = resampler or StreamResampler(rate)
            out = resampler.push(s16_to_float(pcm))
            if i == len(sentences) - 1:
                out = np.concatenate([out, resampler.flush()])
            yield SpeechPiece(float_to_s16(out), sentence)

    async def synthesize(self, text: str) -> tuple[int, bytes]:
        """(sample rate, s16le mono pcm) of `text` as espeak-ng says it."""
        assert self.binary is not None
        proc = await asyncio.create_subprocess_exec(
            self.binary, "--stdout", "--stdin", "-v", self.voice, "-s", str(self.words_per_minute),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            wav, err = await proc.communicate(text.encode())
        except asyncio.CancelledError:
            proc.kill()
            await proc.wait()  # reap it now, not when the loop that owns its pipes is gone
            raise
        if proc.returncode != 0:
            raise TTSError(f"espeak-ng failed ({proc.returncode}): {err.decode(errors='replace')}")
        return parse_wav(wav)


def split_sentences(text: str) -> list[str]:
    """Sentences (with their punctuation) of `text`; the whole text when it has none."""
    parts = [s.strip() for s in SENTENCE.findall(text) if s.strip(" .!?;:\n\t")]
    return parts or [text.strip() or "."]


def parse_wav(wav: bytes) -> tuple[int, bytes]:
    """(rate, pcm) of a 16-bit mono WAV written to a pipe.

    Written to a pipe, espeak-ng cannot seek back to fill in the sizes, so the header's sizes
    are placeholders: the data runs to the end of the file whatever the header says.
    """
    if wav[:4] != b"RIFF" or wav[8:12] != b"WAVE":
        raise TTSError("espeak-ng did not write a WAV file")
    pos, rate = 12, None
    while pos + 8 <= len(wav):
        chunk, size = wav[pos : pos + 4], struct.unpack("<I", wav[pos + 4 : pos + 8])[0]
        if chunk == b"fmt ":
            _fmt, channels, rate, _, _, bits = struct.unpack("<HHIIHH", wav[pos + 8 : pos + 24])
            if channels != 1 or bits != 16:
                raise TTSError(f"expected 16-bit mono, got {channels} channels of {bits} bits")
        elif chunk == b"data":
            if rate is None:
                raise TTSError("WAV data before its format")
            data = wav[pos + 8 :]
            return rate, data[: len(data) - len(data) % 2]
        pos += 8 + size
    raise TTSError("WAV without data")
