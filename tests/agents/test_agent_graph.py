import asyncio

import numpy as np
import pytest
from agent_harness import Harness, espeak

from flowact.agents.base import Turn
from flowact.agents.events import Interrupt, Reply, Tick, UserAudio, UserText
from flowact.agents.graph import after_hear, build_graph, due_for_idle, route_event
from flowact.renderer.timeline import SessionTimeline
from flowact.schemas import timebase as tb

SECOND = tb.SAMPLE_RATE
PIECE = 320  # 20 ms of user audio per AudioSegment


@pytest.fixture(scope="module")
def voice() -> bytes:
    """Real speech (espeak-ng) standing in for the user's voice, 16 kHz s16le."""

    async def make() -> bytes:
        return b"".join([p.pcm async for p in espeak().stream("Wait, stop, I have a question.")])

    return asyncio.run(make())


def silence(samples: int) -> bytes:
    return bytes(2 * samples)


async def feed(h: Harness, pcm: bytes) -> None:
    for i in range(0, len(pcm), 2 * PIECE):
        h.agent.hear(pcm[i : i + 2 * PIECE])
        await h.agent.settle()


def test_the_graph_is_built_uncompiled_and_compiles() -> None:
    graph = build_graph()
    assert not hasattr(graph, "ainvoke")
    compiled = graph.compile()
    assert {"observe", "hear", "barge_in", "speak", "go_idle"} <= set(compiled.nodes)


def test_routers_are_pure_functions_of_state() -> None:
    base = {"phase": "speaking", "turn": 2, "idle_at": 100, "now": 50}
    assert route_event(base | {"event": Reply(1, "old")}) == "__end__"  # a stale reply
    assert route_event(base | {"phase": "thinking", "event": Reply(2, "x")}) == "speak"
    assert route_event(base | {"event": UserText("  ")}) == "__end__"
    assert route_event(base | {"event": UserAudio(b"")}) == "hear"
    assert route_event(base | {"event": Interrupt()}) == "barge_in"
    assert route_event(base | {"phase": "idle", "event": Interrupt()}) == "__end__"
    assert route_event(base | {"event": Tick()}) == "__end__"
    assert route_event(base | {"now": 100, "event": Tick()}) == "go_idle"
    assert not due_for_idle(base | {"phase": "idle", "now": 500})
    assert after_hear(base | {"voice": "onset"}) == "barge_in"
    assert after_hear(base | {"phase": "idle", "voice": "onset"}) == "listen"
    assert after_hear(base | {"phase": "listening", "voice": "onset"}) == "__end__"
    assert after_hear(base | {"voice": "offset"}) == "__end__"


async def test_a_typed_turn_thinks_speaks_and_returns_to_idle() -> None:
    async with Harness(lead_ms=10_000) as h:  # publish all speech at once
        h.agent.say("Hello there!")
        await h.wait_phase("speaking")
        await h.wait_for(lambda: h.agent.state["idle_at"] is not None)  # all speech published
        end = h.agent.state["idle_at"]
        h.clock.set(end - 1)
        await asyncio.sleep(0.05)
        assert h.agent.phase == "speaking"  # still playing
        h.clock.set(end)
        await h.wait_phase("idle")
        assert await h.states() == ["thinking", "speaking", "idle"]
        transcripts = [m for m in await h.messages("events") if m.type == "transcript"]
        assert [t.speaker for t in transcripts] == ["agent"]
        segments = await h.messages("audio")
        assert segments[-1].end and segments[-1].utterance == transcripts[0].utterance
        assert segments[0].start_sample + sum(s.samples for s in segments) == end
        assert [t.role for t in h.agent.state["history"]] == ["user", "assistant"]
        assert h.agent.state["history"][1] == Turn("assistant", transcripts[0].text)
        speaking = [m for m in await h.messages("events") if m.type == "state"][1]
        assert speaking.frame * tb.SAMPLES_PER_FRAME == segments[0].start_sample
        assert await h.messages("behavior")  # poses and gestures were planned


async def test_the_user_speaks_without_a_transcript_then_silence_means_idle(voice: bytes) -> None:
    async with Harness(transcript_wait_ms=500) as h:
        await feed(h, silence(4 * PIECE) + voice)
        assert h.agent.phase == "listening"
        await feed(h, silence(SECOND))  # the turn closes after speech_end_ms of silence
        assert h.agent.phase == "listening"  # a transcript may still come
        h.clock.advance(SECOND)
        await h.wait_phase("idle")
        assert await h.states() == ["listening", "idle"]
        prompts = [p.text for p in await h.messages("behavior")]
        assert any("listen" in t for t in prompts)  # an attentive stance while listening


async def test_the_user_speaks_then_the_transcript_comes(voice: bytes) -> None:
    async with Harness() as h:
        await feed(h, voice + silence(SECOND))
        h.agent.say("Wait, stop, I have a question.")
        await h.wait_phase("speaking")
        assert await h.states() == ["listening", "thinking", "speaking"]


async def test_barge_in_by_voice_interrupts_within_one_chunk(voice: bytes) -> None:
    async with Harness() as h:
        h.agent.say("Tell me something about the weather please")
        await h.wait_phase("speaking")
        await h.wait_for(lambda: h.agent.context.behaviors.published > 0)
        utterance = h.agent.state["utterance"]
        await feed(h, silence(10 * PIECE))
        assert h.agent.phase == "speaking"  # silence is no barge-in
        fed = 0
        while not [m for m in await h.messages("control") if m.type == "interrupt"]:
            assert fed < len(voice), "the user's speech never interrupted the agent"
            await feed(h, voice[2 * fed : 2 * (fed + PIECE)])
            fed += PIECE
        assert fed <= tb.SAMPLES_PER_CHUNK
        assert h.agent.phase == "listening"
        assert (await h.states())[-1] == "listening"
        # The rest of the interrupted utterance is never published, however time goes on.
        published = len(await h.messages("audio"))
        h.clock.advance(10 * SECOND)
        await asyncio.sleep(0.05)
        segments = await h.messages("audio")
        assert len(segments) == published
        assert not any(s.end for s in segments if s.utterance == utterance)


async def test_barge_in_cuts_the_renderers_timeline(voice: bytes) -> None:
    """What the agent publishes, played into the renderer's timeline, stops at the interrupt."""
    async with Harness(lead_ms=10_000) as h:  # publish the whole reply at once
        h.agent.say("Hello! Let me tell you a long story about the sea.")
        await h.wait_phase("speaking")
        await h.wait_for(lambda: h.agent.state["idle_at"] is not None)
        timeline = SessionTimeline()
        for segment in await h.messages("audio"):
            timeline.add_audio(segment)
        for index in range(2):
            timeline.emitted(index)  # the renderer has played two chunks
        h.clock.set(2 * tb.SAMPLES_PER_CHUNK)
        await feed(h, voice[: 2 * tb.SAMPLES_PER_CHUNK])
        (interrupt,) = [m for m in await h.messages("control") if m.type == "interrupt"]
        first, events = timeline.interrupt(interrupt.from_sample)
        assert first == 2 and [e.phase for e in events] == ["interrupted"]
        assert not timeline.plan(3).audio.any() and not timeline.plan(5).audio.any()


async def test_typing_while_the_agent_speaks_interrupts_and_answers_the_new_text() -> None:
    async with Harness() as h:
        h.agent.say("Hello!")
        await h.wait_phase("speaking")
        first = h.agent.state["utterance"]
        h.agent.say("Thanks, bye!")
        await h.wait_for(lambda: h.agent.state["utterance"] not in (None, first))
        assert await h.states() == ["thinking", "speaking", "thinking", "speaking"]
        assert [m.type for m in await h.messages("control")] == ["interrupt"]
        assert h.agent.state["turn"] == 2


class HeldResponder:
    """Replies only when released, and says which turn it answers."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.asked: list[str] = []

    async def reply(self, history: list[Turn]) -> str:
        self.asked.append(history[-1].text)
        await self.release.wait()
        return f"About {history[-1].text}."


async def test_only_the_reply_to_the_newest_turn_is_spoken() -> None:
    responder = HeldResponder()
    async with Harness(responder=responder) as h:
        h.agent.say("apples")
        await h.wait_phase("thinking")
        h.agent.say("pears")
        await h.agent.settle()
        responder.release.set()
        await h.wait_phase("speaking")
        await asyncio.sleep(0.05)
        said = [m.text for m in await h.messages("events") if m.type == "transcript"]
        assert responder.asked == ["apples", "pears"] and said == ["About pears."]


async def test_no_reply_in_time_means_idle() -> None:
    async with Harness(responder=None, think_timeout_ms=1000) as h:
        h.agent.say("Is anyone there?")
        await h.wait_phase("thinking")
        h.clock.advance(SECOND)
        await h.wait_phase("idle")


async def test_an_interrupt_stops_speech_and_goes_idle() -> None:
    async with Harness() as h:
        h.agent.say("Hello!")
        await h.wait_phase("speaking")
        h.agent.interrupt()
        await h.wait_phase("idle")
        assert [m.type for m in await h.messages("control")] == ["interrupt"]


async def test_user_audio_at_other_rates_is_resampled(voice: bytes) -> None:
    from flowact.schemas.pcm import float_to_s16, resample, s16_to_float

    at_48k = float_to_s16(resample(s16_to_float(voice), tb.SAMPLE_RATE, 48_000))
    async with Harness() as h:
        for i in range(0, len(at_48k), 2 * 960):
            h.agent.hear(at_48k[i : i + 2 * 960], 48_000)
        await h.agent.settle()
        assert h.agent.phase == "listening"
        assert np.isclose(h.agent.context.voice._fed, len(voice) // 2, atol=2 * 480)


async def test_handed_in_replies_play_back_to_back(voice: bytes) -> None:
    """A voice assistant hands in two replies at once: the second waits for the first."""
    from flowact.agents.passthrough_tts import PassthroughTTS

    async with Harness(responder=None, tts=PassthroughTTS(), lead_ms=600) as h:
        h.agent.say("Tell me two things.")
        await h.wait_phase("thinking")
        half = len(voice) // 2 // 2 * 2
        for text, pcm in (("First thing.", voice[:half]), ("Second thing.", voice[half:])):
            h.agent.hand_in(pcm[: len(pcm) // 2], tb.SAMPLE_RATE, text=text)
            h.agent.hand_in(pcm[len(pcm) // 2 :], tb.SAMPLE_RATE, end=True)
        await h.wait_phase("speaking")
        for _ in range(40):  # play it out
            h.clock.advance(tb.SAMPLES_PER_CHUNK)
            await asyncio.sleep(0.01)
        await h.wait_phase("idle")
        segments = await h.messages("audio")
        first, second = segments[0].utterance, segments[-1].utterance
        assert first != second
        one = [s for s in segments if s.utterance == first]
        two = [s for s in segments if s.utterance == second]
        assert one[-1].end and two[-1].end
        gap = two[0].start_sample - (one[-1].start_sample + one[-1].samples)
        assert 0 <= gap < tb.SAMPLES_PER_FRAME  # back to back, from the next frame
        assert two[0].start_sample % tb.SAMPLES_PER_FRAME == 0
        assert b"".join(s.pcm for s in one + two) == voice
        assert await h.states() == ["thinking", "speaking", "idle"]
        said = [m.text for m in await h.messages("events") if m.type == "transcript"]
        assert said == ["First thing.", "Second thing."]
        assert [t.text for t in h.agent.state["history"]][-2:] == said
