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
from flowact.schemas import timebase as tb

log = structlog.get_logger(__name__)

FALLBACK_REPLY = "Sorry, I lost my train of thought. Could you say that again?"


class Background:
    """One reply being written, and utterances played one after another; results are posted
    as events."""

    def __init__(self, post: Callable[[AgentEvent], None]) -> None:
        self.post = post
        self._reply: asyncio.Task[None] | None = None
        self._speech: asyncio.Task[int] | None = None  # the last utterance; gives its end

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
        earliest: int,
        pieces: AsyncIterator[SpeechPiece],
        *,
        captioned: bool,
    ) -> None:
        """Play an utterance from `earliest` (or after the one still playing, whichever is
        later, on a frame boundary); posts `SpeechPublished` once every segment is out."""
        previous = self._speech

        async def run() -> int:
            after = await _end_of(previous)
            start = _next_frame(max(earliest, after))
            try:
                spoken = await speaker.speak(utterance, start, pieces, captioned=captioned)
            except Exception:  # noqa: BLE001 - e.g. the bus is down: stop speaking, do not hang
                log.exception("publishing speech failed", utterance=utterance)
                self.post(SpeechPublished(utterance, start, ""))
                return start
            self.post(SpeechPublished(spoken.utterance, spoken.end, spoken.text))
            return spoken.end

        self._speech = asyncio.create_task(run())

    def cancel_reply(self) -> None:
        if self._reply is not None:
            self._reply.cancel()

    def cancel_speech(self) -> None:
        """Stop every utterance, the one playing and those waiting for it."""
        if self._speech is not None:
            self._speech.cancel()  # a waiting utterance cancels the one it waits for, too

    async def close(self) -> None:
        for task in (self._reply, self._speech):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


async def _end_of(task: asyncio.Task[int] | None) -> int:
    """Where the utterance of `task` ends (0 when there is none or it failed)."""
    if task is None:
        return 0
    try:
        return await asyncio.shield(task) if not task.done() else task.result()
    except asyncio.CancelledError:
        if not task.cancelled():
            task.cancel()  # we were cancelled while waiting: the earlier utterance stops too
            raise
        return 0


def _next_frame(sample: int) -> int:
    return -(-sample // tb.SAMPLES_PER_FRAME) * tb.SAMPLES_PER_FRAME
