"""The agent graph's types: its state and its runtime context (events are in `events.py`).

The graph runs once per event. What must outlive a run (the phase, the conversation, the
utterance being played) is in `GraphInput` and handed back in with the next event; `GraphState`
adds what one run computes for its routers. Runtime dependencies (clock, outbox, TTS, tasks) are
in `AgentContext`, never in state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Literal, TypedDict

from flowact.agents.base import TTS, Outbox, Responder, SessionClock, Turn
from flowact.agents.behavior import BehaviorScheduler, ListeningWindows
from flowact.agents.events import AgentEvent
from flowact.agents.speaker import Speaker
from flowact.agents.tasks import Background
from flowact.agents.voice import VoiceTracker
from flowact.schemas.agent_settings import AgentSettings
from flowact.schemas.messages import AgentState

HISTORY_LIMIT = 64  # turns kept in state; the responder takes its own, shorter, window


# --- state -------------------------------------------------------------------------------------


def add_turns(old: list[Turn], new: list[Turn]) -> list[Turn]:
    """Append, keeping the last HISTORY_LIMIT turns."""
    return (old + new)[-HISTORY_LIMIT:]


class GraphInput(TypedDict, total=False):
    """One event plus what the agent carries from event to event. Samples are 16 kHz on the
    session clock."""

    event: AgentEvent
    phase: AgentState
    history: Annotated[list[Turn], add_turns]
    turn: int  # the newest user turn; replies to older turns are stale
    utterance: str | None  # the agent utterance being played
    free_at: int  # the first sample after everything the agent has said
    idle_at: int | None  # when to fall back to idle unless something happens first


class GraphState(GraphInput, total=False):
    now: int  # the clock, read once at the start of the run
    voice: Literal["onset", "offset"] | None  # what the user's voice did in this event
    fresh: bool  # handed-in speech that starts a new utterance


CARRIED = tuple(GraphInput.__annotations__.keys() - {"event"})


def initial_state() -> GraphInput:
    return GraphInput(phase="idle", history=[], turn=0, utterance=None, free_at=0, idle_at=None)


# --- context -----------------------------------------------------------------------------------


@dataclass
class AgentContext:
    """What the nodes use: services, the clock, and the tasks that outlive a run."""

    settings: AgentSettings
    outbox: Outbox
    clock: SessionClock
    responder: Responder | None
    tts: TTS
    voice: VoiceTracker
    speaker: Speaker
    behaviors: BehaviorScheduler
    listening: ListeningWindows
    background: Background
    new_id: Callable[[], str]
