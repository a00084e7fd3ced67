"""`Agent`: the conversation graph, its services and its event loop, for one session.

Inputs arrive as calls (`say`, `hear`, `hand_in`, `interrupt`) that queue events and return at
once; `run` takes them one at a time through the graph, with a clock tick whenever the queue is
quiet for `tick_ms`. Output goes to the outbox: StateEvents, TranscriptEvents, AudioSegments,
BehaviorPrompts and InterruptControls.
"""

from __future__ import annotations

import asyncio
import secrets
import time

import structlog

from flowact.agents import registry
from flowact.agents.base import TTS, VAD, Outbox, Responder, SessionClock
from flowact.agents.behavior import BehaviorScheduler, ListeningWindows
from flowact.agents.events import AgentEvent, HandedSpeech, Interrupt, Tick, UserAudio, UserText
from flowact.agents.graph import build_graph
from flowact.agents.speaker import Speaker
from flowact.agents.state import CARRIED, AgentContext, GraphInput, initial_state
from flowact.agents.tasks import Background
from flowact.agents.voice import VoiceTracker
from flowact.planner.base import Planner
from flowact.schemas import timebase as tb
from flowact.schemas.agent_settings import AgentSettings, PlannerSettings
from flowact.schemas.messages import AgentState
from flowact.schemas.pcm import StreamResampler, float_to_s16, s16_to_float

log = structlog.get_logger(__name__)


class Agent:
    """One session's conversation agent."""

    def __init__(
        self,
        *,
        outbox: Outbox,
        clock: SessionClock,
        responder: Responder | None,
        tts: TTS,
        vad: VAD,
        planner: Planner,
        settings: AgentSettings | None = None,
        planner_settings: PlannerSettings | None = None,
    ) -> None:
        self.settings = settings = settings or AgentSettings()
        planner_settings = planner_settings or PlannerSettings()
        self._queue: asyncio.Queue[AgentEvent] = asyncio.Queue()
        behaviors = BehaviorScheduler(
            planner, outbox, clock, concurrency=planner_settings.concurrency
        )
        window_frames = planner_settings.window_ms * tb.FPS // 1000
        self._ids = (secrets.token_hex(3), 0)
        self.context = AgentContext(
            settings=settings,
            outbox=outbox,
            clock=clock,
            responder=responder,
            tts=tts,
            voice=VoiceTracker(
                vad, start_ms=settings.speech_start_ms, end_ms=settings.speech_end_ms
            ),
            speaker=Speaker(
                outbox,
                clock,
                behaviors,
                segment_ms=settings.segment_ms,
                lead_ms=settings.lead_ms,
                window_ms=planner_settings.window_ms,
            ),
            behaviors=behaviors,
            listening=ListeningWindows(behaviors, clock, window_frames),
            background=Background(self.post),
            new_id=self._new_id,
        )
        self._graph = build_graph().compile()
        self.state: GraphInput = initial_state()
        self._resamplers: dict[int, StreamResampler] = {}

    @classmethod
    def from_settings(
        cls,
        outbox: Outbox,
        clock: SessionClock,
        settings: AgentSettings,
        planner_settings: PlannerSettings,
    ) -> Agent:
        """An agent with the implementations the settings name (see `registry`)."""
        return cls(
            outbox=outbox,
            clock=clock,
            responder=registry.build_responder(settings),
            tts=registry.build_tts(settings),
            vad=registry.build_vad(settings),
            planner=registry.build_planner(planner_settings),
            settings=settings,
            planner_settings=planner_settings,
        )

    # --- input -------------------------------------------------------------------------------

    def say(self, text: str) -> None:
        """The user said (or typed) `text`."""
        self.post(UserText(text))

    def hear(self, pcm: bytes, rate: int = tb.SAMPLE_RATE) -> None:
        """A piece of the user's voice, s16le mono at `rate` (pieces of one stream in order)."""
        if rate != tb.SAMPLE_RATE:
            resampler = self._resamplers.setdefault(rate, StreamResampler(rate))
            pcm = float_to_s16(resampler.push(s16_to_float(pcm)))
        self.post(UserAudio(pcm))

    def hand_in(self, pcm: bytes, rate: int, *, text: str = "", end: bool = False) -> None:
        """A piece of the agent's reply speech made by a voice assistant (tts = passthrough)."""
        self.post(HandedSpeech(pcm, rate, text, end))

    def interrupt(self) -> None:
        """Stop speaking now."""
        self.post(Interrupt())

    def set_image(self, image: bytes | None) -> None:
        """The reference image the planner sees."""
        self.context.behaviors.image = image

    def post(self, event: AgentEvent) -> None:
        self._queue.put_nowait(event)

    @property
    def phase(self) -> AgentState:
        return self.state["phase"]

    # --- loop --------------------------------------------------------------------------------

    async def step(self, event: AgentEvent) -> None:
        """Run the graph on one event."""
        out = await self._graph.ainvoke({**self.state, "event": event}, context=self.context)
        self.state = GraphInput(**{k: out[k] for k in CARRIED})  # type: ignore[typeddict-item]

    async def run(self, stop: asyncio.Event) -> None:
        """Handle events until `stop` is set; a clock tick at least every `tick_ms`."""
        tick_s = self.settings.tick_ms / 1000
        last_tick = time.monotonic()
        # One pending get, kept across timeouts: cancelling a get on timeout can lose an event.
        getter: asyncio.Future[AgentEvent] | None = None
        try:
            while not stop.is_set():
                getter = getter or asyncio.ensure_future(self._queue.get())
                wait = max(0.0, last_tick + tick_s - time.monotonic())
                done, _ = await asyncio.wait({getter}, timeout=wait)
                if done:
                    event, getter = getter.result(), None
                    await self._safe_step(event)
                    self._queue.task_done()
                if time.monotonic() - last_tick >= tick_s:
                    last_tick = time.monotonic()
                    await self._safe_step(Tick())
        finally:
            if getter is not None:
                getter.cancel()
            await self.close()

    async def settle(self) -> None:
        """Wait until every event posted so far has been through the graph (`run` must be
        running). Work those events started in the background may still be going on."""
        await self._queue.join()

    async def close(self) -> None:
        await self.context.background.close()
        await self.context.behaviors.close()

    async def _safe_step(self, event: AgentEvent) -> None:
        try:
            await self.step(event)
        except Exception:  # noqa: BLE001 - one failed event (the bus hiccuped) is not fatal
            log.exception("agent step failed", event=type(event).__name__, phase=self.phase)

    def _new_id(self) -> str:
        prefix, n = self._ids
        self._ids = (prefix, n + 1)
        return f"agent-{prefix}-{n}"
