"""docs/protocol.md's redis-cli session, run verbatim against the real Redis and a renderer."""

from __future__ import annotations

import asyncio
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from flowact.bus.redis import RedisStreamsBus
from flowact.bus.typed import publish
from flowact.renderer.engine import RendererParts
from flowact.renderer.service import RendererService
from flowact.schemas import codec
from flowact.schemas.messages import ErrorEvent, SessionRequest, StopControl
from flowact.schemas.settings import BusSettings, RendererSettings
from flowact.schemas.streams import stream_name

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
    settings = RendererSettings(preset="tiny", text_encoder="hash", pace=1.0, worker="doc")
    parts = RendererParts.build("tiny", text_encoder="hash")
    service = RendererService(bus, settings, BusSettings(url=redis_url, block_ms=100), parts)
    worker = asyncio.create_task(service.run(stop))
    events = stream_name(SESSION, "events")
    try:
        await publish(bus, SESSION, SessionRequest(session=SESSION, preset="tiny"))
        await _until(bus, events, lambda m: m.type == "state" and m.state == "started")
        outputs = []
        for command in doc_commands():
            argv = shlex.split(command)
            if argv[1] == "XREVRANGE":  # wait until the renderer answered the bad entry
                await _until(bus, events, lambda m: isinstance(m, ErrorEvent))
            done = subprocess.run([redis_cli, *argv[1:]], capture_output=True, text=True)
            assert done.returncode == 0 and "ERR" not in done.stdout, (command, done.stdout)
            outputs.append(done.stdout)
        await publish(bus, SESSION, StopControl())
    finally:
        stop.set()
        await asyncio.wait_for(worker, 10)
        await bus.close()
        await _clear(redis_url)

    shown = outputs[-1].splitlines()  # redis-cli prints raw lines when not on a terminal
    fields = dict(zip(shown[1::2], shown[2::2], strict=False))
    assert fields["type"] == "error" and fields["field"] == "channel"
    assert "posture" in fields["reason"] and fields["stream"] == "flowact:demo:behavior"
    prompts = [o.strip() for o in outputs[:2]]
    assert all(re.fullmatch(r"\d+-\d+", p) for p in prompts)  # entry ids of accepted prompts


async def _until(bus: RedisStreamsBus, events: str, check) -> None:  # noqa: ANN001
    async with asyncio.timeout(20):
        while True:
            for entry in await bus.entries(events):
                if check(codec.decode(entry.fields, events)):
                    return
            await asyncio.sleep(0.05)
