"""The conversation agent as a LangGraph graph: idle, listening, thinking, speaking.

One run per event. `observe` reads the clock; `route_event` sends the event to its node; nodes
are small and quick (long work, replies and speech, runs in `Background` and comes back as
events). The phases:

    idle --user voice--> listening --transcript--> thinking --reply--> speaking --played--> idle
    speaking --user voice or text (barge-in: interrupt)--> listening / thinking
    listening --silence, no transcript--> idle;  thinking --timeout--> idle

Every phase change is published as a StateEvent; agent speech as AudioSegments with behavior
prompts (see `Speaker`), replies as TranscriptEvents.
"""

from __future__ import annotations

from typing import Literal

import structlog
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime

from flowact.agents.base import Turn
from flowact.agents.events import (
    HandedSpeech,
    Interrupt,
    Reply,
    SpeechPublished,
    Tick,
    UserAudio,
    UserText,
)
from flowact.agents.state import AgentContext, GraphInput, GraphState
from flowact.planner.base import PlanRequest
from flowact.schemas import timebase as tb
from flowact.schemas.messages import AgentState, InterruptControl, StateEvent, TranscriptEvent

log = structlog.get_logger(__name__)

Ctx = Runtime[AgentContext]
MS = tb.SAMPLE_RATE // 1000


# --- nodes -------------------------------------------------------------------------------------


async def observe(state: GraphState, runtime: Ctx) -> dict:
    """Read the clock once, so that routers are pure functions of the state."""
    return {"now": runtime.context.clock.now_sample()}


async def hear(state: GraphState, runtime: Ctx) -> dict:
    """Run voice activity detection on the user's audio."""
    ctx, pcm = runtime.context, state["event"].pcm  # type: ignore[union-attr]
    changes = ctx.voice.feed(pcm)
    if ctx.voice.speaking:
        ctx.listening.add(pcm)
    update: dict = {"voice": None}
    if any(c.kind == "onset" for c in changes):
        update["voice"] = "onset"
    elif changes:
        update["voice"] = "offset"
    if changes and state["phase"] == "listening":
        update["idle_at"] = _quiet_deadline(ctx, state["now"])
    return update


async def barge_in(state: GraphState, runtime: Ctx) -> dict:
    """Stop the reply being written or spoken; tell the renderer to drop unplayed speech."""
    ctx = runtime.context
    ctx.background.cancel_reply()
    ctx.background.cancel_speech()
    ctx.behaviors.cancel()
    drop = getattr(ctx.tts, "drop", None)
    if drop is not None:
        drop()
    if state["phase"] == "speaking":
        # No sample given: the renderer cuts at its own playhead, which it knows exactly.
        await ctx.outbox.send(InterruptControl())
        log.info("barge-in", utterance=state.get("utterance"))
    return {"utterance": None, "free_at": state["now"]}


async def listen(state: GraphState, runtime: Ctx) -> dict:
    ctx = runtime.context
    ctx.listening.reset()
    _plan_pose(ctx, state["now"], "listening")
    update = await _enter(state, runtime, "listening")
    return update | {"idle_at": _quiet_deadline(ctx, state["now"])}


async def read(state: GraphState, runtime: Ctx) -> dict:
    """A user transcript: a new user turn."""
    text = state["event"].text.strip()  # type: ignore[union-attr]
    return {"history": [Turn("user", text)], "turn": state["turn"] + 1}


async def think(state: GraphState, runtime: Ctx) -> dict:
    """Start writing the reply (when the agent has a responder of its own) and look pensive."""
    ctx = runtime.context
    if ctx.responder is not None:
        ctx.background.think(ctx.responder, state["history"], state["turn"])
    _plan_pose(ctx, state["now"], "thinking")
    update = await _enter(state, runtime, "thinking")
    return update | {"idle_at": state["now"] + ctx.settings.think_timeout_ms * MS}


async def hand_in(state: GraphState, runtime: Ctx) -> dict:
    """Speech from a voice assistant: queue it; the first piece of a reply starts speaking."""
    ctx, event = runtime.context, state["event"]
    assert isinstance(event, HandedSpeech)
    hand = getattr(ctx.tts, "hand_in", None)
    if hand is None:
        log.warning("handed-in speech ignored: agent.tts is not 'passthrough'")
        return {"fresh": False}
    return {"fresh": hand(event.pcm, event.rate, text=event.text, end=event.end)}


async def speak(state: GraphState, runtime: Ctx) -> dict:
    """Start playing a reply, after the start delay and after what the agent is still saying."""
    ctx, event, now = runtime.context, state["event"], state["now"]
    earliest = max(now + ctx.settings.start_delay_ms * MS, state["free_at"])
    utterance = ctx.new_id()
    if isinstance(event, Reply):
        await ctx.outbox.send(
            TranscriptEvent(speaker="agent", text=event.text, utterance=utterance)
        )
        pieces, captioned = ctx.tts.stream(event.text), True
    else:
        pieces, captioned = ctx.tts.stream(""), False
    ctx.background.speak(ctx.speaker, utterance, earliest, pieces, captioned=captioned)
    update = {"utterance": utterance, "free_at": earliest, "idle_at": None}
    if state["phase"] == "speaking":
        return update  # one more utterance, played after the current one
    frame = -(-earliest // tb.SAMPLES_PER_FRAME)
    return update | await _enter(state, runtime, "speaking", frame=frame)


async def published(state: GraphState, runtime: Ctx) -> dict:
    """All of an utterance is on the bus: it was said, and the last one's end is now known."""
    event = state["event"]
    assert isinstance(event, SpeechPublished)
    update: dict = {"history": [Turn("assistant", event.text)] if event.text else []}
    if event.utterance == state["utterance"]:  # not one that another follows
        update |= {"idle_at": event.end, "free_at": max(state["free_at"], event.end)}
    return update


async def go_idle(state: GraphState, runtime: Ctx) -> dict:
    if state["phase"] == "thinking":
        log.warning("no reply in time; back to idle", turn=state["turn"])
    ctx = runtime.context
    ctx.behaviors.cancel()
    _plan_pose(ctx, state["now"], "idle")
    return await _enter(state, runtime, "idle") | {"utterance": None, "idle_at": None}


async def _enter(state: GraphState, runtime: Ctx, phase: AgentState, frame: int | None = None):
    now = state["now"]
    frame = now // tb.SAMPLES_PER_FRAME if frame is None else frame
    await runtime.context.outbox.send(StateEvent(actor="agent", state=phase, frame=frame))
    return {"phase": phase}


def _quiet_deadline(ctx: AgentContext, now: int) -> int | None:
    """While the user speaks, no deadline; once quiet, wait a while for their transcript."""
    return None if ctx.voice.speaking else now + ctx.settings.transcript_wait_ms * MS


def _plan_pose(ctx: AgentContext, now: int, phase: AgentState) -> None:
    frames = ctx.listening.frames
    request = PlanRequest(now // tb.SAMPLES_PER_FRAME, frames, phase, first=True)
    ctx.behaviors.submit(request)


# --- routers -----------------------------------------------------------------------------------

Route = Literal["hear", "read", "hand_in", "speak", "published", "barge_in", "go_idle", "__end__"]


def route_event(state: GraphState) -> Route:
    event = state["event"]
    if isinstance(event, UserAudio):
        return "hear"
    if isinstance(event, UserText):
        return "read" if event.text.strip() else END
    if isinstance(event, HandedSpeech):
        return "hand_in"
    if isinstance(event, Reply):
        current = event.turn == state["turn"] and state["phase"] == "thinking"
        return "speak" if current else END
    if isinstance(event, SpeechPublished):
        return "published"
    if isinstance(event, Interrupt):
        return "barge_in" if state["phase"] != "idle" else END
    assert isinstance(event, Tick), f"unknown event {event!r}"
    return "go_idle" if due_for_idle(state) else END


def due_for_idle(state: GraphState) -> bool:
    """Speech played out, the user fell silent without a transcript, or no reply came."""
    idle_at = state["idle_at"]
    return state["phase"] != "idle" and idle_at is not None and state["now"] >= idle_at


def after_hear(state: GraphState) -> Literal["barge_in", "listen", "__end__"]:
    if state["voice"] != "onset":
        return END
    if state["phase"] in ("speaking", "thinking"):
        return "barge_in"
    return "listen" if state["phase"] != "listening" else END


def after_read(state: GraphState) -> Literal["barge_in", "think"]:
    return "barge_in" if state["phase"] in ("speaking", "thinking") else "think"


def after_barge_in(state: GraphState) -> Literal["listen", "think", "go_idle"]:
    event = state["event"]
    if isinstance(event, UserText):
        return "think"
    return "go_idle" if isinstance(event, Interrupt) else "listen"


def after_hand_in(state: GraphState) -> Literal["speak", "__end__"]:
    return "speak" if state["fresh"] else END


# --- graph -------------------------------------------------------------------------------------


def build_graph() -> StateGraph:
    """The agent's graph, not compiled (call `.compile()`); run it with an `AgentContext`."""
    graph = StateGraph(GraphState, context_schema=AgentContext, input_schema=GraphInput)
    for node in (observe, hear, barge_in, listen, read, think, hand_in, speak, published, go_idle):
        graph.add_node(node.__name__, node)
    graph.add_edge(START, "observe")
    graph.add_conditional_edges("observe", route_event)
    graph.add_conditional_edges("hear", after_hear)
    graph.add_conditional_edges("read", after_read)
    graph.add_conditional_edges("barge_in", after_barge_in)
    graph.add_conditional_edges("hand_in", after_hand_in)
    for node in ("listen", "think", "speak", "published", "go_idle"):
        graph.add_edge(node, END)
    return graph
