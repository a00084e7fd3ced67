"""Implementations by name: the one place settings become objects.

Each role maps names to a class, imported only when picked, so an optional dependency is needed
only by those who choose it; a missing one fails with the pip extra that installs it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import structlog

from flowact.agents.base import TTS, VAD, MissingDependency, Responder
from flowact.planner.base import Planner
from flowact.schemas.agent_settings import AgentSettings, PlannerSettings

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Impl:
    module: str
    cls: str
    extra: str | None = None  # the pip extra with its dependencies


IMPLEMENTATIONS: dict[str, dict[str, Impl]] = {
    "responder": {
        "scripted": Impl("flowact.agents.scripted_responder", "ScriptedResponder"),
        "openai": Impl("flowact.agents.openai_responder", "OpenAIResponder", "llm"),
    },
    "tts": {
        "espeak": Impl("flowact.agents.espeak_tts", "EspeakTTS"),
        "passthrough": Impl("flowact.agents.passthrough_tts", "PassthroughTTS"),
    },
    "vad": {
        "webrtc": Impl("flowact.agents.webrtc_vad", "WebrtcVAD", "vad"),
        "energy": Impl("flowact.agents.energy_vad", "EnergyVAD"),
    },
    "planner": {
        "heuristic": Impl("flowact.planner.heuristic", "HeuristicPlanner"),
        "openai": Impl("flowact.planner.openai", "OpenAIPlanner", "llm"),
    },
}


def implementation(role: str, name: str) -> type:
    """The class registered as `name` for `role`.

    Raises ValueError for an unknown name and MissingDependency (naming the pip extra) when the
    implementation's optional dependency is not installed.
    """
    known = IMPLEMENTATIONS.get(role)
    if known is None:
        raise ValueError(f"unknown role {role!r}; one of {sorted(IMPLEMENTATIONS)}")
    impl = known.get(name)
    if impl is None:
        raise ValueError(f"unknown {role} {name!r}; one of {sorted(known)}")
    try:
        module = importlib.import_module(impl.module)
    except ModuleNotFoundError as err:
        if err.name is None or err.name.startswith("flowact"):
            raise
        extra = f"pip install flowact[{impl.extra}]" if impl.extra else f"pip install {err.name}"
        raise MissingDependency(
            f"{role} {name!r} ({impl.cls}) needs the '{err.name}' package: {extra}", name=err.name
        ) from err
    return getattr(module, impl.cls)


def build_responder(settings: AgentSettings) -> Responder | None:
    """None when replies come from elsewhere (a voice assistant)."""
    if settings.responder == "none":
        return None
    return implementation("responder", settings.responder).from_settings(settings)


def build_tts(settings: AgentSettings) -> TTS:
    return implementation("tts", settings.tts).from_settings(settings)


def build_vad(settings: AgentSettings) -> VAD:
    if settings.vad != "auto":
        return implementation("vad", settings.vad).from_settings(settings)
    try:
        return implementation("vad", "webrtc").from_settings(settings)
    except MissingDependency as err:
        log.info("webrtc VAD not installed; using the energy VAD", hint=str(err))
        return implementation("vad", "energy").from_settings(settings)


def build_planner(settings: PlannerSettings) -> Planner:
    return implementation("planner", settings.planner).from_settings(settings)
