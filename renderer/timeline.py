"""A session's media timeline: audio and behavior prompts aligned to 0.48 s chunk windows.

Pure bookkeeping on the session clock, no torch and no I/O. The renderer asks `plan(k)` for the
conditioning of chunk k while k is still in the denoising stream (so late audio and new prompts
still reach it), and calls `emitted(k)` when chunk k leaves; that moves the playhead and returns
the utterance events whose start or end falls in the chunk.
"""

from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass, field

import numpy as np
import structlog

from flowact.schemas import timebase as tb
from flowact.schemas.messages import AudioSegment, BehaviorPrompt, Channel, UtteranceEvent
from flowact.schemas.pcm import StreamResampler, s16_to_float

log = structlog.get_logger(__name__)

CHANNELS: tuple[Channel, ...] = ("posture", "gesture", "face", "gaze")


class TimelineError(ValueError):
    """Input that does not fit the timeline; `field` names the message field to blame."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class ChunkPlan:
    """What chunk `index` is conditioned on. `audio`: float32 [SAMPLES_PER_CHUNK] at 16 kHz."""

    index: int
    audio: np.ndarray
    prompts: dict[Channel, tuple[str, ...]]
    speaking: bool


def silent_plan(index: int) -> ChunkPlan:
    """A chunk of silence with no prompts."""
    return ChunkPlan(index, np.zeros(tb.SAMPLES_PER_CHUNK, np.float32), {}, False)


@dataclass
class _Utterance:
    id: str
    start: int  # 16 kHz sample on the session clock
    cursor: int  # where the next appended sample goes
    resampler: StreamResampler
    next_seq: int = 0
    end: int | None = None
    started_sent: bool = False


@dataclass
class _Prompt:
    text: str
    start: int  # frame
    stop: int  # frame, exclusive
    channel: Channel


@dataclass
class SessionTimeline:
    """Agent speech and behavior prompts of one session, by chunk."""

    playhead: int = 0  # the next chunk to be emitted
    _audio: dict[int, np.ndarray] = field(default_factory=dict)
    _utterances: dict[str, _Utterance] = field(default_factory=dict)
    _prompts: dict[Channel, list[_Prompt]] = field(default_factory=lambda: defaultdict(list))
    _free_sample: int = 0  # where the next utterance without a start may begin
    _cut: deque[str] = field(default_factory=lambda: deque(maxlen=256))  # interrupted ids
    _changed: int | None = None  # the earliest chunk whose plan changed since `take_changed`
    dropped_samples: int = 0

    @property
    def playhead_sample(self) -> int:
        return self.playhead * tb.SAMPLES_PER_CHUNK

    @property
    def playhead_frame(self) -> int:
        return self.playhead * tb.FRAMES_PER_CHUNK

    # --- input -------------------------------------------------------------------------------

    def add_audio(self, segment: AudioSegment) -> None:
        """Place agent speech on the clock; user speech is not rendered and is ignored here.

        Raises TimelineError for a segment out of sequence or after its utterance ended.
        """
        if segment.speaker != "agent" or segment.utterance in self._cut:
            return  # the rest of an interrupted utterance is dropped, as barge-in asks
        utt = self._utterances.get(segment.utterance)
        if utt is None:
            if segment.seq != 0:
                raise TimelineError(
                    "seq", f"utterance {segment.utterance!r} starts at seq {segment.seq}, not 0"
                )
            start = self._place(segment)
            utt = _Utterance(segment.utterance, start, start, StreamResampler(segment.rate))
            self._utterances[segment.utterance] = utt
        if utt.end is not None:
            raise TimelineError("utterance", f"utterance {segment.utterance!r} already ended")
        if segment.seq != utt.next_seq:
            raise TimelineError(
                "seq", f"seq {segment.seq} of {segment.utterance!r}; expected {utt.next_seq}"
            )
        if segment.rate != utt.resampler.rate:
            raise TimelineError("rate", f"rate changed within utterance {segment.utterance!r}")
        utt.next_seq += 1
        samples = utt.resampler.push(s16_to_float(segment.pcm))
        if segment.end:
            samples = np.concatenate([samples, utt.resampler.flush()])
        self._write(utt.cursor, samples)
        utt.cursor += len(samples)
        self._free_sample = max(self._free_sample, utt.cursor)
        if segment.end:
            utt.end = utt.cursor

    def add_prompt(self, prompt: BehaviorPrompt) -> None:
        """Schedule a behavior; without a start it begins at the playhead."""
        start = prompt.start_frame if prompt.start_frame is not None else self.playhead_frame
        start = max(start, self.playhead_frame)
        new = _Prompt(prompt.text, start, start + prompt.duration_frames, prompt.channel)
        lane = self._prompts[prompt.channel]
        if prompt.overlap == "replace":
            for old in lane:
                if old.start < start < old.stop:
                    old.stop = start
                elif old.start >= start:
                    old.stop = old.start  # a later prompt on this channel is replaced too
        lane[:] = [p for p in lane if p.stop > p.start] + [new]
        self._touch(tb.chunk_of_frame(start))

    def interrupt(self, from_sample: int | None = None) -> tuple[int, list[UtteranceEvent]]:
        """Drop agent speech from `from_sample` (default: the playhead) on.

        Returns the first chunk whose audio changed and an `interrupted` event per utterance cut.
        """
        cut = max(from_sample or 0, self.playhead_sample)
        events = []
        for utt in list(self._utterances.values()):
            if utt.end is None or utt.end > cut:
                events.append(self._event("interrupted", utt.id, max(cut, utt.start)))
                self._cut.append(utt.id)
                del self._utterances[utt.id]
        first = tb.chunk_of_sample(cut)
        for index in [k for k in self._audio if k >= first]:
            offset = cut - index * tb.SAMPLES_PER_CHUNK
            self._audio[index][max(0, offset) :] = 0.0
        self._free_sample = cut
        return first, events

    def take_changed(self) -> int | None:
        """The earliest chunk whose plan changed since the last call (None: none did)."""
        changed, self._changed = self._changed, None
        return changed

    def _touch(self, index: int) -> None:
        self._changed = index if self._changed is None else min(self._changed, index)

    # --- output ------------------------------------------------------------------------------

    def plan(self, index: int) -> ChunkPlan:
        """The conditioning of chunk `index` as known now."""
        audio = self._audio.get(index)
        window = tb.chunk_samples(index)
        speaking = any(
            u.start < window.stop and (u.end is None or u.end > window.start)
            for u in self._utterances.values()
        )
        centre = tb.chunk_frames(index)[tb.FRAMES_PER_CHUNK // 2]
        prompts = {
            ch: tuple(p.text for p in self._prompts.get(ch, ()) if p.start <= centre < p.stop)
            for ch in CHANNELS
        }
        silent = np.zeros(tb.SAMPLES_PER_CHUNK, dtype=np.float32)
        return ChunkPlan(index, silent if audio is None else audio.copy(), prompts, speaking)

    def emitted(self, index: int) -> list[UtteranceEvent]:
        """Chunk `index` left the renderer: advance, free its audio, report utterance events."""
        if index != self.playhead:
            raise ValueError(f"chunk {index} emitted out of order; expected {self.playhead}")
        window = tb.chunk_samples(index)
        events = []
        for utt in list(self._utterances.values()):
            if not utt.started_sent and utt.start < window.stop:
                events.append(self._event("started", utt.id, utt.start))
                utt.started_sent = True
            if utt.end is not None and utt.end <= window.stop:
                events.append(self._event("finished", utt.id, utt.end))
                del self._utterances[utt.id]
        self._audio.pop(index, None)
        self.playhead = index + 1
        for lane in self._prompts.values():
            lane[:] = [p for p in lane if p.stop > self.playhead_frame]
        return events

    # --- helpers -----------------------------------------------------------------------------

    def _place(self, segment: AudioSegment) -> int:
        if segment.start_sample is not None:
            return segment.start_sample * tb.SAMPLE_RATE // segment.rate
        return max(self._free_sample, self.playhead_sample)

    def _write(self, start: int, samples: np.ndarray) -> None:
        late = max(0, min(len(samples), self.playhead_sample - start))
        if late:
            self.dropped_samples += late
            log.warning("late audio dropped", samples=late, playhead=self.playhead)
            start, samples = start + late, samples[late:]
        if len(samples):
            self._touch(tb.chunk_of_sample(start))
        while len(samples):
            index, offset = divmod(start, tb.SAMPLES_PER_CHUNK)
            take = min(len(samples), tb.SAMPLES_PER_CHUNK - offset)
            chunk = self._audio.setdefault(index, np.zeros(tb.SAMPLES_PER_CHUNK, np.float32))
            chunk[offset : offset + take] += samples[:take]
            start, samples = start + take, samples[take:]

    @staticmethod
    def _event(phase: str, utterance: str, sample: int) -> UtteranceEvent:
        return UtteranceEvent(
            phase=phase,  # type: ignore[arg-type]
            utterance=utterance,
            sample=sample,
            frame=sample // tb.SAMPLES_PER_FRAME,
        )
