"""The codec: hand-typed and program-made entries parse through the same models."""

import msgpack
import pytest

from flowact.schemas import codec
from flowact.schemas import messages as m
from flowact.schemas import timebase as tb
from flowact.schemas.streams import parse_stream, stream_name

BEHAVIOR = stream_name("demo", "behavior")


def _chunk(index: int = 3) -> m.VideoChunk:
    return m.VideoChunk(
        index=index,
        first_frame=index * tb.FRAMES_PER_CHUNK,
        width=32,
        height=32,
        frames=[bytes([i]) * 10 for i in range(tb.FRAMES_PER_CHUNK)],
        audio=b"\x01\x00" * tb.SAMPLES_PER_CHUNK,
    )


ROUND_TRIP = [
    m.AudioSegment(utterance="u1", seq=4, start_sample=640, pcm=b"\x01\x02" * 320, end=True),
    m.BehaviorPrompt(text="nods slowly", start_frame=30, duration_frames=40, channel="posture"),
    m.StartControl(image=b"\x89PNG\r\n\x1a\n" + b"\0" * 20, preset="tiny", seed=3),
    m.StopControl(producer_id="agent:1"),
    m.InterruptControl(from_sample=12_000),
    m.ConfigureControl(refine_every=4),
    _chunk(),
    m.StateEvent(state="speaking", frame=12),
    m.UtteranceEvent(phase="finished", utterance="u1", frame=120, sample=76_800),
    m.ErrorEvent(reason="bad", field="text", stream=BEHAVIOR, entry_id="1-0"),
    m.TranscriptEvent(speaker="user", text="hello there"),
    m.SessionRequest(session="demo", preset="tiny"),
]


@pytest.mark.parametrize("message", ROUND_TRIP, ids=lambda msg: msg.type)
def test_round_trip(message: m.Message) -> None:
    fields = codec.encode(message)
    assert all(isinstance(v, bytes) for v in fields.values())
    assert codec.decode(fields) == message


def test_scalars_travel_flat_and_binary_in_one_payload() -> None:
    fields = codec.encode(_chunk())
    assert fields["index"] == b"3" and fields["type"] == b"video"
    packed = msgpack.unpackb(fields[codec.PAYLOAD])
    assert set(packed) == {"frames", "audio"}


def test_hand_typed_behavior_in_seconds() -> None:
    prompt = codec.decode({b"text": b"waves with the right hand", b"duration": b"2"}, BEHAVIOR)
    assert isinstance(prompt, m.BehaviorPrompt)
    assert prompt.duration_frames == 2 * tb.FPS and prompt.start_frame is None
    assert b"duration" not in codec.encode(prompt)


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"text": "hi", "duration": "-1"}, "duration", "greater than 0"),
        ({"text": "   "}, "text", "blank"),
        ({"txt": "typo"}, "txt", "unknown field"),
        ({"text": "x", "channel": "legs"}, "channel", "posture"),
        ({"text": "x", "duration_frames": "soon"}, "duration_frames", "integer"),
        ({"type": "video", "text": "x"}, "type", "does not belong"),
        ({"text": "x", "payload": b"\xc1\xc1"}, "payload", "msgpack"),
        ({"text": b"\xff\xfe"}, "text", "UTF-8"),
        ({"text": "x", "schema_version": "2"}, "schema_version", "must be 1"),
    ],
)
def test_bad_entries_name_the_field(fields: dict, field: str, words: str) -> None:
    with pytest.raises(codec.MessageError) as err:
        codec.decode(fields, BEHAVIOR)
    assert err.value.field == field
    assert words in err.value.reason


def test_control_needs_a_type() -> None:
    with pytest.raises(codec.MessageError) as err:
        codec.decode({"from_sample": "3"}, stream_name("demo", "control"))
    assert err.value.field == "type"


def test_limits_protect_the_renderer() -> None:
    too_long = b"\0\0" * (16_000 * m.MAX_SEGMENT_MS // 1000 + 1)
    with pytest.raises(ValueError, match="split it"):
        m.AudioSegment(utterance="u", seq=0, pcm=too_long)
    with pytest.raises(ValueError, match="sample rate"):
        m.AudioSegment(utterance="u", seq=0, pcm=b"\0\0", rate=11_025)
    with pytest.raises(ValueError, match="whole number"):
        m.AudioSegment(utterance="u", seq=0, pcm=b"\0\0\0")
    with pytest.raises(ValueError, match="neither PNG nor JPEG"):
        m.StartControl(image=b"GIF89a")
    with pytest.raises(ValueError, match="at most"):
        m.BehaviorPrompt(text="x" * (m.MAX_PROMPT_CHARS + 1))


def test_video_chunk_is_exactly_one_chunk_of_the_clock() -> None:
    good = _chunk(5)
    assert good.first_frame == 60
    with pytest.raises(ValueError, match="first_frame"):
        m.VideoChunk(**{**good.model_dump(), "first_frame": 61})
    with pytest.raises(ValueError, match="12 frames"):
        m.VideoChunk(**{**good.model_dump(), "frames": good.frames[:11]})
    with pytest.raises(ValueError, match="audio has"):
        m.VideoChunk(**{**good.model_dump(), "audio": good.audio[:-2]})


def test_stream_names() -> None:
    assert parse_stream(stream_name("s-1.a", "video")) == ("s-1.a", "video")
    assert parse_stream("flowact:sessions") == (None, "sessions")
    with pytest.raises(ValueError, match="not a FlowAct stream"):
        parse_stream("other:demo:video")
