"""docs/protocol.md's redis-cli session, run verbatim against the real Redis and a renderer."""

from __future__ import annotations

import asyncio
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from flowact.agents.service import serve_agent
from flowact.bus.redis import RedisStreamsBus
from flowact.renderer.engine import RendererParts
from flowact.renderer.service import RendererService
from flowact.schemas import codec
from flowact.schemas.agent_settings import AgentSettings
from flowact.schemas.messages import ErrorEvent, TranscriptEvent, UtteranceEvent
from flowact.schemas.settings import BusSettings, RendererSettings
from flowact.schemas.streams import SESSIONS_STREAM, stream_name

pytestmark = pytest.mark.redis

DOC = Path(__file__).parents[1] / "docs" / "protocol.md"
SESSION = "demo"  # the session the document's commands name


def doc_commands() -> list[str]:
    text = DOC.read_text()
    block = re.search(r"<!-- redis-cli session: tested -->\n```sh\n(.*?)```", text, re.S)
    assert block, "protocol.md lost its tested redis-cli block"
    return [line for line in block.group(1).splitlines() if line.startswith("redis-cli ")]


async def _clear(url: str) -> None:
    client = aioredis.Redis.from_url(url)
    keys = [k async for k in client.scan_iter(match=f"flowact:{SESSION}:*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


async def test_redis_cli_session_of_the_protocol_doc(redis_url: str, redis_cli: str) -> None:
    assert redis_url.endswith(":6379/0"), "the document's commands talk to the default server"
    await _clear(redis_url)
    bus = RedisStreamsBus(redis_url)
    stop = asyncio.Event()
    settings = RendererSettings(preset="tiny", text_encoder="hash", worker="doc")
    parts = RendererParts.build("tiny", text_encoder="hash")
    renderer = RendererService(bus, settings, BusSettings(url=redis_url, block_ms=100), parts)
    workers = [
        asyncio.create_task(renderer.run(stop)),
        asyncio.create_task(serve_agent(bus, SESSION, AgentSettings(), stop=stop, block_ms=100)),
    ]
    events = stream_name(SESSION, "events")
    # Before some commands, wait for what a person would wait for (watching `flowact tail`).
    waits = {
        "XRANGE": lambda m: isinstance(m, ErrorEvent),
        "interrupt": lambda m: isinstance(m, UtteranceEvent) and m.phase == "started",
        "stop": lambda m: isinstance(m, UtteranceEvent) and m.phase == "interrupted",
    }
    outputs = []
    try:
        for command in doc_commands():
            argv = shlex.split(command)
            for key, check in waits.items():
                if key in argv:
                    await _until(bus, events, check)
            done = subprocess.run([redis_cli, *argv[1:]], capture_output=True, text=True)
            assert done.returncode == 0 and "ERR" not in done.stdout, (command, done.stdout)
            outputs.append(done.stdout)
            if argv[2] == SESSIONS_STREAM:
                await _until(bus, events, lambda m: m.type == "state" and m.state == "started")
        await _until(bus, events, lambda m: m.type == "state" and m.state == "stopped")
        seen = [codec.decode(e.fields, events) for e in await bus.entries(events)]
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*workers), 10)
        await bus.close()
        await _clear(redis_url)

    dead = outputs[5].splitlines()  # redis-cli prints raw lines when not on a terminal
    fields = dict(zip(dead[1::2], dead[2::2], strict=False))
    assert fields["channel"] == "legs" and fields["dead_field"] == "channel"
    assert "posture" in fields["dead_reason"]
    assert any(isinstance(m, TranscriptEvent) and m.speaker == "agent" for m in seen)
    error = next(m for m in seen if isinstance(m, ErrorEvent))
    assert error.field == "channel" and error.stream == stream_name(SESSION, "behavior")


async def _until(bus: RedisStreamsBus, events: str, check) -> None:  # noqa: ANN001
    async with asyncio.timeout(30):
        while True:
            for entry in await bus.entries(events):
                if check(codec.decode(entry.fields, events)):
                    return
            await asyncio.sleep(0.05)
