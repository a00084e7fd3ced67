"""The events the agent graph handles, one graph run each.

Inputs from outside (user text and voice, handed-in speech, interrupts), results of the agent's
own background work (a reply, an utterance fully published) and clock ticks.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class UserText:
    """The user said or typed `text` (a final transcript)."""

    text: str


@dataclass(frozen=True)
class UserAudio:
    """A piece of the user's voice, 16 kHz s16le mono."""

    pcm: bytes


@dataclass(frozen=True)
class HandedSpeech:
    """A piece of reply speech from a voice assistant, at `rate`; `end` closes the reply."""

    pcm: bytes
    rate: int
    text: str = ""
    end: bool = False


@dataclass(frozen=True)
class Reply:
    """The responder answered user turn `turn`."""

    turn: int
    text: str


@dataclass(frozen=True)
class SpeechPublished:
    """Every segment of `utterance` is on the bus; it plays until sample `end`."""

    utterance: str
    end: int
    text: str


@dataclass(frozen=True)
class Interrupt:
    """Stop talking now (a voice assistant or a person asked)."""


@dataclass(frozen=True)
class Tick:
    """Time passed: look at the clock."""


AgentEvent = UserText | UserAudio | HandedSpeech | Reply | SpeechPublished | Interrupt | Tick
