"""Agent benchmark: figures for the conversation path, on an in-process bus.

- graph step: wall time of one graph run for a 20 ms piece of user audio and for a clock tick;
- time to first audio: `say` to the first AudioSegment on the bus (scripted reply, espeak-ng);
- barge-in: how much of the user's speech (audio ms) and how much wall time passes from its
  onset to the InterruptControl on the bus, for each VAD;
- espeak-ng real-time factor, and the heuristic planner's time per window.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

from flowact.agents.agent import Agent
from flowact.agents.clock import ManualClock
from flowact.agents.energy_vad import EnergyVAD
from flowact.agents.espeak_tts import EspeakTTS
from flowact.agents.events import Tick, UserAudio
from flowact.agents.outbox import BusOutbox
from flowact.agents.scripted_responder import ScriptedResponder
from flowact.bus.memory import MemoryBus
from flowact.planner.base import PlanRequest
from flowact.planner.heuristic import HeuristicPlanner
from flowact.schemas import timebase as tb
from flowact.schemas.agent_settings import AgentSettings
from flowact.schemas.streams import stream_name

PIECE = tb.SAMPLE_RATE // 50  # 20 ms
B = tb.BYTES_PER_SAMPLE


def _agent(vad: Any = None) -> tuple[Agent, MemoryBus]:
    bus = MemoryBus()
    agent = Agent(
        outbox=BusOutbox(bus, "bench"),
        clock=ManualClock(),
        responder=ScriptedResponder(),
        tts=EspeakTTS(),
        vad=vad or EnergyVAD(),
        planner=HeuristicPlanner(),
        settings=AgentSettings(tick_ms=10),
    )
    return agent, bus


async def _step_times(rounds: int) -> dict[str, float]:
    agent, _ = _agent()
    out = {}
    for name, event in (("audio_piece", UserAudio(bytes(PIECE * B))), ("tick", Tick())):
        times = []
        for _ in range(rounds):
            started = time.perf_counter()
            await agent.step(event)
            times.append((time.perf_counter() - started) * 1000)
        out[f"step_{name}_ms_p50"] = statistics.median(times)
        out[f"step_{name}_ms_p95"] = sorted(times)[int(0.95 * len(times))]
    await agent.close()
    return out


async def _first_audio() -> float:
    agent, bus = _agent()
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    started = time.perf_counter()
    agent.say("Hello there, how are you?")
    while not await bus.length(stream_name("bench", "audio")):
        await asyncio.sleep(0.001)
    elapsed = (time.perf_counter() - started) * 1000
    stop.set()
    await task
    return elapsed


async def _barge_in(vad: Any, voice: bytes) -> tuple[float, float]:
    """(audio ms of the user's speech fed, wall ms after its first voiced piece)."""
    agent, bus = _agent(vad)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    agent.say("Let me tell you a long story.")
    while agent.phase != "speaking":
        await asyncio.sleep(0.001)
    control = stream_name("bench", "control")
    fed, started = 0, time.perf_counter()
    while not await bus.length(control) and fed < len(voice) // B:
        agent.hear(voice[fed * B : (fed + PIECE) * B])
        await agent.settle()
        fed += PIECE
    wall = (time.perf_counter() - started) * 1000
    stop.set()
    await task
    return fed * 1000 / tb.SAMPLE_RATE, wall


async def run_agent_bench(rounds: int = 200) -> dict[str, float]:
    """Measure; every figure in milliseconds unless its name says otherwise."""
    tts = EspeakTTS()
    started = time.perf_counter()
    voice = b"".join([p.pcm async for p in tts.stream("Wait, I have a question about that.")])
    synth_s = time.perf_counter() - started
    report: dict[str, float] = {
        "espeak_realtime_factor": synth_s / (len(voice) / B / tb.SAMPLE_RATE)
    }
    report |= await _step_times(rounds)
    report["say_to_first_audio_ms"] = await _first_audio()
    vads: dict[str, Any] = {"energy": EnergyVAD()}
    try:
        from flowact.agents.webrtc_vad import WebrtcVAD

        vads["webrtc"] = WebrtcVAD()
    except ModuleNotFoundError:
        pass
    for name, vad in vads.items():
        audio_ms, wall_ms = await _barge_in(vad, voice)
        report[f"barge_in_{name}_audio_ms"] = audio_ms
        report[f"barge_in_{name}_wall_ms"] = wall_ms
    planner = HeuristicPlanner()
    window = voice[: 1500 * tb.SAMPLE_RATE // 1000 * B]
    request = PlanRequest(0, 38, "speaking", "agent", "Wait, I have a question?", window)
    started = time.perf_counter()
    for _ in range(rounds):
        planner.plan_now(request)
    report["heuristic_plan_ms"] = (time.perf_counter() - started) * 1000 / rounds
    return report


def format_report(report: dict[str, float]) -> str:
    width = max(len(k) for k in report)
    return "\n".join(f"{k:<{width}}  {v:8.2f}" for k, v in report.items())
