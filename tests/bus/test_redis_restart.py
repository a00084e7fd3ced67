"""A consumer rides out a Redis restart that loses every key, and handles what comes next."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest
import structlog

from flowact.bus import ConsumerOptions, Entry
from flowact.bus.consumer import Backoff
from flowact.bus.redis import RedisStreamsBus

pytestmark = [
    pytest.mark.redis,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(port: int) -> subprocess.Popen[bytes]:
    # No persistence: a restart comes back empty, so groups must be recreated (NOGROUP).
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.1):
                return proc
        except OSError:
            time.sleep(0.02)
    proc.kill()
    raise RuntimeError(f"redis-server did not start on port {port}")


def _kill(proc: subprocess.Popen[bytes]) -> None:
    proc.kill()
    proc.wait(5)


@pytest.fixture
def server() -> Iterator[dict[str, object]]:
    port = _free_port()
    state: dict[str, object] = {"port": port, "proc": _start_server(port)}
    yield state
    _kill(state["proc"])  # type: ignore[arg-type]


async def test_consumer_reconnects_after_a_restart_that_lost_the_data(
    server: dict[str, object],
) -> None:
    port = server["port"]
    bus = RedisStreamsBus(
        f"redis://127.0.0.1:{port}/0",
        socket_timeout_s=2.0,
        connect_timeout_s=0.2,
        backoff=Backoff(base_s=0.02, cap_s=0.2),
    )
    stream = "flowact:restart:control"
    handled: list[Entry] = []

    async def handler(entry: Entry) -> None:
        handled.append(entry)

    options = ConsumerOptions(group="g", consumer="c1", block_ms=200, claim_idle_ms=300)
    stop = asyncio.Event()
    with structlog.testing.capture_logs() as logs:
        consumer = asyncio.create_task(bus.consume([stream], options, handler, stop=stop))
        await bus.publish(stream, {"type": "start"})
        await _until(lambda: len(handled) == 1)

        _kill(server["proc"])  # type: ignore[arg-type]
        await asyncio.sleep(0.3)  # the consumer sees the server gone and backs off
        server["proc"] = await asyncio.to_thread(_start_server, port)
        await bus.publish(stream, {"type": "stop"})
        await _until(lambda: len(handled) == 2)

        stop.set()
        await asyncio.wait_for(consumer, 5)
    await bus.close()

    assert [e.fields["type"] for e in handled] == [b"start", b"stop"]
    events = {entry["event"] for entry in logs}
    assert "bus.consumer.transport_error" in events
    assert "bus.consumer.reconnected" in events


async def _until(check, timeout: float = 10.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)
