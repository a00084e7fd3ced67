"""`flowact demo`: the whole system in one process, recorded to an MP4.

The composition root of the embedded default: an in-process bus, one renderer worker, the
conversation agent (scripted replies, espeak-ng speech) and the recorder. A scripted user says a
few lines; the agent answers; the renderer turns the answers into video; the recorder writes it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

import av
import structlog

from flowact.agents.service import say, serve_agent
from flowact.bus.memory import MemoryBus
from flowact.bus.typed import publish
from flowact.renderer.media import contact_sheet, encode_png
from flowact.renderer.recorder import RecordingStats, record_session
from flowact.renderer.service import RendererService
from flowact.renderer.weights import shipped_checkpoint
from flowact.schemas import codec
from flowact.schemas import timebase as tb
from flowact.schemas.agent_settings import AgentSettings
from flowact.schemas.messages import SessionRequest, StateEvent, StopControl
from flowact.schemas.settings import BusSettings, RendererSettings
from flowact.schemas.streams import stream_name

log = structlog.get_logger(__name__)

SESSION = "demo"
REFERENCE_NAME = "reference.png"
LINES = ("Hello there! Who are you?", "What can you do for me?")


@dataclass(frozen=True)
class DemoResult:
    path: Path
    sheet: Path | None
    recording: RecordingStats
    first_chunk_s: float | None
    errors: list[str] = field(default_factory=list)


async def run_demo(
    out: Path,
    renderer: RendererSettings,
    agent: AgentSettings,
    *,
    lines: tuple[str, ...] = LINES,
    image: bytes | None = None,
    timeout_s: float = 600.0,
) -> DemoResult:
    """Render a short conversation to `out`; returns what was recorded."""
    bus = MemoryBus()
    bus_settings = BusSettings(url="memory://")
    stop = asyncio.Event()
    out.parent.mkdir(parents=True, exist_ok=True)
    service = RendererService(bus, renderer, bus_settings)
    tasks = [
        asyncio.create_task(service.run(stop), name="renderer"),
        asyncio.create_task(serve_agent(bus, SESSION, agent, stop=stop), name="agent"),
    ]
    recording = asyncio.create_task(record_session(bus, SESSION, out, stop=stop, after="0"))
    errors: list[str] = []
    try:
        await publish(bus, SESSION, SessionRequest(session=SESSION, image=image))
        async with asyncio.timeout(timeout_s):
            watcher = _Events(bus)
            await watcher.until(lambda e: isinstance(e, StateEvent) and e.state == "started")
            for line in lines:
                log.info("user says", text=line)
                await say(bus, SESSION, line)
                # The agent answers (it may speak several utterances), then stops speaking.
                await watcher.until(lambda e: _agent_state(e) == "speaking")
                await watcher.until(lambda e: _agent_state(e) in ("idle", "listening"))
            await asyncio.sleep(2 * tb.CHUNK_SECONDS)  # the last words' chunks reach the recorder
            errors = [e.reason for e in watcher.seen if e.type == "error"]
        runner = service.runners.get(SESSION)
        first_chunk_s = runner.first_chunk_s if runner else None
        await publish(bus, SESSION, StopControl())
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        stats = await recording
    sheet = write_contact_sheet(out) if stats.chunks else None
    return DemoResult(out, sheet, stats, first_chunk_s, errors)


def default_reference(preset: str) -> Path | None:
    """The reference image shipped with the preset's checkpoint: a character the model never
    saw in training."""
    checkpoint = shipped_checkpoint(preset)
    path = checkpoint / REFERENCE_NAME if checkpoint is not None else None
    return path if path is not None and path.is_file() else None


def write_contact_sheet(video: Path, every: int = tb.FRAMES_PER_CHUNK // 2) -> Path:
    """A PNG beside `video`: one frame every `every` frames (0.24 s), captioned with its time."""
    frames, labels = [], []
    with av.open(str(video)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i % every == 0:
                frames.append(frame.to_ndarray(format="rgb24"))
                labels.append(f"{i / tb.FPS:.2f}s")
    path = video.with_suffix(".png")
    path.write_bytes(encode_png(contact_sheet(frames, columns=10, labels=labels)))
    return path


def _agent_state(event: object) -> str | None:
    if isinstance(event, StateEvent) and event.actor == "agent":
        return event.state
    return None


class _Events:
    """Reads the demo session's events in order, remembering what it saw."""

    def __init__(self, bus: MemoryBus) -> None:
        self.bus = bus
        self.stream = stream_name(SESSION, "events")
        self.after = "0"
        self.seen: list = []

    async def until(self, check) -> None:  # noqa: ANN001
        while True:
            for entry in await self.bus.read(self.stream, self.after, block_ms=500):
                self.after = entry.id
                event = codec.decode(entry.fields, self.stream)
                self.seen.append(event)
                if check(event):
                    return
