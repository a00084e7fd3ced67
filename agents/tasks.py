"""`Background`: the agent's long work (writing a reply, playing speech) off the graph's path.

A graph run must be quick, so that the user's voice is heard while the agent thinks or talks.
Long work runs here as tasks; each reports back by posting an event to the agent, which the
graph handles like any other. Cancelling a task (barge-in) means its event never comes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence

import structlog

from flowact.agents.base import Responder, ResponderError, SpeechPiece, Turn
from flowact.agents.events import AgentEvent, Reply, SpeechPublished
from flowact.agents.speaker import Speaker

log = structlog.get_logger(__name__)

FALLBACK_REPLY = "Sorry, I lost my train of thought. Could you say that again?"


class Background:
    """At most one reply and one utterance in progress; results posted as events."""

    def __init__(self, post: Callable[[AgentEvent], None]) -> None:
        self.post = post
        self._reply: asyncio.Task[None] | None = None
        self._speech: asyncio.Task[None] | None = None

    def think(self, responder: Responder, history: Sequence[Turn], turn: int) -> None:
        """Write the reply to user turn `turn`; posts `Reply`, with an apology when it fails."""

        async def run() -> None:
            try:
                text = await responder.reply(list(history))
            except ResponderError as err:
                log.error("responder failed; apologizing instead", error=str(err), turn=turn)
                text = FALLBACK_REPLY
            except Exception:  # noqa: BLE001 - a responder bug must not leave the agent thinking
                log.exception("responder raised; apologizing instead", turn=turn)
                text = FALLBACK_REPLY
            self.post(Reply(turn, text))

        self.cancel_reply()
        self._reply = asyncio.create_task(run())

    def speak(
        self,
        speaker: Speaker,
        utterance: str,
        start: int,
        pieces: AsyncIterator[SpeechPiece],
        *,
        captioned: bool,
    ) -> None:
        """Play an utterance; posts `SpeechPublished` once every segment is on the bus."""

        async def run() -> None:
            try:
                spoken = await speaker.speak(utterance, start, pieces, captioned=captioned)
            except Exception:  # noqa: BLE001 - e.g. the bus is down: stop speaking, do not hang
                log.exception("publishing speech failed", utterance=utterance)
                self.post(SpeechPublished(utterance, start, ""))
                return
            self.post(SpeechPublished(spoken.utterance, spoken.end, spoken.text))

        self.cancel_speech()
        self._speech = asyncio.create_task(run())

    def cancel_reply(self) -> None:
        if self._reply is not None:
            self._reply.cancel()

    def cancel_speech(self) -> None:
        if self._speech is not None:
            self._speech.cancel()

    async def close(self) -> None:
        for task in (self._reply, self._speech):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
