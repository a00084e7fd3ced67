"""The `flowact` command line: settings in, components wired, nothing else."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Optional

import typer

from flowact.logs import configure_logging
from flowact.options import BusOption, DeviceOption, PresetOption
from flowact.schemas.messages import Channel, Overlap
from flowact.schemas.settings import BusSettings, LogSettings, RendererSettings
from flowact.train_cli import compare, evaluate, train_app

app = typer.Typer(
    help="FlowAct: real-time interactive avatars over a Redis Streams bus.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
bench_app = typer.Typer(help="Benchmarks that print figures.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
serve_app = typer.Typer(help="Run a FlowAct service on a bus.", no_args_is_help=True)
app.add_typer(serve_app, name="serve")
app.add_typer(train_app, name="train")


class Context:
    """What every command needs: the config file and the settings built from it."""

    def __init__(self, config: Path | None) -> None:
        self.config = config

    def bus_settings(self, url: str | None) -> BusSettings:
        return BusSettings.load(self.config, url=url)

    def renderer_settings(self, **overrides: object) -> RendererSettings:
        return RendererSettings.load(self.config, **overrides)


def run_until_signalled(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run `main(stop)` until it returns or SIGINT/SIGTERM sets `stop`."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    asyncio.run(runner())


@app.callback()
def main(
    ctx: typer.Context,
    config: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--config", "-c", envvar="FLOWACT_CONFIG", help="YAML config file."),
    ] = None,
    log_level: Annotated[
        Optional[str], typer.Option(help="debug, info, warning or error.")  # noqa: UP045
    ] = None,
    log_format: Annotated[
        Optional[str], typer.Option(help="console or json.")  # noqa: UP045
    ] = None,
) -> None:
    """FlowAct: real-time interactive avatars."""
    configure_logging(LogSettings.load(config, level=log_level, format=log_format))
    ctx.obj = Context(config)


@app.command()
def inject(
    ctx: typer.Context,
    session: Annotated[str, typer.Argument(help="Session id.")],
    text: Annotated[str, typer.Argument(help='Behavior, e.g. "waves with the right hand".')],
    duration: Annotated[float, typer.Option(help="Seconds the behavior holds.")] = 2.0,
    channel: Annotated[str, typer.Option(help="posture, gesture, face or gaze.")] = "gesture",
    overlap: Annotated[str, typer.Option(help="replace or overlay.")] = "replace",
    start: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option(help="Start in seconds on the session clock (default: as soon as possible)."),
    ] = None,
    bus: BusOption = None,
) -> None:
    """Publish a BehaviorPrompt to a session."""
    from pydantic import ValidationError

    from flowact.schemas.messages import BehaviorPrompt

    try:
        prompt = BehaviorPrompt(
            text=text,
            duration=duration,
            start=start,
            channel=_choice(channel, Channel),
            overlap=_choice(overlap, Overlap),
            source="cli",
        )
    except ValidationError as err:
        raise typer.BadParameter(_first_error(err)) from None
    entry_id = asyncio.run(_publish(ctx.obj.bus_settings(bus), session, prompt))
    typer.echo(entry_id)


@app.command()
def tail(
    ctx: typer.Context,
    session: Annotated[str, typer.Argument(help="Session id.")],
    from_start: Annotated[bool, typer.Option(help="Print the events already there too.")] = False,
    bus: BusOption = None,
) -> None:
    """Print a session's events as they arrive, one JSON object a line (Ctrl-C ends)."""
    try:
        asyncio.run(_tail(ctx.obj.bus_settings(bus), session, "0" if from_start else "$"))
    except KeyboardInterrupt:
        pass


@bench_app.command("bus")
def bench_bus(
    ctx: typer.Context,
    bus: BusOption = None,
    seconds: Annotated[float, typer.Option(help="Seconds per measurement.")] = 3.0,
) -> None:
    """Publish-to-handler latency and concurrent video sessions on a bus."""
    from flowact.bus.bench import format_report, run_bench

    settings = ctx.obj.bus_settings(bus)
    typer.echo(format_report(asyncio.run(run_bench(settings.url, seconds=seconds))))


@serve_app.command("renderer")
def serve_renderer(
    ctx: typer.Context,
    bus: BusOption = None,
    preset: PresetOption = None,
    device: DeviceOption = None,
    weights: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Checkpoint directory, 'shipped' (default) or 'random'."),
    ] = None,
    capacity: Annotated[
        Optional[int], typer.Option(help="Sessions rendered at once.")  # noqa: UP045
    ] = None,
    accel: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="default, baseline, bf16, optimized (one fast session) or sessions."),
    ] = None,
) -> None:
    """Render sessions requested on flowact:sessions until interrupted."""
    from flowact.bus.registry import open_bus
    from flowact.renderer.service import RendererService

    bus_settings = ctx.obj.bus_settings(bus)
    settings = ctx.obj.renderer_settings(
        preset=preset, device=device, weights=weights, capacity=capacity, accel=accel
    )

    async def main(stop: asyncio.Event) -> None:
        connection = open_bus(bus_settings.url)
        try:
            await RendererService(connection, settings, bus_settings).run(stop)
        finally:
            await connection.close()

    run_until_signalled(main)


@serve_app.command("agent")
def serve_agent_command(
    ctx: typer.Context,
    session: Annotated[str, typer.Option("--session", "-s", help="Session id the agent serves.")],
    bus: BusOption = None,
) -> None:
    """Run the conversation agent of one session until interrupted or stopped."""
    from flowact.agents.service import serve_agent
    from flowact.bus.registry import open_bus
    from flowact.schemas.agent_settings import AgentSettings, PlannerSettings

    bus_settings = ctx.obj.bus_settings(bus)
    agent = AgentSettings.load(ctx.obj.config)
    planner = PlannerSettings.load(ctx.obj.config)

    async def main(stop: asyncio.Event) -> None:
        connection = open_bus(bus_settings.url)
        try:
            await serve_agent(
                connection,
                session,
                agent,
                stop=stop,
                planner=planner,
                block_ms=bus_settings.block_ms,
            )
        finally:
            await connection.close()

    run_until_signalled(main)


@serve_app.command("viewer")
def serve_viewer_command(
    ctx: typer.Context,
    session: Annotated[str, typer.Option("--session", "-s", help="Session shown first.")] = "demo",
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    bus: BusOption = None,
) -> None:
    """Serve the live browser viewer: video with audio, agent state, a text box, behaviors."""
    from flowact.viewer import serve_viewer

    url = ctx.obj.bus_settings(bus).url
    typer.echo(f"viewer on http://{host}:{port}/ (session {session})")
    run_until_signalled(lambda stop: serve_viewer(url, host, port, stop=stop, session=session))


@app.command()
def record(
    ctx: typer.Context,
    session: Annotated[str, typer.Argument(help="Session id.")],
    out: Annotated[Path, typer.Argument(help="MP4 file to write.")],
    chunks: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(help="Stop after this many chunks (default: until Ctrl-C)."),
    ] = None,
    from_start: Annotated[
        bool, typer.Option(help="Start from the oldest chunk the stream still holds.")
    ] = False,
    bus: BusOption = None,
) -> None:
    """Record a live session's video and audio to an MP4 (H.264 + AAC)."""
    from flowact.bus.registry import open_bus
    from flowact.renderer.recorder import record_session

    url = ctx.obj.bus_settings(bus).url

    async def main(stop: asyncio.Event) -> None:
        connection = open_bus(url)
        try:
            stats = await record_session(
                connection,
                session,
                out,
                stop=stop,
                max_chunks=chunks,
                after="0" if from_start else "$",
            )
        finally:
            await connection.close()
        typer.echo(f"wrote {out} ({stats.frames} frames, {stats.seconds:.1f} s)")

    run_until_signalled(main)


@app.command()
def say(
    ctx: typer.Context,
    session: Annotated[str, typer.Argument(help="Session id.")],
    text: Annotated[str, typer.Argument(help="What the user says to the agent.")],
    bus: BusOption = None,
) -> None:
    """Say something to a session's agent (as the user); the agent answers through the avatar."""
    from flowact.agents.service import say as say_to_agent
    from flowact.bus.registry import open_bus

    async def main() -> str:
        connection = open_bus(ctx.obj.bus_settings(bus).url)
        try:
            return await say_to_agent(connection, session, text)
        finally:
            await connection.close()

    typer.echo(asyncio.run(main()))


@app.command()
def demo(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--out", "-o", help="MP4 file to write.")] = Path(
        "out/demo.mp4"
    ),
    preset: PresetOption = None,
    device: DeviceOption = None,
    image: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="Reference image (default: the shipped checkpoint's reference)."),
    ] = None,
) -> None:
    """Run the whole system in one process (in-process bus, CPU) and record it to an MP4."""
    from flowact.demo import default_reference, run_demo
    from flowact.schemas.agent_settings import AgentSettings

    renderer = ctx.obj.renderer_settings(preset=preset, device=device)
    agent = AgentSettings.load(ctx.obj.config)
    if image is None:
        image = default_reference(renderer.preset)
    reference = image.read_bytes() if image is not None else None
    result = asyncio.run(run_demo(out, renderer, agent, image=reference))
    stats = result.recording
    typer.echo(f"wrote {result.path} ({stats.frames} frames, {stats.seconds:.1f} s of video)")
    if result.sheet is not None:
        typer.echo(f"wrote {result.sheet} (a frame every 0.24 s)")
    if result.first_chunk_s is not None:
        typer.echo(f"time to first frame: {result.first_chunk_s * 1000:.0f} ms")
    for error in result.errors:
        typer.echo(f"error event: {error}", err=True)


@app.command()
def scene(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="Scene file, e.g. scenes/duo.yaml.")],
    out: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--out", "-o", help="MP4 of the composed session."),
    ] = None,
    bus: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--bus", help="Bus URL (default: in-process, with an embedded renderer)."),
    ] = None,
) -> None:
    """Play a multi-agent scene: a director, one agent and renderer session each, composed."""
    from flowact.agents.scene import SceneError, describe, scene_main

    async def main(stop: asyncio.Event) -> None:
        try:
            result = await scene_main(file, out=out, bus_url=bus, config=ctx.obj.config, stop=stop)
        except SceneError as err:
            raise typer.BadParameter(str(err)) from None
        typer.echo(describe(result))

    run_until_signalled(main)


@bench_app.command("agent")
def bench_agent(
    rounds: Annotated[int, typer.Option(help="Repetitions per measurement.")] = 200,
) -> None:
    """Graph-run time, say-to-first-audio, espeak-ng speed, barge-in delay, planner time."""
    from flowact.agents.bench import format_report, run_agent_bench

    typer.echo(format_report(asyncio.run(run_agent_bench(rounds=rounds))))


@bench_app.command("renderer")
def bench_renderer(
    ctx: typer.Context,
    preset: PresetOption = None,
    device: DeviceOption = None,
    chunks: Annotated[int, typer.Option(help="Chunks to render (0.48 s each).")] = 30,
    sessions: Annotated[int, typer.Option(help="Sweep concurrent sessions up to N.")] = 1,
    compare: Annotated[
        Optional[bool],  # noqa: UP045
        typer.Option(help="Eager baseline beside the optimized path (default: on CUDA)."),
    ] = None,
    micro: Annotated[
        Optional[bool],  # noqa: UP045
        typer.Option(help="Per-stage micro-benchmarks (default: on CUDA)."),
    ] = None,
    accel: Annotated[
        str, typer.Option(help="default, baseline, bf16, optimized or sessions.")
    ] = "default",
    vae: Annotated[
        Optional[str], typer.Option(help="VAE preset (default: the preset's).")  # noqa: UP045
    ] = None,
    pace: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option(help="Speed vs real time for the sessions sweep (0: unpaced)."),
    ] = None,
    workers: Annotated[
        int, typer.Option(help="Renderer processes sharing the device in the sessions sweep.")
    ] = 1,
) -> None:
    """Steady fps, time to first frame and ms per stage; eager vs optimized; sessions per GPU."""
    from flowact.renderer.bench import bench_renderer as run

    settings = ctx.obj.renderer_settings(preset=preset, device=device)
    report = asyncio.run(
        run(
            settings.preset,
            settings.device,
            chunks,
            settings.text_encoder,
            sessions=sessions,
            compare=compare,
            micro=micro,
            accel=accel,
            vae=vae,
            pace=pace,
            workers=workers,
        )
    )
    typer.echo(report)


app.command("eval")(evaluate)
app.command("compare")(compare)


async def _publish(settings: BusSettings, session: str, message) -> str:  # noqa: ANN001
    from flowact.bus.registry import open_bus
    from flowact.bus.typed import publish

    bus = open_bus(settings.url)
    try:
        return await publish(bus, session, message)
    finally:
        await bus.close()


async def _tail(settings: BusSettings, session: str, after: str) -> None:
    from flowact.bus.registry import open_bus
    from flowact.schemas import codec
    from flowact.schemas.streams import stream_name

    bus = open_bus(settings.url)
    stream = stream_name(session, "events")
    try:
        while True:
            for entry in await bus.read(stream, after, block_ms=settings.block_ms):
                after = entry.id
                try:
                    line = codec.decode(entry.fields, stream).model_dump(mode="json")
                except codec.MessageError as err:
                    line = {"type": "invalid", "field": err.field, "reason": err.reason}
                typer.echo(json.dumps({"id": entry.id, **line}))
                sys.stdout.flush()
    finally:
        await bus.close()


def _choice(value: str, literal: object) -> str:
    allowed = getattr(literal, "__args__", ())
    if value not in allowed:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(allowed)}")
    return value


def _first_error(err: Exception) -> str:
    errors = err.errors()  # type: ignore[attr-defined]
    first = errors[0]
    where = ".".join(str(p) for p in first["loc"]) or "input"
    return f"{where}: {first['msg']}"
