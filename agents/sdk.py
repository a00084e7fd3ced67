"""`AvatarClient`: put a FlowAct avatar in front of a voice assistant.

A voice assistant has its own speech recognition, LLM and TTS; it hands FlowAct what it hears and
what it says, and gets video back:

    async with AvatarClient(bus, "room-1") as avatar:
        await avatar.start(image=open("me.png", "rb").read())
        await avatar.push_user_audio(mic_pcm, 48_000)        # the user's voice: listening, nods
        await avatar.push_transcript("what's the weather?")    # what the user said
        await avatar.push_audio(tts_pcm, 24_000, text="Sunny.")  # the assistant's speech, any rate
        await avatar.push_audio(b"", 24_000, end=True)         # ... the end of that reply
        async for chunk in avatar.video():                     # 12 JPEG frames + 0.48 s of audio
            ...

The client embeds the conversation agent with no responder and pass-through speech, so the
avatar's states, the speech's timing on the session clock, behavior planning and barge-in work
as with FlowAct's own agent. Do not also run `serve_agent` for the same session.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator

import structlog

from flowact.agents.agent import Agent
from flowact.agents.base import SessionClock
from flowact.agents.clock import WallClock
from flowact.agents.outbox import BusOutbox
from flowact.agents.passthrough_tts import PassthroughTTS
from flowact.agents.registry import build_planner, build_vad
from flowact.bus import typed
from flowact.bus.base import Bus
from flowact.schemas import codec
from flowact.schemas import timebase as tb
from flowact.schemas.agent_settings import AgentSettings, PlannerSettings
from flowact.schemas.messages import (
    AgentState,
    Event,
    SessionRequest,
    StateEvent,
    StopControl,
    TranscriptEvent,
    VideoChunk,
)
from flowact.schemas.streams import stream_name

log = structlog.get_logger(__name__)


class AvatarClient:
    """One avatar session driven by a voice assistant, over any `Bus`."""

    def __init__(
        self,
        bus: Bus,
        session: str | None = None,
        *,
        settings: AgentSettings | None = None,
        planner: PlannerSettings | None = None,
        clock: SessionClock | None = None,
        block_ms: int = 500,
    ) -> None:
        self.bus = bus
        self.session = session or f"avatar-{secrets.token_hex(4)}"
        settings = (settings or AgentSettings()).model_copy(
            update={"responder": "none", "tts": "passthrough"}
        )
        planner = planner or PlannerSettings()
        self.clock = clock or WallClock()
        self._outbox = BusOutbox(bus, self.session, producer="sdk")
        self.agent = Agent(
            outbox=self._outbox,
            clock=self.clock,
            responder=None,
            tts=PassthroughTTS(),
            vad=build_vad(settings),
            planner=build_planner(planner),
            settings=settings,
            planner_settings=planner,
        )
        self.block_ms = block_ms
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._since = "0"  # stream id from which this client's video and events are read
        self._agent_text = ""

    async def __aenter__(self) -> AvatarClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def state(self) -> AgentState:
        """The avatar's conversational state as the agent sees it."""
        return self.agent.phase

    async def start(
        self, image: bytes | None = None, *, preset: str | None = None, seed: int = 0
    ) -> None:
        """Ask a renderer for the session (PNG or JPEG reference image; none: the preset's
        default avatar) and start the agent."""
        if self._tasks:
            raise RuntimeError("this client already started its session")
        # Stream ids start with the publish time in ms: read what is published from now on.
        self._since = f"{time.time_ns() // 1_000_000 - 1}-0"
        self.agent.set_image(image)
        self.clock.sync(0)  # the session's clock starts with the session, not with this client
        request = SessionRequest(session=self.session, image=image, preset=preset, seed=seed)
        await typed.publish(self.bus, self.session, request)
        self._tasks = [
            asyncio.create_task(self.agent.run(self._stop)),
            asyncio.create_task(self._follow_renderer()),
        ]

    async def push_audio(self, pcm: bytes, rate: int, *, text: str = "", end: bool = False) -> None:
        """A piece of the assistant's speech, s16le mono at `rate` (8 to 48 kHz), in order;
        `end` closes the reply. `text`: the words in it, when known (they steer gestures)."""
        text, self._agent_text = (self._agent_text + " " + text).strip(), ""
        self.agent.hand_in(pcm, rate, text=text, end=end)

    async def push_user_audio(self, pcm: bytes, rate: int) -> None:
        """A piece of the user's voice, s16le mono at `rate`: the avatar listens, nods, and stops
        talking when the user talks over it."""
        self.agent.hear(pcm, rate)

    async def push_transcript(self, text: str, *, speaker: str = "user") -> None:
        """What the user said (the avatar starts thinking), or the words of the assistant's next
        reply (`speaker="agent"`: they go with the next `push_audio`)."""
        if speaker == "agent":
            self._agent_text = (self._agent_text + " " + text).strip()
            return
        if speaker != "user":
            raise ValueError(f"speaker is 'user' or 'agent', not {speaker!r}")
        await self._outbox.send(TranscriptEvent(speaker="user", text=text))
        self.agent.say(text)

    async def interrupt(self) -> None:
        """Stop the avatar talking now (the assistant was interrupted)."""
        self.agent.interrupt()

    async def video(self) -> AsyncIterator[VideoChunk]:
        """The session's video chunks from `start` on, in order, until `stop`."""
        async for message in self._tail("video"):
            assert isinstance(message, VideoChunk)
            yield message

    async def events(self) -> AsyncIterator[Event]:
        """The session's events (states, utterances, transcripts, errors) from `start` on."""
        async for message in self._tail("events"):
            yield message  # type: ignore[misc]

    async def stop(self) -> None:
        """Release the session: the renderer stops, the agent stops."""
        if not self._tasks or self._stop.is_set():
            self._stop.set()
            return
        await self._outbox.send(StopControl())
        self._stop.set()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _tail(self, kind: str) -> AsyncIterator[object]:
        stream = stream_name(self.session, kind)  # type: ignore[arg-type]
        after = self._since
        while not self._stop.is_set():
            for entry in await self.bus.read(stream, after, block_ms=self.block_ms):
                after = entry.id
                try:
                    message = codec.decode(entry.fields, stream)
                except codec.MessageError as err:
                    log.warning("bad entry skipped", stream=stream, id=entry.id, error=str(err))
                    continue
                yield message

    async def _follow_renderer(self) -> None:
        """Keep the agent's clock on the renderer's playhead."""
        async for event in self._tail("events"):
            if isinstance(event, StateEvent) and event.actor == "renderer":
                if event.frame is not None:
                    self.clock.sync(event.frame * tb.SAMPLES_PER_FRAME)
