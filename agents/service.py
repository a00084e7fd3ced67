"""The agent as a bus service, and the one-line helpers the CLI calls.

`serve_agent` runs one session's agent: it reads the user's transcripts (events stream) and voice
(audio stream) and the session's controls, and publishes the agent's speech, behaviors, states,
transcripts and interrupts on the same session's streams. `say` is `flowact say SID TEXT`.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets

import structlog

from flowact.agents.agent import Agent
from flowact.agents.clock import WallClock
from flowact.agents.outbox import BusOutbox
from flowact.bus import typed
from flowact.bus.base import Bus, ConsumerOptions
from flowact.schemas import timebase as tb
from flowact.schemas.agent_settings import AgentSettings, PlannerSettings
from flowact.schemas.messages import (
    AudioSegment,
    InterruptControl,
    Message,
    StartControl,
    StateEvent,
    StopControl,
    TranscriptEvent,
)

log = structlog.get_logger(__name__)

GROUP = "agent"
INPUT_KINDS = ("events", "audio", "control")


async def serve_agent(
    bus: Bus,
    session: str,
    settings: AgentSettings,
    *,
    stop: asyncio.Event,
    planner: PlannerSettings | None = None,
    block_ms: int = 1000,
) -> None:
    """Run the agent of `session` until `stop` is set or the session gets a stop control.

    Reads, as consumer group "agent": TranscriptEvents of the user (type "transcript", speaker
    "user") on the events stream, the user's AudioSegments on the audio stream, and start
    (reference image for the planner), stop and interrupt controls. Follows the renderer's clock
    when it reports its playhead (a StateEvent of actor "renderer" with a frame).
    """
    planner = planner or PlannerSettings()
    outbox = BusOutbox(bus, session, producer="agent")
    clock = WallClock()
    agent = Agent.from_settings(outbox, clock, settings, planner)
    if settings.reference_image is not None:
        agent.set_image(settings.reference_image.read_bytes())
    done = asyncio.Event()  # stop, or the session's stop control

    async def handle(stream: str, message: Message) -> None:
        if not outbox.owns(message) and route(agent, clock, message):
            done.set()

    options = ConsumerOptions(group=GROUP, consumer=outbox.producer, block_ms=block_ms)
    streams = typed.session_streams(session, INPUT_KINDS)
    consumer = asyncio.create_task(typed.subscribe(bus, streams, options, handle, stop=done))
    watcher = asyncio.create_task(_forward(stop, done))
    log.info("agent serving", session=session, responder=settings.responder, tts=settings.tts)
    try:
        await agent.run(done)
    finally:
        done.set()
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consumer
            await watcher
        log.info("agent stopped", session=session)


def route(agent: Agent, clock: WallClock, message: Message) -> bool:
    """Hand one message of the session to the agent; True when the session is to stop."""
    if isinstance(message, TranscriptEvent):
        if message.speaker == "user" and message.final:
            agent.say(message.text)
    elif isinstance(message, AudioSegment):
        if message.speaker == "user" and message.pcm:
            agent.hear(message.pcm, message.rate)
    elif isinstance(message, StartControl):
        if message.image is not None:
            agent.set_image(message.image)
    elif isinstance(message, InterruptControl):
        agent.interrupt()
    elif isinstance(message, StopControl):
        return True
    elif isinstance(message, StateEvent) and message.actor == "renderer":
        if message.frame is not None:
            clock.sync(message.frame * tb.SAMPLES_PER_FRAME)
    return False


async def say(bus: Bus, session: str, text: str) -> str:
    """Publish `text` as something the user said to `session`'s agent; returns the entry id."""
    event = TranscriptEvent(speaker="user", text=text, producer_id=f"say-{secrets.token_hex(6)}:0")
    return await typed.publish(bus, session, event)


async def _forward(source: asyncio.Event, target: asyncio.Event) -> None:
    await source.wait()
    target.set()
