"""The roles the conversation agent is built from, each a small protocol.

Audio inside the agent is 16 kHz s16le mono (`timebase.SAMPLE_RATE`) unless a name says otherwise;
positions are integer samples on the session clock. Implementations live one per file and are
picked by name in `registry.py`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from flowact.schemas.messages import Message


@dataclass(frozen=True)
class Turn:
    """One line of the conversation."""

    role: Literal["user", "assistant"]
    text: str


@dataclass(frozen=True)
class SpeechPiece:
    """A piece of synthesized or handed-in speech: 16 kHz s16le mono, and the words it says
    when they are known (pieces are usually sentences)."""

    pcm: bytes
    text: str = ""


class ResponderError(RuntimeError):
    """The responder could not produce a reply (timeout, HTTP error, empty answer)."""


class MissingDependency(ModuleNotFoundError):
    """An optional package an implementation needs is not installed; the message names the
    extra that installs it."""


@runtime_checkable
class Responder(Protocol):
    """Writes the agent's replies.

    `reply` gets the conversation so far, oldest first, the last turn the user's, and returns
    the next thing the agent says: plain speakable text, a few sentences. It returns within the
    implementation's time limit (seconds) or raises `ResponderError`.
    """

    async def reply(self, history: Sequence[Turn]) -> str: ...


@runtime_checkable
class TTS(Protocol):
    """Turns reply text into speech.

    `stream` yields `SpeechPiece`s in speaking order as soon as each is ready (the first one
    should come quickly: it decides how long the user waits). Audio is 16 kHz s16le mono, the
    pieces join without gaps; pauses between sentences are part of the audio.
    """

    def stream(self, text: str) -> AsyncIterator[SpeechPiece]: ...


@runtime_checkable
class VAD(Protocol):
    """Voice activity detection on fixed frames.

    `is_speech` judges one frame of exactly `frame_samples` samples of 16 kHz s16le mono.
    """

    frame_samples: int

    def is_speech(self, frame: bytes) -> bool: ...


@runtime_checkable
class SessionClock(Protocol):
    """The session's playback position in 16 kHz samples; it only moves forward in normal use."""

    def now_sample(self) -> int: ...

    async def wait_until(self, sample: int) -> None:
        """Return once `now_sample() >= sample`."""
        ...

    def sync(self, sample: int) -> None:
        """Playback is at `sample` now (the renderer said so, or the session just started)."""
        ...


@runtime_checkable
class Outbox(Protocol):
    """Where the agent's messages go (the session's streams). `send` gives each message a
    producer id, so a retried send cannot duplicate."""

    async def send(self, message: Message) -> None: ...


def recent(history: Sequence[Turn], turns: int) -> list[Turn]:
    """The last `turns` turns, starting with a user turn when there is one to start with."""
    kept = list(history[-turns:])
    while kept and kept[0].role != "user" and len(kept) > 1:
        kept.pop(0)
    return kept
