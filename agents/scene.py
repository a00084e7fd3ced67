"""Multi-agent scenes: a scene file in, agents, renderer sessions, director and compositor wired.

`load_scene` reads and checks a scene file (`schemas/scene.py`); `run_scene` plays it on a bus:

- one renderer session per agent (`{scene}-{agent}`), rendered by an embedded renderer worker
  with one slot per agent, or by the bus's renderer workers (`renderer: external`);
- one `serve_agent` per session, with the agent's espeak voice, and its persona and the topic in
  the system prompt of the OpenAI responder (the scripted responder ignores them);
- the director (`agents/director.py`), which hands each agent the line it answers and makes the
  others listen;
- the compositor (`renderer/compositor.py`), which publishes the composed session, and
  optionally the MP4 recorder on it.

The renderer is imported only when embedded, so the agent side stays free of torch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import yaml
from pydantic import ValidationError

from flowact.agents.director import (
    Begin,
    CastMember,
    Director,
    DirectorConfig,
    DirectorContext,
    SceneLine,
    SceneOutbox,
    serve_director,
)
from flowact.agents.service import serve_agent
from flowact.bus.base import Bus, dead_letter_stream
from flowact.bus.typed import publish
from flowact.renderer.compositor import Compositor, CompositorConfig, CompositorStats, Tile
from flowact.schemas import codec
from flowact.schemas import timebase as tb
from flowact.schemas.agent_settings import AgentSettings, PlannerSettings
from flowact.schemas.messages import ErrorEvent, SessionRequest, StateEvent, StopControl
from flowact.schemas.scene import Scene, SceneAgent
from flowact.schemas.settings import BusSettings, RendererSettings
from flowact.schemas.streams import STREAM_KINDS, stream_name

log = structlog.get_logger(__name__)

TAIL_CHUNKS = 3  # composed after the last line, so the recording ends in silence
TAIL_WAIT_S = 30.0  # the longest the tail is waited for (renderers slower than real time)


class SceneError(ValueError):
    """A scene file that cannot be played; `field` is where in the file (`agents.1.image`)."""

    def __init__(self, path: Path | str, field: str | None, reason: str) -> None:
        where = f"{path}: {field}" if field else str(path)
        super().__init__(f"{where}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class SceneResult:
    """What a scene did: its lines, the compositor's counts, the lag reports, the recording."""

    session: str
    lines: list[SceneLine]
    compositor: CompositorStats
    reports: list[str]
    out: Path | None = None
    recording: Any = None  # RecordingStats when recorded


# --- the file ----------------------------------------------------------------------------------


def load_scene(path: Path | str) -> Scene:
    """Read, validate and resolve a scene file: image paths become absolute (relative ones are
    taken from the file's folder) and must exist. Raises `SceneError` naming the field."""
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text())
    except OSError as err:
        raise SceneError(path, None, f"cannot read the file ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise SceneError(path, None, f"not YAML: {err}") from None
    if not isinstance(document, dict):
        raise SceneError(path, None, "a scene file is a map (session:, agents:, opening:, ...)")
    try:
        scene = Scene.model_validate(document)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or None
        raise SceneError(path, field, first["msg"].removeprefix("Value error, ")) from None
    return _resolve_paths(scene, path.parent)


def _resolve_paths(scene: Scene, base: Path) -> Scene:
    def resolve(value: Path | None, field: str) -> Path | None:
        if value is None:
            return None
        full = value if value.is_absolute() else (base / value).resolve()
        if not full.is_file():
            raise SceneError(base, field, f"no such image file: {full}")
        return full

    agents = [
        a.model_copy(update={"image": resolve(a.image, f"agents.{i}.image")})
        for i, a in enumerate(scene.agents)
    ]
    layout = scene.layout.model_copy(
        update={
            "background_image": resolve(scene.layout.background_image, "layout.background_image")
        }
    )
    return scene.model_copy(update={"agents": agents, "layout": layout})


def cast_of(scene: Scene) -> tuple[CastMember, ...]:
    sessions, slots = scene.sessions(), scene.slots()
    return tuple(
        CastMember(a.id, a.display_name, sessions[a.id], slots[a.id]) for a in scene.agents
    )


def agent_settings(scene: Scene, agent: SceneAgent, base: AgentSettings) -> AgentSettings:
    """`base` with the agent's voice, reference image, and persona in the system prompt."""
    others = ", ".join(a.display_name for a in scene.agents if a.id != agent.id)
    about = f" about {scene.topic}" if scene.topic else ""
    prompt = " ".join(
        part
        for part in (
            base.system_prompt,
            f"You are {agent.display_name}.",
            agent.persona,
            f"You are in a conversation with {others}{about}; what they say reaches you as the "
            "user's turns. Answer them directly, and say a name when you want that person to "
            "answer.",
        )
        if part
    )
    update: dict[str, Any] = {"voice": agent.voice, "system_prompt": prompt}
    if agent.image is not None:
        update["reference_image"] = agent.image
    return base.model_copy(update=update)


def director_config(scene: Scene) -> DirectorConfig:
    return DirectorConfig(
        session=scene.session,
        opening_to=scene.opening.to,
        opening_text=scene.opening.text,
        topic=scene.topic,
        turns=scene.turns,
        duration_s=scene.duration_s,
        turn_timeout_s=scene.director.turn_timeout_s,
        react_every_s=scene.director.react_every_s,
    )


def compositor_config(scene: Scene, bus: BusSettings) -> CompositorConfig:
    columns, rows = scene.layout.grid(len(scene.agents))
    return CompositorConfig(
        columns=columns,
        rows=rows,
        gap=scene.layout.gap,
        background=scene.layout.rgb,
        tile_size=scene.layout.tile,
        allowance_s=scene.compositor.allowance_ms / 1000,
        start_wait_s=scene.compositor.start_wait_ms / 1000,
        codec=scene.compositor.codec,
        jpeg_quality=scene.compositor.jpeg_quality,
        video_maxlen=bus.video_maxlen,
        events_maxlen=bus.events_maxlen,
    )


# --- playing it --------------------------------------------------------------------------------


async def run_scene(
    scene: Scene,
    bus: Bus,
    *,
    bus_settings: BusSettings | None = None,
    renderer: RendererSettings | None = None,
    agent: AgentSettings | None = None,
    planner: PlannerSettings | None = None,
    out: Path | None = None,
    stop: asyncio.Event | None = None,
    parts: Any = None,
    start_timeout_s: float = 120.0,
) -> SceneResult:
    """Play `scene` on `bus` until its turns or time are up, or `stop` is set.

    The scene's sessions start on fresh streams (whatever they held is deleted). `renderer`
    configures the embedded renderer worker (`parts`: prebuilt `RendererParts` to share);
    `agent` and `planner` are the base settings of every agent; `out` records the composed
    session to an MP4.
    """
    bus_settings = bus_settings or BusSettings(url="memory://")
    stop = stop or asyncio.Event()
    cast = cast_of(scene)
    await _fresh_streams(bus, [scene.session, *(m.session for m in cast)])
    halt = asyncio.Event()  # ends every task of the scene
    tasks = _start_services(scene, bus, bus_settings, renderer, agent, planner, parts, halt)
    compositor = Compositor(
        bus,
        scene.session,
        [Tile(m.id, m.session, m.cell) for m in cast],
        compositor_config(scene, bus_settings),
        background_image=_read(scene.layout.background_image),
    )
    composing = asyncio.create_task(compositor.run(halt), name="compositor")
    recording = None
    if out is not None:
        from flowact.renderer.recorder import record_session  # needs the media extra (av)

        recording = asyncio.create_task(
            record_session(bus, scene.session, out, stop=halt, after="0", progress=False)
        )
    lines: list[SceneLine] = []
    try:
        await _start_sessions(scene, bus, renderer, start_timeout_s, stop)
        director = Director(
            DirectorContext(director_config(scene), cast, SceneOutbox(bus)),
        )
        director.context.rng.seed(scene.director.seed)
        director.post(Begin())
        lines = await serve_director(bus, director, stop=stop)
        if director.finished.is_set():  # the last line played out: let it reach the stream
            target = (compositor.newest or 0) + TAIL_CHUNKS
            await _unless(stop, compositor.composed(target, TAIL_WAIT_S))
    finally:
        for member in cast:
            await publish(bus, member.session, StopControl())
        halt.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        stats = await composing
        recorded = await recording if recording is not None else None
    reports = await _reports(bus, scene.session)
    return SceneResult(scene.session, lines, stats, reports, out, recorded)


def _start_services(
    scene: Scene,
    bus: Bus,
    bus_settings: BusSettings,
    renderer: RendererSettings | None,
    agent: AgentSettings | None,
    planner: PlannerSettings | None,
    parts: Any,
    halt: asyncio.Event,
) -> list[asyncio.Task]:
    tasks = []
    if scene.renderer == "embedded":
        from flowact.renderer.service import RendererService  # torch: only where it renders

        settings = (renderer or RendererSettings()).model_copy(
            update={"capacity": len(scene.agents), "preset": _preset(scene, renderer)}
        )
        service = RendererService(bus, settings, bus_settings, parts)
        tasks.append(asyncio.create_task(service.run(halt), name="renderer"))
    base = agent or AgentSettings()
    for i, (member, spec) in enumerate(zip(cast_of(scene), scene.agents, strict=True)):
        settings = agent_settings(scene, spec, base).model_copy(update={"seed": base.seed + i})
        run = serve_agent(
            bus, member.session, settings, stop=halt, planner=planner,
            block_ms=min(bus_settings.block_ms, 200),
        )  # fmt: skip
        tasks.append(asyncio.create_task(run, name=f"agent-{member.id}"))
    return tasks


def _preset(scene: Scene, renderer: RendererSettings | None) -> str:
    return scene.preset or (renderer or RendererSettings()).preset


async def _start_sessions(
    scene: Scene,
    bus: Bus,
    renderer: RendererSettings | None,
    timeout_s: float,
    stop: asyncio.Event,
) -> None:
    """Request the agents' renderer sessions one at a time, each once the previous one started.

    One at a time, so that a worker slot busy with the first session never holds the request
    for the next in its read batch (it would wait there until reclaimed).
    """
    preset = _preset(scene, renderer)
    seed = (renderer or RendererSettings()).seed
    for i, (agent, session) in enumerate(zip(scene.agents, scene.sessions().values(), strict=True)):
        request = SessionRequest(
            session=session, preset=preset, image=_read(agent.image), seed=seed + i + 1
        )
        await publish(bus, session, request)
        if not await _started(bus, session, timeout_s, stop):
            log.warning("renderer session not started; the scene goes on", session=session)


async def _started(bus: Bus, session: str, timeout_s: float, stop: asyncio.Event) -> bool:
    """Whether `session`'s renderer reported `started` within `timeout_s`."""
    stream, after = stream_name(session, "events"), "0"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not stop.is_set() and loop.time() < deadline:
        for entry in await bus.read(stream, after, block_ms=100):
            after = entry.id
            if _is_start(_decoded(entry.fields, stream)):
                return True
    return False


def _decoded(fields: dict[str, bytes], stream: str) -> object:
    """The message, or None for an entry that is not one (someone typed it by hand)."""
    try:
        return codec.decode(fields, stream)
    except codec.MessageError:
        return None


def _is_start(event: object) -> bool:
    return isinstance(event, StateEvent) and event.actor == "renderer" and event.state == "started"


async def _fresh_streams(bus: Bus, sessions: list[str]) -> None:
    streams = [stream_name(s, kind) for s in sessions for kind in STREAM_KINDS]
    await bus.delete(streams + [dead_letter_stream(s) for s in streams])


async def _reports(bus: Bus, session: str) -> list[str]:
    stream = stream_name(session, "events")
    events = [_decoded(e.fields, stream) for e in await bus.entries(stream)]
    return [e.reason for e in events if isinstance(e, ErrorEvent)]


async def _unless(stop: asyncio.Event, work: Coroutine[Any, Any, Any]) -> None:
    """Run `work` unless or until `stop` is set."""
    task, stopped = asyncio.ensure_future(work), asyncio.ensure_future(stop.wait())
    await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    for pending in (task, stopped):
        pending.cancel()
    await asyncio.gather(task, stopped, return_exceptions=True)


def _read(path: Path | None) -> bytes | None:
    return None if path is None else path.read_bytes()


# --- the command line --------------------------------------------------------------------------


async def scene_main(
    path: Path,
    *,
    out: Path | None = None,
    bus_url: str | None = None,
    config: Path | None = None,
    stop: asyncio.Event | None = None,
) -> SceneResult:
    """`flowact scene FILE [--out OUT.mp4] [--bus URL]`.

    Without `bus_url` the scene runs in this process on the in-process bus and, unless `out` is
    given, records to `out/{session}.mp4`. With a Redis URL the composed session can be watched
    live (`flowact serve viewer -s {session}`) and `out` is optional. Settings sections
    `renderer`, `agent`, `planner` and `bus` of the config file apply to every agent.
    """
    from flowact.bus.registry import open_bus

    scene = load_scene(path)
    if bus_url is None and scene.renderer == "external":
        raise SceneError(path, "renderer", "external renderers need a shared bus (--bus redis://…)")
    if bus_url is None and out is None:
        out = Path("out") / f"{scene.session}.mp4"
    bus_settings = BusSettings.load(config, url=bus_url or f"memory://scene-{scene.session}")
    bus = open_bus(bus_settings.url)
    try:
        return await run_scene(
            scene,
            bus,
            bus_settings=bus_settings,
            renderer=RendererSettings.load(config),
            agent=AgentSettings.load(config),
            planner=PlannerSettings.load(config),
            out=out,
            stop=stop,
        )
    finally:
        await bus.close()


def describe(result: SceneResult) -> str:
    """A few lines for the terminal: what was said, what was composed, what lagged."""
    lines = [f"{line.agent} -> {line.to}: {line.text}" for line in result.lines]
    stats = result.compositor
    lines.append(f"composed {stats.chunks} chunks ({stats.chunks * tb.CHUNK_SECONDS:.1f} s)")
    for name, tile in stats.tiles.items():
        lines.append(
            f"  {name}: {tile.shown} shown, {tile.held} held, {tile.dropped} late and dropped"
        )
    if result.out is not None and result.recording is not None:
        lines.append(f"wrote {result.out} ({result.recording.seconds:.1f} s)")
    lines += [f"report: {reason}" for reason in result.reports]
    return "\n".join(lines)
