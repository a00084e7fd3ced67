"""Settings of the conversation agent and of the action planner.

Implementations are picked by name (`responder`, `tts`, `vad`, `planner`) through the registry in
`flowact.agents.registry`. The LLM endpoints are any OpenAI-compatible `/v1` base URL; the agent's
chat model and the planner's multimodal model are configured apart, since they are often different
models (or different servers).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from flowact.schemas import timebase as tb
from flowact.schemas.settings import Settings

_CHUNK_MS = round(tb.CHUNK_SECONDS * 1000)


class AgentSettings(Settings):
    section: ClassVar[str] = "agent"
    model_config = SettingsConfigDict(env_prefix="FLOWACT_AGENT_")

    responder: Literal["scripted", "openai", "none"] = Field(
        default="scripted", description="who writes replies; none: a voice assistant hands them in"
    )
    tts: Literal["espeak", "passthrough"] = Field(
        default="espeak", description="speech: espeak-ng, or audio handed in by a voice assistant"
    )
    vad: Literal["auto", "webrtc", "energy"] = Field(
        default="auto", description="voice activity detection; auto: webrtc when installed"
    )

    # OpenAI-compatible chat endpoint (responder = openai).
    llm_base_url: str = "http://127.0.0.1:8000/v1"
    llm_model: str = "gpt-4o-mini"
    llm_api_key: SecretStr | None = Field(default=None, description="sent as a bearer token")
    llm_timeout_s: float = Field(default=8.0, gt=0)
    llm_retries: int = Field(default=1, ge=0, le=5)
    llm_max_tokens: int = Field(default=160, gt=0)
    system_prompt: str = (
        "You are a friendly embodied assistant shown as a video avatar. Answer in one to three "
        "short spoken sentences, plain text, no lists, no markdown, no emoji."
    )
    history_turns: int = Field(default=16, gt=0, description="conversation turns kept as context")

    # Speech (tts = espeak).
    voice: str = Field(default="en-us", description="espeak-ng voice")
    words_per_minute: int = Field(default=165, ge=80, le=450)

    # Publishing agent speech on the session clock.
    segment_ms: int = Field(default=240, ge=20, le=480, description="audio segment length")
    # A chunk's audio conditions it from its first denoising step when it is on the bus before
    # the chunk enters the renderer's stream: `stream_chunks` (3) chunk periods before playback.
    # Later audio still plays and still steers the steps the chunk has left.
    lead_ms: int = Field(
        default=4 * _CHUNK_MS, ge=0, description="how far ahead of playback speech is published"
    )
    start_delay_ms: int = Field(
        default=3 * _CHUNK_MS, ge=0, description="gap between 'now' and the first sample of a reply"
    )

    # Listening.
    vad_aggressiveness: int = Field(default=2, ge=0, le=3, description="webrtc VAD mode")
    energy_threshold_db: float = Field(default=-38.0, le=0, description="energy VAD, dBFS")
    speech_start_ms: int = Field(default=90, ge=10, description="voiced time that opens a turn")
    speech_end_ms: int = Field(default=600, ge=60, description="silence that closes a turn")
    transcript_wait_ms: int = Field(
        default=1500, ge=0, description="after the user stops, how long to wait for a transcript"
    )
    think_timeout_ms: int = Field(
        default=15_000, gt=0, description="longest the agent stays thinking before going idle"
    )
    tick_ms: int = Field(default=100, gt=0, description="how often the agent looks at the clock")
    stale_input_ms: int = Field(
        default=3000, gt=0, description="older user audio on the bus is skipped (no barge-in)"
    )

    reference_image: Path | None = Field(default=None, description="PNG/JPEG for the planner")
    seed: int = Field(default=0, ge=0)


class PlannerSettings(Settings):
    section: ClassVar[str] = "planner"
    model_config = SettingsConfigDict(env_prefix="FLOWACT_PLANNER_")

    planner: Literal["heuristic", "openai"] = "heuristic"
    window_ms: int = Field(
        default=1500, ge=1000, le=2000, description="speech planned per call (the cadence)"
    )
    seed: int = Field(default=0, ge=0)

    # OpenAI-compatible multimodal chat endpoint (planner = openai).
    base_url: str = "http://127.0.0.1:8000/v1"
    model: str = "gpt-4o-mini"
    api_key: SecretStr | None = None
    timeout_s: float = Field(default=4.0, gt=0)
    retries: int = Field(default=1, ge=0, le=5)
    max_prompts: int = Field(default=4, ge=1, le=12, description="prompts kept per window")
    concurrency: int = Field(default=2, ge=1, le=8, description="planner calls in flight")
