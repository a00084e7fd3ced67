"""The director graph: turn-taking, listener behaviors, an agent addressing another."""

from __future__ import annotations

import pytest

from flowact.agents.director import (
    AgentLine,
    AgentPhase,
    Begin,
    CastMember,
    Director,
    DirectorConfig,
    DirectorContext,
    Played,
    SceneOutbox,
    Tick,
    addressee_of,
    after_turn,
    initial_state,
    look_toward,
    route_event,
    translate,
)
from flowact.bus.memory import MemoryBus
from flowact.schemas import codec
from flowact.schemas.messages import BehaviorPrompt, StateEvent, TranscriptEvent, UtteranceEvent
from flowact.schemas.streams import stream_name

DUO = (CastMember("ada", "Ada", "s-ada", (0, 0)), CastMember("bo", "Bo", "s-bo", (1, 0)))
TRIO = (*DUO, CastMember("cy", "Cy", "s-cy", (0, 1)))
OPENING = "Hello Ada! What are you doing this weekend?"


class Harness:
    """A director over a MemoryBus with a clock moved by hand; reads what it published."""

    def __init__(self, cast=DUO, **config) -> None:
        self.bus = MemoryBus()
        self.time = 100.0
        self.read_upto: dict[str, str] = {}
        settings = DirectorConfig(session="scene", opening_to="ada", opening_text=OPENING, **config)
        context = DirectorContext(settings, cast, SceneOutbox(self.bus), clock=lambda: self.time)
        self.director = Director(context)

    async def step(self, event, *, advance: float = 0.0) -> None:
        self.time += advance
        await self.director.step(event)

    async def new(self, session: str, kind: str) -> list:
        """Messages published on the stream since the last look."""
        stream = stream_name(session, kind)
        entries = await self.bus.read(stream, self.read_upto.get(stream, "0"), block_ms=0)
        if entries:
            self.read_upto[stream] = entries[-1].id
        return [codec.decode(e.fields, stream) for e in entries]

    @property
    def state(self):
        return self.director.state


def prompts(messages) -> list[tuple[str, str, str]]:
    return [(m.text, m.channel, m.overlap) for m in messages if isinstance(m, BehaviorPrompt)]


async def test_a_turn_cue_listen_react_and_hand_over() -> None:
    h = Harness(turns=2, react_every_s=2.0)
    await h.step(Begin())
    cue = await h.new("s-ada", "events")
    assert [(m.speaker, m.text) for m in cue] == [("user", OPENING)]  # as `say` would
    assert h.state["phase"] == "cued" and h.state["speaker"] == "ada" and h.state["turn"] == 1
    bo_sees = prompts(await h.new("s-bo", "behavior"))
    assert [(c, o) for _, c, o in bo_sees] == [("gaze", "replace")]
    assert bo_sees[0][0] in ("looks to the left", "turns the eyes to the left")  # ada is left

    line = "I am going hiking in the mountains. And you?"
    await h.step(AgentLine("ada", line, "u-1"))
    caption = await h.new("scene", "events")
    assert [m.text for m in caption if isinstance(m, TranscriptEvent)] == [f"Ada: {line}"]
    await h.step(AgentPhase("ada", "speaking"), advance=0.5)
    assert h.state["phase"] == "speaking" and h.state["addressee"] == "bo"
    listening = prompts(await h.new("s-bo", "behavior"))
    assert {c for _, c, _ in listening} == {"gaze", "posture"}  # looks at ada, leans in
    speaker_looks = prompts(await h.new("s-ada", "behavior"))
    assert speaker_looks[0][0] in ("looks to the right", "turns the eyes to the right")

    await h.step(Tick(), advance=1.0)  # not yet time to react
    assert await h.new("s-bo", "behavior") == []
    await h.step(Tick(), advance=1.0)
    reaction = prompts(await h.new("s-bo", "behavior"))
    nods = [t for t, c, o in reaction if c == "gaze" and o == "overlay"]
    assert len(nods) == 1 and "nod" in nods[0]

    await h.step(AgentPhase("bo", "idle"))  # not the speaker: nothing happens
    assert h.state["phase"] == "speaking"
    await h.step(AgentPhase("ada", "idle"), advance=3.0)  # ada's line played out
    handed = await h.new("s-bo", "events")
    assert [(m.speaker, m.text) for m in handed] == [("user", line)]  # ada's reply, to bo
    assert any(c == "face" for _, c, _ in prompts(await h.new("s-bo", "behavior")))  # smiles
    assert h.state["speaker"] == "bo" and h.state["turn"] == 2 and h.state["phase"] == "cued"
    assert [(x.agent, x.to) for x in h.director.lines] == [("ada", "bo")]

    await h.step(AgentLine("bo", "I will read.", "u-2"))
    await h.step(AgentPhase("bo", "speaking"))
    await h.step(Played("bo", "u-other", "finished"))  # another utterance: not the line's end
    assert h.state["phase"] == "speaking"
    await h.step(Played("bo", "u-2", "finished"))  # the renderer says bo's line played out
    assert h.state["phase"] == "done" and h.director.finished.is_set()
    ends = [m for m in await h.new("scene", "events") if isinstance(m, StateEvent)]
    assert [(e.actor, e.state) for e in ends] == [("director", "stopped")]
    assert [(x.agent, x.text, x.to) for x in h.director.lines] == [
        ("ada", line, "bo"),
        ("bo", "I will read.", "ada"),
    ]
    await h.step(AgentPhase("bo", "speaking"))  # after the end nothing moves
    assert h.state["phase"] == "done"


async def test_an_agent_addresses_another_by_name() -> None:
    h = Harness(cast=TRIO, turns=5)
    await h.step(Begin())
    await h.new("s-cy", "behavior")
    await h.step(AgentLine("ada", "Bo likes tea. What about you, Cy?", "u-1"))
    await h.step(AgentPhase("ada", "speaking"))
    cy_sees = prompts(await h.new("s-cy", "behavior"))
    assert cy_sees[0][0] in ("looks up",)  # cy sits under ada in the grid
    await h.step(AgentPhase("ada", "idle"))
    assert h.state["speaker"] == "cy"
    handed = await h.new("s-cy", "events")
    assert [m.text for m in handed] == ["Ada: Bo likes tea. What about you, Cy?"]
    assert await h.new("s-bo", "events") == []  # bo was named, but not addressed last


async def test_an_agent_that_does_not_answer_is_skipped_and_time_ends_the_scene() -> None:
    h = Harness(turn_timeout_s=5.0, duration_s=30.0)
    await h.step(Begin())
    await h.step(Tick(), advance=4.0)
    assert h.state["speaker"] == "ada"
    await h.step(Tick(), advance=2.0)  # ada said nothing for 6 s: bo gets the same cue
    assert h.state["speaker"] == "bo" and h.state["phase"] == "cued"
    assert [m.text for m in await h.new("s-bo", "events")] == [OPENING]
    await h.step(Tick(), advance=30.0)  # time is up while nobody talks
    assert h.state["phase"] == "done"


def state(**kw) -> dict:
    return {**initial_state(), "now": 0.0, "event": Tick()} | kw


@pytest.mark.parametrize(
    ("kw", "route"),
    [
        ({"event": Begin()}, "begin"),
        ({"event": Begin(), "turn": 3}, "__end__"),
        ({"event": AgentPhase("a", "speaking"), "phase": "cued", "speaker": "a"}, "start_turn"),
        ({"event": AgentPhase("b", "speaking"), "phase": "cued", "speaker": "a"}, "__end__"),
        ({"event": AgentPhase("a", "thinking"), "phase": "cued", "speaker": "a"}, "__end__"),
        ({"event": AgentPhase("a", "idle"), "phase": "speaking", "speaker": "a"}, "end_turn"),
        ({"event": AgentLine("a", "hi", "u"), "phase": "cued", "speaker": "a"}, "hear_line"),
        (
            {
                "event": Played("a", "u", "interrupted"),
                "phase": "speaking",
                "speaker": "a",
                "utterance": "u",
            },
            "end_turn",
        ),  # fmt: skip
        ({"phase": "cued", "deadline": 5.0, "now": 6.0}, "skip"),
        ({"phase": "cued", "deadline": 5.0, "now": 4.0}, "__end__"),
        ({"phase": "cued", "ends_at": 3.0, "now": 4.0}, "finish"),
        ({"phase": "speaking", "react_at": 1.0, "now": 1.0}, "react"),
        ({"phase": "speaking", "ends_at": 1.0, "now": 9.0}, "__end__"),  # the line goes on
        ({"phase": "done", "event": Begin()}, "__end__"),
    ],
)
def test_route_event(kw, route) -> None:
    assert route_event(state(**kw)) == route


def test_after_turn_and_helpers() -> None:
    assert after_turn(state(turn=2, max_turns=2)) == "finish"
    assert after_turn(state(turn=1, max_turns=2)) == "cue"
    assert after_turn(state(turn=9, ends_at=5.0, now=6.0)) == "finish"
    assert after_turn(state(turn=9)) == "cue"
    assert addressee_of("Nice. BO, your turn!", "ada", TRIO) == "bo"
    assert addressee_of("Cy and Bo, listen. Bo?", "ada", TRIO) == "bo"  # the last one named
    assert addressee_of("Boring weather.", "ada", TRIO) == "bo"  # no name: the next in order
    assert addressee_of("Boring weather.", "cy", TRIO) == "ada"
    assert look_toward((1, 0), (0, 0)) == "left" and look_toward((0, 1), (0, 0)) == "up"
    assert look_toward((0, 0), (1, 1)) == "right"


def test_translate_keeps_what_moves_the_scene() -> None:
    assert translate("a", StateEvent(actor="agent", state="speaking")) == AgentPhase(
        "a", "speaking"
    )
    assert translate("a", StateEvent(actor="renderer", state="speaking", frame=0)) is None
    assert translate("a", TranscriptEvent(speaker="agent", text="hi", utterance="u")) == AgentLine(
        "a", "hi", "u"
    )
    assert translate("a", TranscriptEvent(speaker="user", text="hi")) is None  # our own cues
    played = UtteranceEvent(phase="finished", utterance="u", frame=3, sample=1920)
    assert translate("a", played) == Played("a", "u", "finished")
