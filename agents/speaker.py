"""`Speaker`: one utterance of speech onto the bus, on the session clock.

Two coroutines per utterance. The producer pulls speech from the TTS as fast as it comes, cuts it
into segments and into planner windows (so behaviors are planned well before they play); the
publisher sends each segment once playback is within `lead` of it, so a barge-in leaves little
unplayed audio behind. Segments are contiguous: segment n starts where n-1 ended, the first at the
utterance's start; the last one carries `end`.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

import structlog

from flowact.agents.base import Outbox, SessionClock, SpeechPiece
from flowact.agents.behavior import BehaviorScheduler
from flowact.planner.base import PlanRequest
from flowact.schemas import timebase as tb
from flowact.schemas.messages import AudioSegment, TranscriptEvent

log = structlog.get_logger(__name__)

MIN_SEGMENT_MS = 20
WORD = re.compile(r"\S+")
B = tb.BYTES_PER_SAMPLE


@dataclass(frozen=True)
class _Segment:
    start: int  # sample on the session clock
    pcm: bytes
    last: bool


@dataclass(frozen=True)
class Spoken:
    """What `Speaker.speak` published: samples [start, end) and the words said."""

    utterance: str
    start: int
    end: int
    text: str


class Speaker:
    """Publishes utterances as AudioSegments and plans their behaviors."""

    def __init__(
        self,
        outbox: Outbox,
        clock: SessionClock,
        behaviors: BehaviorScheduler,
        *,
        segment_ms: int = 240,
        lead_ms: int = 960,
        window_ms: int = 1500,
    ) -> None:
        self.outbox = outbox
        self.clock = clock
        self.behaviors = behaviors
        self.segment = segment_ms * tb.SAMPLE_RATE // 1000
        self.min_segment = MIN_SEGMENT_MS * tb.SAMPLE_RATE // 1000
        self.lead = lead_ms * tb.SAMPLE_RATE // 1000
        self.window = window_ms * tb.SAMPLE_RATE // 1000 // tb.SAMPLES_PER_FRAME  # frames

    async def speak(
        self, utterance: str, start: int, pieces: AsyncIterator[SpeechPiece], *, captioned: bool
    ) -> Spoken:
        """Publish `pieces` as utterance `utterance` from sample `start` (a frame boundary).

        `captioned`: a transcript of the whole reply was already sent; otherwise one is sent at
        the end with the words the pieces carried. Cancelling stops publishing at once.
        """
        if start % tb.SAMPLES_PER_FRAME:
            raise ValueError(f"an utterance starts on a frame boundary, not at sample {start}")
        queue: asyncio.Queue[_Segment] = asyncio.Queue()
        words: list[tuple[int, str]] = []
        producer = asyncio.create_task(self._produce(start, pieces, queue, words))
        try:
            end = await self._publish(utterance, queue, words)
        finally:
            producer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await producer
        text = " ".join(w for _, w in words)
        if not captioned and text:
            await self.outbox.send(TranscriptEvent(speaker="agent", text=text, utterance=utterance))
        return Spoken(utterance, start, end, text)

    async def _produce(
        self,
        start: int,
        pieces: AsyncIterator[SpeechPiece],
        queue: asyncio.Queue[_Segment],
        words: list[tuple[int, str]],
    ) -> None:
        pending = bytearray()  # speech not cut into segments yet; starts at `cursor`
        cursor = start
        windows = _Windows(start // tb.SAMPLES_PER_FRAME, self.window, self.behaviors)
        try:
            async for piece in pieces:
                words.extend(_timed_words(piece, cursor + len(pending) // B))
                windows.add(piece.pcm, words)
                pending += piece.pcm
                # Keep at least a minimal segment back: it may turn out to be the last one.
                while len(pending) // B >= self.segment + self.min_segment:
                    cut = self.segment * B
                    queue.put_nowait(_Segment(cursor, bytes(pending[:cut]), last=False))
                    del pending[:cut]
                    cursor += self.segment
        except Exception:  # noqa: BLE001 - end the utterance cleanly with what was made
            log.exception("speech synthesis failed; the utterance ends early")
        windows.flush(words)
        queue.put_nowait(_Segment(cursor, bytes(pending), last=True))

    async def _publish(
        self, utterance: str, queue: asyncio.Queue[_Segment], words: list[tuple[int, str]]
    ) -> int:
        seq = 0
        while True:
            segment = await queue.get()
            await self.clock.wait_until(segment.start - self.lead)
            samples = len(segment.pcm) // B
            said = [w for at, w in words if segment.start <= at < segment.start + samples]
            await self.outbox.send(
                AudioSegment(
                    utterance=utterance,
                    seq=seq,
                    start_sample=segment.start,
                    pcm=segment.pcm,
                    end=segment.last,
                    text=" ".join(said) or None,
                )
            )
            seq += 1
            if segment.last:
                return segment.start + samples


class _Windows:
    """Cuts speech into planner windows of `frames` video frames and submits each."""

    def __init__(self, start_frame: int, frames: int, behaviors: BehaviorScheduler) -> None:
        self.start_frame = start_frame
        self.frames = frames
        self.behaviors = behaviors
        self.pcm = bytearray()
        self.count = 0

    def add(self, pcm: bytes, words: list[tuple[int, str]]) -> None:
        self.pcm += pcm
        size = self.frames * tb.SAMPLES_PER_FRAME * B
        while len(self.pcm) > size:  # strictly more: the final window is submitted by flush
            self._submit(bytes(self.pcm[:size]), words, last=False)
            del self.pcm[:size]

    def flush(self, words: list[tuple[int, str]]) -> None:
        if self.pcm or self.count == 0:
            self._submit(bytes(self.pcm), words, last=True)
        self.pcm.clear()

    def _submit(self, pcm: bytes, words: list[tuple[int, str]], *, last: bool) -> None:
        frames = max(1, -(-len(pcm) // B // tb.SAMPLES_PER_FRAME))
        first_sample = self.start_frame * tb.SAMPLES_PER_FRAME
        stop = first_sample + frames * tb.SAMPLES_PER_FRAME
        text = " ".join(w for at, w in words if first_sample <= at < stop)
        request = PlanRequest(
            start_frame=self.start_frame,
            frames=frames,
            state="speaking",
            speaker="agent",
            text=text,
            pcm=pcm,
            first=self.count == 0,
            last=last,
        )
        self.behaviors.submit(request)
        self.start_frame += frames
        self.count += 1


def _timed_words(piece: SpeechPiece, at: int) -> list[tuple[int, str]]:
    """The piece's words with estimated start samples, spread over it by character count."""
    words = WORD.findall(piece.text)
    total = sum(len(w) + 1 for w in words)
    samples = len(piece.pcm) // B
    out, seen = [], 0
    for word in words:
        out.append((at + samples * seen // total, word))
        seen += len(word) + 1
    return out
