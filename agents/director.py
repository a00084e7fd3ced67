"""The scene director: turn-taking between several agents, as a LangGraph graph.

Each agent runs as `serve_agent` on a session of its own. The director speaks to them only
through their streams: a line for an agent to answer is a user `TranscriptEvent` on its session
(as `say` publishes), and listener behavior is `BehaviorPrompt`s on the listeners' sessions. It
learns what happens from the agents' events: their replies (agent transcripts), their phases
(`StateEvent`s of actor agent) and the renderer's `UtteranceEvent`s.

    ready --cue--> cued --the agent starts speaking--> speaking --its speech played out--> ready
    cued --no speech within turn_timeout_s--> (skipped) ready;   ready --turns or time up--> done

One graph run per event, as in the agent: `observe` reads the clock, routers are pure functions
of the state returning `Literal`s, nodes are small and publish what they decide.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Literal, TypedDict

import structlog
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime

from flowact.agents.outbox import BusOutbox
from flowact.bus import typed
from flowact.bus.base import Bus, ConsumerOptions
from flowact.schemas import timebase as tb
from flowact.schemas.messages import (
    BehaviorPrompt,
    Channel,
    Message,
    Overlap,
    StateEvent,
    TranscriptEvent,
    UtteranceEvent,
)
from flowact.schemas.streams import parse_stream, stream_name

log = structlog.get_logger(__name__)

GROUP = "director"

# Phrasings the renderer's behavior channels were trained on (renderer/training/behaviors.py).
LOOK = {
    "left": ("looks to the left", "turns the eyes to the left"),
    "right": ("looks to the right", "turns the eyes to the right"),
    "up": ("looks up",),
    "down": ("lowers the gaze", "looks down for a moment"),
}
NOD = ("nods", "nods slowly", "gives a small nod", "nods the head up and down")
LEAN = ("leans slightly forward, listening", "bends forward with interest")
SMILE = ("smiles warmly", "breaks into a gentle smile", "smiles")


# --- cast, events, config ----------------------------------------------------------------------


@dataclass(frozen=True)
class CastMember:
    """An agent of the scene: its id, the name others call it, its session, its tile."""

    id: str
    name: str
    session: str
    cell: tuple[int, int]  # (column, row) in the layout


@dataclass(frozen=True)
class SceneLine:
    """Something an agent said, and to whom."""

    agent: str
    text: str
    to: str


@dataclass(frozen=True)
class Begin:
    """Start the conversation (the agents' renderers are up)."""


@dataclass(frozen=True)
class AgentPhase:
    """Agent `agent` entered `state` (its own StateEvent)."""

    agent: str
    state: str


@dataclass(frozen=True)
class AgentLine:
    """Agent `agent` is about to say `text` as `utterance` (its transcript)."""

    agent: str
    text: str
    utterance: str | None


@dataclass(frozen=True)
class Played:
    """The renderer of `agent`'s session started, finished or cut `utterance`."""

    agent: str
    utterance: str
    phase: str


@dataclass(frozen=True)
class Tick:
    """Time passed."""


DirectorEvent = Begin | AgentPhase | AgentLine | Played | Tick


@dataclass(frozen=True)
class DirectorConfig:
    """What the director needs of the scene file (times in seconds of wall time)."""

    session: str  # the composed session: captions and the director's state go there
    opening_to: str
    opening_text: str
    topic: str = ""
    turns: int | None = None
    duration_s: float | None = None
    turn_timeout_s: float = 20.0
    react_every_s: float = 2.4


class SceneOutbox:
    """Publishes on any of the scene's sessions with producer ids of the director."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self._outboxes: dict[str, BusOutbox] = {}

    async def send(self, session: str, message: Message) -> None:
        outbox = self._outboxes.get(session)
        if outbox is None:
            outbox = self._outboxes[session] = BusOutbox(self.bus, session, producer=GROUP)
        await outbox.send(message)


@dataclass
class DirectorContext:
    """What the nodes use; never in state."""

    config: DirectorConfig
    cast: tuple[CastMember, ...]
    outbox: SceneOutbox
    clock: Callable[[], float] = time.monotonic
    rng: random.Random = field(default_factory=random.Random)

    def member(self, agent: str) -> CastMember:
        return next(m for m in self.cast if m.id == agent)

    def others(self, *agents: str | None) -> list[CastMember]:
        return [m for m in self.cast if m.id not in agents]


# --- state -------------------------------------------------------------------------------------

Phase = Literal["ready", "cued", "speaking", "done"]


def add_lines(old: list[SceneLine], new: list[SceneLine]) -> list[SceneLine]:
    return old + new


class DirectorInput(TypedDict, total=False):
    """One event plus what the director carries between events."""

    event: DirectorEvent
    phase: Phase
    turn: int  # turns cued so far
    speaker: str | None  # whose turn it is
    addressee: str | None  # who answers next
    cue: str  # the line the next speaker answers
    line: str  # what the speaker says this turn
    utterance: str | None  # its utterance id (renderer events name it)
    deadline: float | None  # cued: when the speaker is given up
    react_at: float | None  # speaking: when listeners react next
    ends_at: float | None  # the scene's time limit
    max_turns: int | None  # the scene's turn limit
    lines: Annotated[list[SceneLine], add_lines]


class DirectorState(DirectorInput, total=False):
    now: float  # the clock, read once a run


CARRIED = tuple(DirectorInput.__annotations__.keys() - {"event"})


def initial_state() -> DirectorInput:
    return DirectorInput(
        phase="ready", turn=0, speaker=None, addressee=None, cue="", line="", utterance=None,
        deadline=None, react_at=None, ends_at=None, max_turns=None, lines=[],
    )  # fmt: skip


Ctx = Runtime[DirectorContext]


# --- helpers -----------------------------------------------------------------------------------


def next_agent(agent: str | None, cast: Sequence[CastMember]) -> str:
    """The agent after `agent` in cast order (round robin)."""
    ids = [m.id for m in cast]
    return ids[(ids.index(agent) + 1) % len(ids)] if agent in ids else ids[0]


def addressee_of(text: str, speaker: str, cast: Sequence[CastMember]) -> str:
    """Who `speaker` talks to: the other agent named last in `text` (by name or id, whole
    words, any case), else the next agent in cast order."""
    named: list[tuple[int, str]] = []
    for member in cast:
        if member.id == speaker:
            continue
        for name in {member.name, member.id}:
            for match in re.finditer(rf"\b{re.escape(name)}\b", text, re.IGNORECASE):
                named.append((match.start(), member.id))
    return max(named)[1] if named else next_agent(speaker, cast)


def look_toward(source: tuple[int, int], target: tuple[int, int]) -> str:
    """Which way the avatar in tile `source` looks, on screen, to face tile `target`."""
    dx, dy = target[0] - source[0], target[1] - source[1]
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


async def _behave(
    ctx: DirectorContext,
    member: CastMember,
    texts: Sequence[str],
    channel: Channel,
    seconds: float,
    overlap: Overlap = "replace",
) -> None:
    prompt = BehaviorPrompt(
        text=ctx.rng.choice(texts),
        duration_frames=tb.seconds_to_frames(seconds),
        channel=channel,
        overlap=overlap,
        source=GROUP,
    )
    await ctx.outbox.send(member.session, prompt)


async def _look(ctx: DirectorContext, member: CastMember, target: str, seconds: float) -> None:
    way = look_toward(member.cell, ctx.member(target).cell)
    await _behave(ctx, member, LOOK[way], "gaze", seconds)


# --- nodes -------------------------------------------------------------------------------------


async def observe(state: DirectorState, runtime: Ctx) -> dict:
    return {"now": runtime.context.clock()}


async def begin(state: DirectorState, runtime: Ctx) -> dict:
    """The opening line goes to its agent; the scene's clock starts."""
    config = runtime.context.config
    ends_at = None if config.duration_s is None else state["now"] + config.duration_s
    await runtime.context.outbox.send(config.session, StateEvent(actor="director", state="started"))
    log.info("scene begins", session=config.session, to=config.opening_to)
    return {
        "addressee": config.opening_to,
        "cue": config.opening_text,
        "ends_at": ends_at,
        "max_turns": config.turns,
    }


async def cue(state: DirectorState, runtime: Ctx) -> dict:
    """Hand the addressee its line to answer; the others turn to it."""
    ctx, to = runtime.context, state["addressee"]
    assert to is not None
    member = ctx.member(to)
    text = state["cue"]
    await ctx.outbox.send(member.session, TranscriptEvent(speaker="user", text=text))
    for other in ctx.others(to):
        await _look(ctx, other, to, ctx.config.react_every_s * 2)
    log.info("turn", turn=state["turn"] + 1, agent=to, cue=text)
    return {
        "phase": "cued",
        "speaker": to,
        "addressee": None,
        "turn": state["turn"] + 1,
        "line": "",
        "utterance": None,
        "deadline": state["now"] + ctx.config.turn_timeout_s,
        "react_at": None,
    }


async def hear_line(state: DirectorState, runtime: Ctx) -> dict:
    """The speaker's reply: who it is for, and a caption on the composed session."""
    ctx, event = runtime.context, state["event"]
    assert isinstance(event, AgentLine)
    speaker = ctx.member(event.agent)
    caption = TranscriptEvent(
        speaker="agent", text=f"{speaker.name}: {event.text}", utterance=event.utterance
    )
    await ctx.outbox.send(ctx.config.session, caption)
    return {
        "line": event.text,
        "utterance": event.utterance,
        "addressee": addressee_of(event.text, event.agent, ctx.cast),
    }


async def start_turn(state: DirectorState, runtime: Ctx) -> dict:
    """The speaker talks: listeners face it and lean in; it faces whom it talks to."""
    ctx, speaker = runtime.context, state["speaker"]
    assert speaker is not None
    addressee = state["addressee"] or next_agent(speaker, ctx.cast)
    hold = ctx.config.react_every_s * 2
    for listener in ctx.others(speaker):
        await _look(ctx, listener, speaker, hold)
        await _behave(ctx, listener, LEAN, "posture", hold)
    await _look(ctx, ctx.member(speaker), addressee, ctx.config.react_every_s)
    return {
        "phase": "speaking",
        "deadline": None,
        "react_at": state["now"] + ctx.config.react_every_s,
        "addressee": addressee,
    }


async def react(state: DirectorState, runtime: Ctx) -> dict:
    """While the speaker talks, listeners nod now and then and keep looking at it."""
    ctx, speaker = runtime.context, state["speaker"]
    assert speaker is not None
    every = ctx.config.react_every_s
    for listener in ctx.others(speaker):
        await _look(ctx, listener, speaker, every * 2)
        await _behave(ctx, listener, NOD, "gaze", 0.8, overlap="overlay")
    return {"react_at": state["now"] + every}


async def end_turn(state: DirectorState, runtime: Ctx) -> dict:
    """The speaker's line played out: listeners smile; the line becomes the next cue."""
    ctx, speaker = runtime.context, state["speaker"]
    assert speaker is not None
    addressee = state["addressee"] or addressee_of(state["line"], speaker, ctx.cast)
    for listener in ctx.others(speaker):
        await _behave(ctx, listener, SMILE, "face", 1.6, overlap="overlay")
    text = state["line"] or ctx.config.topic or ctx.config.opening_text
    if len(ctx.cast) > 2:  # several listeners: say who spoke
        text = f"{ctx.member(speaker).name}: {text}"
    line = SceneLine(speaker, state["line"], addressee)
    return {"phase": "ready", "cue": text, "addressee": addressee, "lines": [line]}


async def skip(state: DirectorState, runtime: Ctx) -> dict:
    """The cued agent said nothing in time: the next agent gets the same cue."""
    ctx, speaker = runtime.context, state["speaker"]
    log.warning("agent did not answer in time; skipped", agent=speaker, turn=state["turn"])
    return {"phase": "ready", "addressee": next_agent(speaker, ctx.cast)}


async def finish(state: DirectorState, runtime: Ctx) -> dict:
    ctx = runtime.context
    await ctx.outbox.send(ctx.config.session, StateEvent(actor="director", state="stopped"))
    log.info("scene finished", turns=state["turn"], lines=len(state["lines"]))
    return {"phase": "done", "deadline": None, "react_at": None}


# --- routers -----------------------------------------------------------------------------------

Route = Literal[
    "begin", "hear_line", "start_turn", "react", "end_turn", "skip", "finish", "__end__"
]


def route_event(state: DirectorState) -> Route:
    event, phase = state["event"], state["phase"]
    if phase == "done":
        return END
    if isinstance(event, Begin):
        return "begin" if phase == "ready" and state["turn"] == 0 else END
    if isinstance(event, Tick):
        return route_tick(state)
    if getattr(event, "agent", None) != state["speaker"]:
        return END  # only the speaker's events move the scene on
    if isinstance(event, AgentLine):
        return "hear_line" if phase in ("cued", "speaking") else END
    if isinstance(event, AgentPhase):
        if phase == "cued" and event.state == "speaking":
            return "start_turn"
        if phase == "speaking" and event.state in ("idle", "listening"):
            return "end_turn"
        return END
    assert isinstance(event, Played), f"unknown event {event!r}"
    played_out = (
        event.phase in ("finished", "interrupted") and event.utterance == state["utterance"]
    )
    return "end_turn" if phase == "speaking" and played_out else END


def route_tick(state: DirectorState) -> Route:
    phase, now = state["phase"], state["now"]
    if phase == "cued" and time_up(state):
        return "finish"  # nobody is talking: no line to wait for
    if phase == "cued" and state["deadline"] is not None and now >= state["deadline"]:
        return "skip"
    if phase == "speaking" and state["react_at"] is not None and now >= state["react_at"]:
        return "react"
    return END


def time_up(state: DirectorState) -> bool:
    ends_at = state["ends_at"]
    return ends_at is not None and state["now"] >= ends_at


def after_turn(state: DirectorState) -> Literal["cue", "finish"]:
    """After a turn ended (or was skipped): another cue, or the end."""
    limit = state["max_turns"]
    if time_up(state) or (limit is not None and state["turn"] >= limit):
        return "finish"
    return "cue"


# --- graph -------------------------------------------------------------------------------------


def build_director_graph() -> StateGraph:
    """The director's graph, not compiled (call `.compile()`); run it with a
    `DirectorContext`."""
    graph = StateGraph(DirectorState, context_schema=DirectorContext, input_schema=DirectorInput)
    for node in (observe, begin, cue, hear_line, start_turn, react, end_turn, skip, finish):
        graph.add_node(node.__name__, node)
    graph.add_edge(START, "observe")
    graph.add_conditional_edges("observe", route_event)
    graph.add_edge("begin", "cue")
    graph.add_conditional_edges("end_turn", after_turn)
    graph.add_conditional_edges("skip", after_turn)
    for node in ("cue", "hear_line", "start_turn", "react", "finish"):
        graph.add_edge(node, END)
    return graph


# --- runner and bus service --------------------------------------------------------------------


class Director:
    """Runs the graph over events posted to it, with a tick every `tick_s`."""

    def __init__(self, context: DirectorContext, *, tick_s: float = 0.1) -> None:
        self.context = context
        self.tick_s = tick_s
        self.state: DirectorInput = initial_state()
        self.finished = asyncio.Event()
        self._graph = build_director_graph().compile()
        self._queue: asyncio.Queue[DirectorEvent] = asyncio.Queue()

    @property
    def lines(self) -> list[SceneLine]:
        return list(self.state["lines"])

    def post(self, event: DirectorEvent) -> None:
        self._queue.put_nowait(event)

    async def step(self, event: DirectorEvent) -> None:
        out = await self._graph.ainvoke({**self.state, "event": event}, context=self.context)
        self.state = DirectorInput(**{k: out[k] for k in CARRIED})  # type: ignore[typeddict-item]
        if self.state["phase"] == "done":
            self.finished.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Handle posted events until `stop` is set or the scene is done."""
        getter: asyncio.Future[DirectorEvent] | None = None
        try:
            while not (stop.is_set() or self.finished.is_set()):
                getter = getter or asyncio.ensure_future(self._queue.get())
                done, _ = await asyncio.wait({getter}, timeout=self.tick_s)
                event: DirectorEvent = Tick()
                if done:
                    event, getter = getter.result(), None
                try:
                    await self.step(event)
                except Exception:  # noqa: BLE001 - one failed event (a bus hiccup) is not fatal
                    log.exception("director step failed", event=type(event).__name__)
        finally:
            if getter is not None:
                getter.cancel()


def translate(agent: str, message: Message) -> DirectorEvent | None:
    """The director event, if any, in a message of `agent`'s events stream."""
    if isinstance(message, StateEvent) and message.actor == "agent":
        return AgentPhase(agent, message.state)
    if isinstance(message, TranscriptEvent) and message.speaker == "agent" and message.final:
        return AgentLine(agent, message.text, message.utterance)
    if isinstance(message, UtteranceEvent):
        return Played(agent, message.utterance, message.phase)
    return None


async def serve_director(
    bus: Bus, director: Director, *, stop: asyncio.Event, block_ms: int = 200
) -> list[SceneLine]:
    """Feed `director` the events of its agents' sessions and run it until the scene is done or
    `stop` is set; returns the lines said. Post `Begin` to start the conversation."""
    by_session = {m.session: m.id for m in director.context.cast}
    done = asyncio.Event()

    async def handle(stream: str, message: Message) -> None:
        session, _ = parse_stream(stream)
        event = translate(by_session[session], message) if session in by_session else None
        if event is not None:
            director.post(event)

    options = ConsumerOptions(
        group=GROUP, consumer=f"{GROUP}-{director.context.config.session}", block_ms=block_ms
    )
    streams = [stream_name(m.session, "events") for m in director.context.cast]
    consumer = asyncio.create_task(typed.subscribe(bus, streams, options, handle, stop=done))
    try:
        await director.run(stop)
    finally:
        done.set()
        with contextlib.suppress(asyncio.CancelledError):
            await consumer
    return director.lines
