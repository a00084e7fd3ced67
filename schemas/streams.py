"""Stream names and which message types each stream carries."""

from __future__ import annotations

import re
from typing import Literal, get_args

PREFIX = "flowact"
SESSIONS_STREAM = f"{PREFIX}:sessions"

StreamKind = Literal["audio", "behavior", "control", "video", "events"]
STREAM_KINDS: tuple[StreamKind, ...] = get_args(StreamKind)

# Message `type`s a stream accepts, and the type assumed when an entry names none (so a person
# can type `XADD flowact:demo:behavior '*' text "waves"` without a type field).
ACCEPTS: dict[str, frozenset[str]] = {
    "audio": frozenset({"audio"}),
    "behavior": frozenset({"behavior"}),
    "control": frozenset({"start", "stop", "interrupt", "configure"}),
    "video": frozenset({"video"}),
    "events": frozenset({"state", "utterance", "error", "transcript"}),
    "sessions": frozenset({"session"}),
}
# Entries a stream keeps (trimmed approximately on publish), so that no stream grows with the
# length of a session. At 4 audio entries a second, 10,000 is some 40 minutes of backlog.
RETENTION: dict[str, int] = {
    "audio": 10_000,
    "behavior": 10_000,
    "control": 1_000,
    "video": 512,
    "events": 10_000,
    "sessions": 10_000,
}

# The stream kind each message type travels on.
KIND_OF_TYPE: dict[str, str] = {t: kind for kind, types in ACCEPTS.items() for t in types}
DEFAULT_TYPE: dict[str, str] = {
    "audio": "audio",
    "behavior": "behavior",
    "video": "video",
    "sessions": "session",
}

_SESSION_STREAM = re.compile(rf"^{PREFIX}:(?P<sid>[\w.-]+):(?P<kind>{'|'.join(STREAM_KINDS)})$")


def stream_name(session: str, kind: StreamKind) -> str:
    """`flowact:{session}:{kind}`."""
    if kind not in STREAM_KINDS:
        raise ValueError(f"unknown stream kind {kind!r}; one of {STREAM_KINDS}")
    return f"{PREFIX}:{session}:{kind}"


def stream_for(session: str, message_type: str) -> str:
    """The stream a message of `message_type` travels on for `session`."""
    kind = KIND_OF_TYPE.get(message_type)
    if kind is None:
        raise ValueError(f"no stream carries messages of type {message_type!r}")
    return SESSIONS_STREAM if kind == "sessions" else stream_name(session, kind)  # type: ignore[arg-type]


def parse_stream(stream: str) -> tuple[str | None, str]:
    """(session, kind) of a stream name; the sessions stream has no session."""
    if stream == SESSIONS_STREAM:
        return None, "sessions"
    match = _SESSION_STREAM.match(stream)
    if match is None:
        raise ValueError(f"{stream!r} is not a FlowAct stream (flowact:<session>:<kind>)")
    return match["sid"], match["kind"]
