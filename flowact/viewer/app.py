"""The live viewer: an ASGI app that plays a session's video, with its audio, in a browser.

- `GET /` is the page (`static/index.html`, plain HTML and JS, no build step); `?session=<sid>`
  picks the session, otherwise the app's default.
- `GET /api/config`: the default session, the behavior buttons and the media clock constants.
- `WS /ws/{session}`: from the moment it connects, every VideoChunk of `flowact:{sid}:video` as
  a binary message (`wire.pack_chunk`) and every event of `flowact:{sid}:events` as JSON text.
- `POST /api/sessions/{session}/transcript` `{"text": ...}`: a user TranscriptEvent on the
  events stream, which is how typed text reaches the agent.
- `POST /api/sessions/{session}/behavior` `{"text", "channel", "duration", "overlap"}`: a
  BehaviorPrompt on the behavior stream.

The page plays on the WebAudio clock: each chunk's PCM is scheduled back to back and frame i of
a chunk is drawn when the audio clock reaches the chunk's start + i / fps (see `viewer.js`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import socket
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import structlog
from pydantic import TypeAdapter, ValidationError

try:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import FileResponse, JSONResponse, Response
    from starlette.routing import Mount, Route, WebSocketRoute
    from starlette.staticfiles import StaticFiles
    from starlette.websockets import WebSocket, WebSocketDisconnect
except ImportError as err:  # pragma: no cover (depends on the environment)
    raise ImportError(
        f"the live viewer needs starlette and uvicorn ({err.name} is missing): "
        "pip install 'flowact[viewer]'"
    ) from err

from flowact.bus.base import Bus
from flowact.bus.typed import publish
from flowact.schemas import codec
from flowact.schemas import timebase as tb
from flowact.schemas.messages import BehaviorPrompt, Message, SessionId, TranscriptEvent
from flowact.schemas.streams import stream_name
from flowact.viewer.wire import event_text, pack_chunk

log = structlog.get_logger(__name__)

STATIC = Path(__file__).parent / "static"
SOURCE = "viewer"
DEFAULT_BEHAVIORS: tuple[BehaviorPrompt, ...] = tuple(
    BehaviorPrompt(text=text, channel=channel, duration=seconds, source=SOURCE)
    for text, channel, seconds in (
        ("waves with the right hand", "gesture", 2.0),
        ("spreads both arms wide", "gesture", 2.0),
        ("nods slowly", "gaze", 1.0),
        ("shakes the head slightly", "gaze", 1.0),
        ("smiles warmly", "face", 2.0),
        ("leans slightly forward, listening", "posture", 3.0),
    )
)
BUTTON_FIELDS = {"text", "channel", "overlap", "duration_frames"}  # what a button posts back
_SESSION = TypeAdapter(SessionId)
RETRY_S = 1.0  # pause after a failed bus read before trying again

Send = Callable[[bytes | str], Awaitable[None]]


def build_app(
    bus: Bus,
    *,
    session: str = "demo",
    behaviors: Sequence[BehaviorPrompt] = DEFAULT_BEHAVIORS,
    jitter_chunks: int = 2,
    block_ms: int = 500,
) -> Starlette:
    """The viewer app over `bus`. `session` is the page's default; `jitter_chunks` how many
    chunks the page holds before it starts playing (and after the stream ran dry)."""
    _SESSION.validate_python(session)
    if jitter_chunks < 1:
        raise ValueError("jitter_chunks must be at least 1")

    async def page(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"cache-control": "no-store"})

    async def config(request: Request) -> Response:
        return JSONResponse(
            {
                "session": session,
                "jitter_chunks": jitter_chunks,
                "behaviors": [b.model_dump(mode="json", include=BUTTON_FIELDS) for b in behaviors],
                "timebase": {
                    "fps": tb.FPS,
                    "frames_per_chunk": tb.FRAMES_PER_CHUNK,
                    "sample_rate": tb.SAMPLE_RATE,
                    "samples_per_chunk": tb.SAMPLES_PER_CHUNK,
                },
            }
        )

    async def transcript(request: Request) -> Response:
        return await _post(
            request,
            lambda body: TranscriptEvent(
                speaker="user", final=True, producer_id=f"{SOURCE}-{secrets.token_hex(6)}:0", **body
            ),
        )

    async def behavior(request: Request) -> Response:
        return await _post(request, lambda body: BehaviorPrompt(source=SOURCE, **body))

    async def _post(request: Request, make: Callable[[dict[str, Any]], Message]) -> Response:
        sid = _session_or_none(request.path_params["session"])
        if sid is None:
            return JSONResponse({"error": "not a session id", "field": "session"}, 400)
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return JSONResponse({"error": "the body is not JSON"}, 400)
        if not isinstance(body, dict):
            return JSONResponse({"error": "the body is not a JSON object"}, 400)
        try:
            message = make(body)
        except (ValidationError, TypeError) as err:
            field, reason = _explain(err)
            return JSONResponse({"error": reason, "field": field}, 422)
        entry_id = await publish(bus, sid, message)
        log.info(
            "viewer published",
            session=sid,
            type=message.type,  # type: ignore[attr-defined]
            id=entry_id,
        )
        return JSONResponse({"id": entry_id, "message": json.loads(event_text(message))})

    async def live(websocket: WebSocket) -> None:
        sid = _session_or_none(websocket.path_params["session"])
        if sid is None:
            await websocket.close(code=1008, reason="not a session id")
            return
        await websocket.accept()
        await _stream_session(bus, websocket, sid, block_ms)

    return Starlette(
        routes=[
            Route("/", page),
            Route("/api/config", config),
            Route("/api/sessions/{session}/transcript", transcript, methods=["POST"]),
            Route("/api/sessions/{session}/behavior", behavior, methods=["POST"]),
            WebSocketRoute("/ws/{session}", live),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ]
    )


async def _stream_session(bus: Bus, websocket: WebSocket, sid: str, block_ms: int) -> None:
    """Pump the session's video and events to one page until it goes away."""
    lock = asyncio.Lock()  # one sender at a time on the socket

    async def send(data: bytes | str) -> None:
        async with lock:
            if isinstance(data, bytes):
                await websocket.send_bytes(data)
            else:
                await websocket.send_text(data)

    await send(json.dumps({"type": "hello", "session": sid}))
    pumps = [
        asyncio.create_task(_pump(bus, stream_name(sid, "video"), send, block_ms, pack_chunk)),
        asyncio.create_task(_pump(bus, stream_name(sid, "events"), send, block_ms, event_text)),
    ]
    log.info("viewer connected", session=sid)
    try:
        while (await websocket.receive())["type"] != "websocket.disconnect":
            pass  # the page sends nothing that matters; commands come over HTTP
    finally:
        for task in pumps:
            task.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
        log.info("viewer disconnected", session=sid)


async def _pump(
    bus: Bus, stream: str, send: Send, block_ms: int, render: Callable[[Any], bytes | str]
) -> None:
    """Forward `stream`'s new entries through `render` to `send`; survive bus outages."""
    after: str | None = None  # from the newest entry when the pump starts
    while True:
        try:
            if after is None:
                after = await bus.last_id(stream)
            entries = await bus.read(stream, after, count=16, block_ms=block_ms)
        except (asyncio.CancelledError, WebSocketDisconnect):
            raise
        except Exception as err:  # noqa: BLE001 (a bus outage must not end the page's stream)
            log.warning("viewer bus read failed; retrying", stream=stream, error=str(err))
            await asyncio.sleep(RETRY_S)
            continue
        for entry in entries:
            after = entry.id
            try:
                message = codec.decode(entry.fields, stream)
            except codec.MessageError as err:
                log.debug(
                    "viewer skipped an invalid entry", stream=stream, id=entry.id, reason=err.reason
                )
                continue
            try:
                await send(render(message))
            except (WebSocketDisconnect, RuntimeError, OSError):
                return  # the page went away; the receive loop ends the connection


def _session_or_none(text: str) -> str | None:
    try:
        return _SESSION.validate_python(text)
    except ValidationError:
        return None


def _explain(err: ValidationError | TypeError) -> tuple[str | None, str]:
    if isinstance(err, TypeError):
        return None, str(err)
    first = err.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or None
    return field, first["msg"]


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the caller owns shutdown through `stop`."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve_app(
    app: Starlette,
    *,
    stop: asyncio.Event,
    host: str = "127.0.0.1",
    port: int = 8000,
    sock: socket.socket | None = None,
) -> None:
    """Serve `app` until `stop` is set. `sock`: an already bound socket (port 0 in tests)."""
    config = uvicorn.Config(
        app, host=host, port=port, log_config=None, lifespan="off", timeout_graceful_shutdown=2
    )
    server = _Server(config)
    serving = asyncio.create_task(server.serve(sockets=[sock] if sock is not None else None))
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
    server.should_exit = True
    stopping.cancel()
    await serving


async def serve_viewer(
    bus_url: str, host: str, port: int, *, stop: asyncio.Event, session: str = "demo"
) -> None:
    """Open the bus at `bus_url` and serve the viewer on `host:port` until `stop` is set."""
    from flowact.bus.registry import open_bus

    bus = open_bus(bus_url)
    log.info("viewer serving", url=f"http://{host}:{port}/?session={session}", bus=bus_url)
    try:
        await serve_app(build_app(bus, session=session), stop=stop, host=host, port=port)
    finally:
        await bus.close()
