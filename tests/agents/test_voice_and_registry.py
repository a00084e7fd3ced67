import asyncio
import importlib
import sys

import numpy as np
import pytest
from agent_harness import espeak

from flowact.agents import registry
from flowact.agents.base import MissingDependency
from flowact.agents.energy_vad import EnergyVAD
from flowact.agents.espeak_tts import EspeakTTS
from flowact.agents.passthrough_tts import PassthroughTTS
from flowact.agents.scripted_responder import ScriptedResponder
from flowact.agents.voice import VoiceTracker
from flowact.agents.webrtc_vad import WebrtcVAD
from flowact.planner.heuristic import HeuristicPlanner
from flowact.planner.prosody import frame_levels
from flowact.schemas import timebase as tb
from flowact.schemas.agent_settings import AgentSettings, PlannerSettings

LEAD_IN = 8_000  # 0.5 s of silence before the speech


@pytest.fixture(scope="module")
def utterance() -> bytes:
    async def make() -> bytes:
        return b"".join([p.pcm async for p in espeak().stream("Could you say that again?")])

    noise = np.random.default_rng(0).normal(0, 3, LEAD_IN).astype("<i2").tobytes()
    return noise + asyncio.run(make()) + bytes(2 * tb.SAMPLE_RATE)


@pytest.mark.parametrize("vad", [EnergyVAD(), WebrtcVAD(2)], ids=["energy", "webrtc"])
def test_turn_onset_and_offset_on_real_speech(vad, utterance: bytes) -> None:
    tracker = VoiceTracker(vad, start_ms=90, end_ms=600)
    changes = []
    for i in range(0, len(utterance), 2 * 350):  # pieces of an odd size
        changes += tracker.feed(utterance[i : i + 2 * 350])
    assert [c.kind for c in changes] == ["onset", "offset"]
    onset, offset = changes
    # espeak starts speaking within a few ms of its output's start.
    assert abs(onset.at - LEAD_IN) <= 3 * vad.frame_samples
    voiced = np.flatnonzero(frame_levels(utterance) > -45)
    speech_end = (voiced[-1] + 1) * tb.SAMPLES_PER_FRAME
    # WebRTC keeps calling a few frames after speech "speech" (its own hangover): 0.3 s slack.
    assert speech_end - 2 * vad.frame_samples <= offset.at <= speech_end + 4_800
    assert not tracker.speaking


def test_registry_builds_what_settings_name() -> None:
    settings = AgentSettings(vad="energy", energy_threshold_db=-30)
    assert isinstance(registry.build_responder(settings), ScriptedResponder)
    assert registry.build_responder(AgentSettings(responder="none")) is None
    assert isinstance(registry.build_tts(settings), EspeakTTS)
    assert isinstance(registry.build_tts(AgentSettings(tts="passthrough")), PassthroughTTS)
    vad = registry.build_vad(settings)
    assert isinstance(vad, EnergyVAD) and vad.threshold_db == -30
    assert isinstance(registry.build_vad(AgentSettings()), WebrtcVAD)  # auto, installed here
    assert isinstance(registry.build_planner(PlannerSettings()), HeuristicPlanner)
    with pytest.raises(ValueError, match="unknown vad 'silero'"):
        registry.implementation("vad", "silero")


@pytest.fixture
def without(monkeypatch: pytest.MonkeyPatch):
    """Make a package look uninstalled: `import name` then raises ModuleNotFoundError."""

    def hide(package: str, *modules: str) -> None:
        monkeypatch.setitem(sys.modules, package, None)
        for module in modules:
            monkeypatch.delitem(sys.modules, module, raising=False)

    return hide


def test_a_missing_optional_dependency_names_the_extra(without) -> None:
    without("webrtcvad", "flowact.agents.webrtc_vad")
    with pytest.raises(MissingDependency, match=r"pip install flowact\[vad\]"):
        registry.build_vad(AgentSettings(vad="webrtc"))
    assert isinstance(registry.build_vad(AgentSettings(vad="auto")), EnergyVAD)
    without("openai", "flowact.agents.openai_responder", "flowact.planner.openai")
    with pytest.raises(MissingDependency, match=r"pip install flowact\[llm\]"):
        registry.build_responder(AgentSettings(responder="openai"))
    with pytest.raises(MissingDependency, match=r"pip install flowact\[llm\]"):
        registry.build_planner(PlannerSettings(planner="openai"))


def test_the_direct_import_also_names_the_extra(without) -> None:
    without("webrtcvad", "flowact.agents.webrtc_vad")
    with pytest.raises(MissingDependency, match=r"flowact\[vad\]"):
        importlib.import_module("flowact.agents.webrtc_vad")


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWACT_AGENT_RESPONDER", "openai")
    monkeypatch.setenv("FLOWACT_AGENT_LLM_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("FLOWACT_PLANNER_WINDOW_MS", "1200")
    agent, planner = AgentSettings(), PlannerSettings()
    assert (agent.responder, agent.llm_base_url, planner.window_ms) == (
        "openai",
        "http://127.0.0.1:9/v1",
        1200,
    )
    monkeypatch.setenv("FLOWACT_PLANNER_WINDOW_MS", "3000")  # the cadence is 1-2 s
    with pytest.raises(ValueError):
        PlannerSettings()
