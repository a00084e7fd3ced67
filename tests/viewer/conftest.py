"""A viewer served by uvicorn on 127.0.0.1 (a free port) over a MemoryBus, in the test's loop."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest

from flowact.bus.memory import MemoryBus
from flowact.viewer.app import build_app, serve_app


@dataclass
class Served:
    bus: MemoryBus
    url: str  # http://127.0.0.1:<port>

    @property
    def ws_url(self) -> str:
        return "ws" + self.url.removeprefix("http")


@pytest.fixture
async def viewer() -> AsyncIterator[Served]:
    async with serve(MemoryBus()) as served:
        yield served


@pytest.fixture
def viewer_over() -> Callable[[MemoryBus], contextlib.AbstractAsyncContextManager[Served]]:
    """`async with viewer_over(bus) as viewer`: a viewer over a bus the test made."""
    return serve


@contextlib.asynccontextmanager
async def serve(bus: MemoryBus) -> AsyncIterator[Served]:
    """The viewer app over `bus`, served until the block ends."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)  # a client that connects before uvicorn runs waits in the backlog
    port = sock.getsockname()[1]
    stop = asyncio.Event()
    server = asyncio.create_task(
        serve_app(build_app(bus, session="s1", block_ms=100), stop=stop, sock=sock)
    )
    try:
        yield Served(bus, f"http://127.0.0.1:{port}")
    finally:
        stop.set()
        await asyncio.wait_for(server, 10)
