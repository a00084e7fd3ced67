"""Every message that crosses a process boundary.

One discriminated union on `type`, parsed through one `TypeAdapter` (see `codec.py`). Media time is
an integer on the session clock of `timebase.py`: audio in 16 kHz samples, video in 25 fps frames.
The session id is not a field: it is part of the stream a message travels on (`streams.py`), except
for `SessionRequest`, which travels on the shared sessions stream.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from flowact.schemas import timebase as tb

SCHEMA_VERSION = 1

# Limits that protect the renderer from a message that would stall or exhaust it.
SAMPLE_RATES = (8_000, 16_000, 22_050, 24_000, 32_000, 44_100, 48_000)
MAX_SEGMENT_MS = 2_000
MAX_PROMPT_CHARS = 300
MAX_PROMPT_FRAMES = 60 * tb.FPS
MAX_IMAGE_BYTES = 8 * 1024 * 1024
MAX_TEXT_CHARS = 2_000
MAX_ID_CHARS = 128

Channel = Literal["posture", "gesture", "face", "gaze"]
Overlap = Literal["replace", "overlay"]
Speaker = Literal["agent", "user"]
AgentState = Literal["idle", "listening", "thinking", "speaking"]
Codec = Literal["jpeg", "raw"]

Identifier = Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS, pattern=r"^[\w.:-]+$")]
# Session ids name streams (`flowact:{sid}:audio`), so they hold no colon.
SessionId = Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS, pattern=r"^[\w.-]+$")]


def _check_image(image: bytes) -> bytes:
    if len(image) > MAX_IMAGE_BYTES:
        raise ValueError(f"image is {len(image)} bytes, over {MAX_IMAGE_BYTES}")
    if not (image.startswith(b"\x89PNG\r\n\x1a\n") or image.startswith(b"\xff\xd8\xff")):
        raise ValueError("image is neither PNG nor JPEG")
    return image


ImageBytes = Annotated[bytes, AfterValidator(_check_image)]


def _exactly(expected: int, what: str) -> AfterValidator:
    def check(value: int) -> int:
        if value != expected:
            raise ValueError(f"{what} must be {expected}, got {value}")
        return value

    return AfterValidator(check)


class Message(BaseModel):
    """Fields every message carries.

    `producer_id` is the producer's idempotency key, `"{producer}:{seq}"`: the bus drops a retried
    publish that carries the same key, so a producer may retry without duplicating.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Annotated[int, _exactly(SCHEMA_VERSION, "schema version")] = SCHEMA_VERSION
    producer_id: Identifier | None = None


class AudioSegment(Message):
    """A piece of speech, s16le mono PCM, 20-500 ms is typical (at most `MAX_SEGMENT_MS`).

    `start_sample` is on the session clock at `rate`; `None` appends right after the previous
    segment of the same utterance. Sequence numbers count from 0 within an utterance.
    """

    type: Literal["audio"] = "audio"
    utterance: Identifier
    seq: int = Field(ge=0)
    start_sample: int | None = Field(default=None, ge=0)
    rate: int = tb.SAMPLE_RATE
    pcm: bytes = b""
    speaker: Speaker = "agent"
    end: bool = False
    text: str | None = Field(default=None, max_length=MAX_TEXT_CHARS)

    @field_validator("rate")
    @classmethod
    def _known_rate(cls, rate: int) -> int:
        if rate not in SAMPLE_RATES:
            raise ValueError(f"sample rate {rate} Hz is not one of {SAMPLE_RATES}")
        return rate

    @model_validator(mode="after")
    def _pcm_fits(self) -> AudioSegment:
        if len(self.pcm) % tb.BYTES_PER_SAMPLE:
            raise ValueError(f"pcm has {len(self.pcm)} bytes, not a whole number of s16le samples")
        limit = self.rate * tb.BYTES_PER_SAMPLE * MAX_SEGMENT_MS // 1000
        if len(self.pcm) > limit:
            raise ValueError(
                f"pcm holds {len(self.pcm)} bytes, over {MAX_SEGMENT_MS} ms at {self.rate} Hz "
                f"({limit} bytes); split it into smaller segments"
            )
        if not self.pcm and not self.end:
            raise ValueError("pcm is empty; an empty segment must mark the end of the utterance")
        return self

    @property
    def samples(self) -> int:
        """Number of samples at `rate`."""
        return len(self.pcm) // tb.BYTES_PER_SAMPLE


class BehaviorPrompt(Message):
    """A timed behavior for the avatar: "nods slowly", "waves with the right hand".

    `start_frame` is a video frame on the session clock (`None`: as soon as possible) and
    `duration_frames` how long it holds. A person may type `duration` and `start` in seconds
    instead; they become frames here. `replace` ends what runs on the same channel, `overlay`
    runs beside it.
    """

    type: Literal["behavior"] = "behavior"
    text: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    start_frame: int | None = Field(default=None, ge=0)
    duration_frames: int = Field(default=2 * tb.FPS, gt=0, le=MAX_PROMPT_FRAMES)
    channel: Channel = "gesture"
    overlap: Overlap = "replace"
    source: Identifier = "user"

    # Seconds, for people typing entries by hand; they become the frame fields and are not sent on.
    duration: float | None = Field(default=None, gt=0, le=MAX_PROMPT_FRAMES / tb.FPS, exclude=True)
    start: float | None = Field(default=None, ge=0, exclude=True)

    @model_validator(mode="after")
    def _seconds_to_frames(self) -> BehaviorPrompt:
        for seconds, frames, field in (
            (self.duration, tb.seconds_to_frames, "duration_frames"),
            (self.start, lambda s: round(s * tb.FPS), "start_frame"),
        ):
            if seconds is not None:
                if field in self.model_fields_set:
                    raise ValueError(f"give {field} or its form in seconds, not both")
                object.__setattr__(self, field, frames(seconds))
        return self

    @field_validator("text")
    @classmethod
    def _not_blank(cls, text: str) -> str:
        text = text.strip()
        if not text:
            raise ValueError("text is blank")
        return text


class StartControl(Message):
    """Start (or restart) rendering with a reference image (PNG or JPEG bytes).

    No image: the renderer's default avatar of the preset.
    """

    type: Literal["start"] = "start"
    image: ImageBytes | None = None
    preset: Identifier | None = None
    seed: int = Field(default=0, ge=0)


class StopControl(Message):
    """Stop rendering and release the session."""

    type: Literal["stop"] = "stop"


class InterruptControl(Message):
    """Barge-in: drop agent audio not yet rendered from `from_sample` on (`None`: now)."""

    type: Literal["interrupt"] = "interrupt"
    from_sample: int | None = Field(default=None, ge=0)


class ConfigureControl(Message):
    """Change a running session's settings; unset fields keep their value."""

    type: Literal["configure"] = "configure"
    refine_every: int | None = Field(default=None, ge=0)
    jpeg_quality: int | None = Field(default=None, ge=10, le=100)
    seed: int | None = Field(default=None, ge=0)


class VideoChunk(Message):
    """Chunk `index` of a session's video: 12 frames and exactly the 7,680 samples they cover."""

    type: Literal["video"] = "video"
    index: int = Field(ge=0)
    first_frame: int = Field(ge=0)
    fps: Annotated[int, _exactly(tb.FPS, "fps")] = tb.FPS
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    codec: Codec = "jpeg"
    frames: list[bytes]
    audio: bytes
    audio_rate: Annotated[int, _exactly(tb.SAMPLE_RATE, "audio_rate")] = tb.SAMPLE_RATE
    state: AgentState | None = None

    @model_validator(mode="after")
    def _one_chunk(self) -> VideoChunk:
        if self.first_frame != self.index * tb.FRAMES_PER_CHUNK:
            raise ValueError(
                f"first_frame {self.first_frame} is not index * {tb.FRAMES_PER_CHUNK} "
                f"= {self.index * tb.FRAMES_PER_CHUNK}"
            )
        if len(self.frames) != tb.FRAMES_PER_CHUNK:
            raise ValueError(f"a chunk has {tb.FRAMES_PER_CHUNK} frames, got {len(self.frames)}")
        want = tb.SAMPLES_PER_CHUNK * tb.BYTES_PER_SAMPLE
        if len(self.audio) != want:
            raise ValueError(f"audio has {len(self.audio)} bytes, a chunk carries {want}")
        if self.codec == "raw":
            raw = self.width * self.height * 3
            bad = [i for i, f in enumerate(self.frames) if len(f) != raw]
            if bad:
                raise ValueError(f"raw frames {bad} are not {self.width}x{self.height} RGB")
        return self


class StateEvent(Message):
    """The agent or the renderer changed state."""

    type: Literal["state"] = "state"
    actor: Literal["agent", "renderer", "director"] = "agent"
    state: AgentState | Literal["started", "stopped"]
    frame: int | None = Field(default=None, ge=0)


class UtteranceEvent(Message):
    """An utterance started or finished playing; `frame` is the playback position."""

    type: Literal["utterance"] = "utterance"
    phase: Literal["started", "finished", "interrupted"]
    utterance: Identifier
    frame: int = Field(ge=0)
    sample: int = Field(ge=0)


class ErrorEvent(Message):
    """Input that was rejected, naming the stream, entry, field and reason."""

    type: Literal["error"] = "error"
    reason: str = Field(max_length=MAX_TEXT_CHARS)
    stream: str | None = None
    entry_id: str | None = None
    field: str | None = None


class TranscriptEvent(Message):
    """What was said, for viewers and logs."""

    type: Literal["transcript"] = "transcript"
    speaker: Speaker
    text: str = Field(max_length=MAX_TEXT_CHARS)
    utterance: Identifier | None = None
    final: bool = True


class SessionRequest(Message):
    """Ask the renderer workers for a session; one worker of the group takes it."""

    type: Literal["session"] = "session"
    session: SessionId
    preset: Identifier | None = None
    image: ImageBytes | None = None
    seed: int = Field(default=0, ge=0)


Control = StartControl | StopControl | InterruptControl | ConfigureControl
Event = StateEvent | UtteranceEvent | ErrorEvent | TranscriptEvent
AnyMessage = Annotated[
    AudioSegment
    | BehaviorPrompt
    | StartControl
    | StopControl
    | InterruptControl
    | ConfigureControl
    | VideoChunk
    | StateEvent
    | UtteranceEvent
    | ErrorEvent
    | TranscriptEvent
    | SessionRequest,
    Field(discriminator="type"),
]
