"""The `Planner` role: a window of conversation in, timed behavior prompts out.

The paper (section 2.6) feeds the latest speech and the reference image to a multimodal model at
short regular intervals and lets its answer steer the renderer. Here that interval is a window of
1-2 s of speech on the session clock; the agent cuts windows and calls `Planner.plan` for each.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from flowact.schemas import timebase as tb
from flowact.schemas.messages import AgentState, BehaviorPrompt, Channel, Speaker

SOURCE = "planner"


@dataclass(frozen=True)
class PlanRequest:
    """One window to plan for, on the session clock.

    The window covers video frames [start_frame, start_frame + frames). `pcm` is the speech in it
    (16 kHz s16le mono, the window's first sample at `start_frame * SAMPLES_PER_FRAME`; empty when
    nobody speaks), `text` the words said in it as far as known. `first`/`last` mark the first and
    last window of an utterance or of a state. `image` is the reference image (PNG or JPEG bytes).
    """

    start_frame: int
    frames: int
    state: AgentState
    speaker: Speaker | None = None
    text: str = ""
    pcm: bytes = b""
    first: bool = False
    last: bool = False
    image: bytes | None = None

    def __post_init__(self) -> None:
        if self.start_frame < 0 or self.frames <= 0:
            raise ValueError(f"bad window: start {self.start_frame}, {self.frames} frames")
        if len(self.pcm) > self.frames * tb.SAMPLES_PER_FRAME * tb.BYTES_PER_SAMPLE:
            raise ValueError("pcm is longer than the window")

    @property
    def end_frame(self) -> int:
        return self.start_frame + self.frames

    @property
    def question(self) -> bool:
        return self.text.rstrip().endswith("?")


@runtime_checkable
class Planner(Protocol):
    """Plans behaviors for one window at a time.

    Contract of `plan`:
    - every prompt starts inside the window: `start_frame` (an integer video frame on the session
      clock) in [request.start_frame, request.end_frame); `duration_frames` >= 1 and may run past
      the window; `source` is "planner";
    - it returns within the implementation's own time limit (seconds, not the window's length:
      the agent plans ahead of playback) and does not raise when a model fails or answers
      nonsense: it falls back and logs;
    - it may return no prompts; prompts on one channel with `replace` do not overlap each other.
    """

    async def plan(self, request: PlanRequest) -> list[BehaviorPrompt]: ...


def prompt(
    request: PlanRequest,
    text: str,
    channel: Channel,
    offset_frames: int = 0,
    duration_frames: int = 2 * tb.FPS,
    overlap: str = "replace",
) -> BehaviorPrompt:
    """A prompt in `request`'s window, its start clamped into the window."""
    offset = min(max(0, offset_frames), request.frames - 1)
    return BehaviorPrompt(
        text=text,
        channel=channel,
        start_frame=request.start_frame + offset,
        duration_frames=max(1, duration_frames),
        overlap=overlap,  # type: ignore[arg-type]
        source=SOURCE,
    )


def select(preferred: list[BehaviorPrompt], limit: int) -> list[BehaviorPrompt]:
    """Up to `limit` prompts taken in order of preference, sorted by start.

    A `replace` prompt whose time overlaps one already taken on its channel is skipped: two
    gestures that cut each other off read as twitches, not gestures.
    """
    taken: list[BehaviorPrompt] = []
    for p in preferred:
        if len(taken) == limit:
            break
        start = p.start_frame or 0
        clash = any(
            q.channel == p.channel
            and start < (q.start_frame or 0) + q.duration_frames
            and (q.start_frame or 0) < start + p.duration_frames
            for q in taken
        )
        if not (clash and p.overlap == "replace"):
            taken.append(p)
    return sorted(taken, key=lambda p: (p.start_frame or 0, p.channel))
