"""An agent on a MemoryBus with a manual clock, and ways to look at what it published."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from flowact.agents.agent import Agent
from flowact.agents.base import TTS, VAD, Responder
from flowact.agents.clock import ManualClock
from flowact.agents.energy_vad import EnergyVAD
from flowact.agents.espeak_tts import EspeakTTS
from flowact.agents.outbox import BusOutbox
from flowact.agents.scripted_responder import ScriptedResponder
from flowact.bus.memory import MemoryBus
from flowact.planner.base import Planner
from flowact.planner.heuristic import HeuristicPlanner
from flowact.schemas import codec
from flowact.schemas.agent_settings import AgentSettings
from flowact.schemas.messages import Message
from flowact.schemas.streams import stream_name

SESSION = "test"
_TTS: list[TTS] = []


def espeak() -> TTS:
    if not _TTS:
        _TTS.append(EspeakTTS())
    return _TTS[0]


class Harness:
    def __init__(
        self,
        *,
        responder: Responder | None | str = "scripted",
        tts: TTS | None = None,
        vad: VAD | None = None,
        planner: Planner | None = None,
        **settings: object,
    ) -> None:
        self.bus = MemoryBus()
        self.clock = ManualClock()
        self.agent = Agent(
            outbox=BusOutbox(self.bus, SESSION),
            clock=self.clock,
            responder=ScriptedResponder() if responder == "scripted" else responder,  # type: ignore[arg-type]
            tts=tts or espeak(),
            vad=vad or EnergyVAD(),
            planner=planner or HeuristicPlanner(),
            settings=AgentSettings(**({"tick_ms": 10} | settings)),
        )
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Harness:
        self._task = asyncio.create_task(self.agent.run(self._stop))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._task is not None
        await self._task

    async def messages(self, kind: str) -> list[Message]:
        entries = await self.bus.entries(stream_name(SESSION, kind))  # type: ignore[arg-type]
        return [codec.decode(e.fields) for e in entries]

    async def states(self) -> list[str]:
        return [m.state for m in await self.messages("events") if m.type == "state"]

    async def wait_for(self, check: Callable[[], object], timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            assert time.monotonic() < deadline, "timed out waiting"
            await asyncio.sleep(0.005)

    async def wait_phase(self, phase: str, timeout: float = 5.0) -> None:
        await self.wait_for(lambda: self.agent.phase == phase, timeout)
