import asyncio
import inspect
import io
import time

from agent_harness import espeak
from openai_loopback import LoopbackOpenAI
from PIL import Image

from flowact.agents.service import say, serve_agent
from flowact.bus import typed
from flowact.bus.memory import MemoryBus
from flowact.schemas import codec
from flowact.schemas import timebase as tb
from flowact.schemas.agent_settings import AgentSettings, PlannerSettings
from flowact.schemas.messages import AudioSegment, StartControl, StateEvent, StopControl
from flowact.schemas.streams import stream_name

SID = "svc"
FAST = {"tick_ms": 10, "vad": "energy", "lead_ms": 30_000}


async def read(bus: MemoryBus, kind: str) -> list:
    return [codec.decode(e.fields) for e in await bus.entries(stream_name(SID, kind))]


async def until(check, timeout: float = 5.0) -> None:
    """Wait until `check()` (sync or async) is true."""

    async def value() -> object:
        result = check()
        return await result if inspect.isawaitable(result) else result

    deadline = time.monotonic() + timeout
    while not await value():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.01)


def start(bus: MemoryBus, stop: asyncio.Event, **planner: object) -> asyncio.Task[None]:
    return asyncio.create_task(
        serve_agent(
            bus,
            SID,
            AgentSettings(**FAST),
            stop=stop,
            planner=PlannerSettings(**planner),
            block_ms=50,
        )
    )


async def test_the_service_answers_text_and_is_barged_in_by_voice() -> None:
    bus, stop = MemoryBus(), asyncio.Event()
    service = start(bus, stop)
    # The renderer says its playhead is at frame 2,500 (100 s): the agent's clock follows.
    await typed.publish(bus, SID, StateEvent(actor="renderer", state="started", frame=2500))
    await say(bus, SID, "Hello there!")

    async def answered() -> bool:
        return any(
            m.type == "transcript" and m.speaker == "agent" for m in await read(bus, "events")
        )

    await until(answered)
    await until(lambda: _ended(bus))
    first = (await read(bus, "audio"))[0]
    assert 2500 * tb.SAMPLES_PER_FRAME <= first.start_sample < 2600 * tb.SAMPLES_PER_FRAME

    speech = b"".join([p.pcm async for p in espeak().stream("No, stop.")])
    for seq, i in enumerate(range(0, len(speech), 2 * 480)):
        segment = AudioSegment(utterance="mic", seq=seq, pcm=speech[i : i + 960], speaker="user")
        await typed.publish(bus, SID, segment)

    async def interrupted() -> bool:
        return [m.type for m in await read(bus, "control")] == ["interrupt"]

    async def listening() -> bool:
        return (await agent_states(bus))[-1] == "listening"

    await until(interrupted)
    await until(listening)  # the interrupt goes out first, then the state
    assert await agent_states(bus) == ["thinking", "speaking", "listening"]
    await typed.publish(bus, SID, StopControl())
    await asyncio.wait_for(service, 5)  # a stop control ends the service
    assert not stop.is_set()


async def agent_states(bus: MemoryBus) -> list[str]:
    events = await read(bus, "events")
    return [m.state for m in events if m.type == "state" and m.actor == "agent"]


async def _ended(bus: MemoryBus) -> bool:
    return any(s.end for s in await read(bus, "audio"))


async def test_the_planner_gets_the_reference_image_from_the_start_control(
    llm: LoopbackOpenAI,
) -> None:
    llm.answer_json({"behaviors": []})
    out = io.BytesIO()
    Image.new("RGB", (40, 40), (10, 200, 30)).save(out, format="PNG")
    bus, stop = MemoryBus(), asyncio.Event()
    service = start(bus, stop, planner="openai", base_url=llm.base_url, timeout_s=2.0)
    await typed.publish(bus, SID, StartControl(image=out.getvalue()))
    await asyncio.sleep(0.2)
    await say(bus, SID, "What do you see?")
    await until(lambda: _ended(bus))
    await until(lambda: len(llm.requests) >= 2)
    stop.set()
    await asyncio.wait_for(service, 5)
    # Requests still in flight at the stop are cut off: their bodies never arrive.
    contents = [r["messages"][1]["content"] for r in llm.requests if r]
    assert all(
        len(c) == 2 and c[1]["image_url"]["url"].startswith("data:image/png") for c in contents
    )
    states = {c[0]["text"].split('"state": "')[1].split('"')[0] for c in contents}
    assert {"thinking", "speaking"} <= states
