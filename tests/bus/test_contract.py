"""One contract, two buses: every test runs on `MemoryBus` and on the real Redis at 6379.

Each test uses stream names of its own and deletes its keys afterwards. Times are tiny
(claim_idle_ms in the low hundreds) so that reclaim and dead-lettering happen within a second.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import structlog

from flowact.bus import ConsumerOptions, Entry, MemoryBus, Rejected, dead_letter_stream, open_bus
from flowact.bus.base import Bus
from flowact.bus.consumer import Backoff
from flowact.bus.redis import RedisStreamsBus

REDIS_URL = "redis://127.0.0.1:6379/0"
FAST = {"block_ms": 50, "claim_idle_ms": 200, "reclaim_every_ms": 50}


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def bus(request: pytest.FixtureRequest) -> AsyncIterator[Bus]:
    if request.param == "memory":
        yield MemoryBus()
        return
    url = request.getfixturevalue("redis_url")  # tests/conftest.py: skips or fails without Redis
    redis_bus = RedisStreamsBus(url, backoff=Backoff(0.01, 0.1))
    yield redis_bus
    await redis_bus.close()


@pytest.fixture
async def prefix(bus: Bus) -> AsyncIterator[str]:
    """A unique stream-name prefix; on Redis every key containing it is deleted afterwards."""
    name = f"test:{uuid.uuid4().hex[:12]}"
    yield name
    if isinstance(bus, RedisStreamsBus):
        keys = [k async for k in bus.redis.scan_iter(match=f"*{name}*")]
        if keys:
            await bus.redis.delete(*keys)


async def eventually(check: Callable[[], Awaitable[bool] | bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


class Consumer:
    """A consumer task with its stop event; `stop()` ends it and re-raises its failure."""

    def __init__(self, bus: Bus, streams: list[str], options: ConsumerOptions, handler, **kw):
        self.event = asyncio.Event()
        self.task = asyncio.create_task(
            bus.consume(streams, options, handler, stop=self.event, **kw)
        )

    async def stop(self) -> None:
        self.event.set()
        await asyncio.wait_for(self.task, 5)


def options(name: str = "c1", **kw: int) -> ConsumerOptions:
    return ConsumerOptions(group="g", consumer=name, **{**FAST, **kw})


async def test_publish_then_consume_in_order(bus: Bus, prefix: str) -> None:
    stream = f"{prefix}:audio"
    sent = [
        {"seq": i, "pcm": bytes([i]) * 640, "text": f"é{i}", "gain": 0.5 * i} for i in range(20)
    ]
    ids = [await bus.publish(stream, fields) for fields in sent]
    seen: list[Entry] = []

    async def handler(entry: Entry) -> None:
        seen.append(entry)

    consumer = Consumer(bus, [stream], options(), handler)
    await eventually(lambda: len(seen) == 20)
    await consumer.stop()
    assert [e.id for e in seen] == ids
    assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))
    assert seen[3].fields == {
        "seq": b"3",
        "pcm": b"\x03" * 640,
        "text": "é3".encode(),
        "gain": b"1.5",
    }
    assert {e.deliveries for e in seen} == {1}
    assert await bus.pending(stream, "g") == 0


async def test_ack_only_after_the_handler_returned(bus: Bus, prefix: str) -> None:
    stream = f"{prefix}:control"
    release = asyncio.Event()
    started: list[Entry] = []

    async def handler(entry: Entry) -> None:
        started.append(entry)
        await release.wait()

    consumer = Consumer(bus, [stream], options(), handler)
    await bus.publish(stream, {"type": "start"})
    await eventually(lambda: len(started) == 1)
    assert await bus.pending(stream, "g") == 1  # in the handler: not acknowledged yet
    release.set()
    await eventually(lambda: _pending_is(bus, stream, 0))
    await consumer.stop()


async def _pending_is(bus: Bus, stream: str, count: int) -> bool:
    return await bus.pending(stream, "g") == count


@pytest.mark.parametrize("successor", ["c2", "c1"], ids=["other-consumer", "same-name"])
async def test_killed_consumer_loses_nothing(bus: Bus, prefix: str, successor: str) -> None:
    stream = f"{prefix}:audio"
    started = asyncio.Event()
    handled: list[Entry] = []

    async def stuck(entry: Entry) -> None:
        started.set()
        await asyncio.Event().wait()  # never returns: the process "dies" here

    async def works(entry: Entry) -> None:
        handled.append(entry)

    first = asyncio.create_task(bus.consume([stream], options("c1"), stuck))
    await bus.publish(stream, {"seq": 1, "pcm": b"\x00\x01" * 320})
    await asyncio.wait_for(started.wait(), 5)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await bus.pending(stream, "g") == 1

    second = Consumer(bus, [stream], options(successor), works)
    await eventually(lambda: len(handled) == 1)
    await eventually(lambda: _pending_is(bus, stream, 0))
    await second.stop()
    assert handled[0].fields == {"seq": b"1", "pcm": b"\x00\x01" * 320}
    assert handled[0].deliveries == 2


async def test_poison_entry_is_dead_lettered_after_max_deliveries(bus: Bus, prefix: str) -> None:
    stream = f"{prefix}:behavior"
    payload = bytes(range(256))
    calls: list[Entry] = []
    rejected: list[tuple[Entry, Rejected]] = []
    good: list[Entry] = []

    async def handler(entry: Entry) -> None:
        if entry.fields["kind"] == b"poison":
            calls.append(entry)
            raise RuntimeError("handler bug")
        good.append(entry)

    async def on_reject(entry: Entry, error: Rejected) -> None:
        rejected.append((entry, error))

    poison_id = await bus.publish(stream, {"kind": "poison", "blob": payload})
    await bus.publish(stream, {"kind": "good"})
    consumer = Consumer(bus, [stream], options(max_deliveries=3), handler, on_reject=on_reject)
    await eventually(lambda: len(rejected) == 1)
    await consumer.stop()

    assert [c.deliveries for c in calls] == [1, 2, 3]
    assert len(good) == 1  # the consumer went on past the failing entry
    (dead,) = await bus.entries(dead_letter_stream(stream))
    assert dead.fields["kind"] == b"poison"
    assert dead.fields["blob"] == payload
    assert dead.fields["dead_stream"] == stream.encode()
    assert dead.fields["dead_id"] == poison_id.encode()
    assert dead.fields["dead_reason"] == b"delivery limit"
    assert dead.fields["dead_deliveries"] == b"3"
    assert b"handler bug" in dead.fields["dead_error"]
    assert rejected[0][1].reason == "delivery limit"
    assert await bus.pending(stream, "g") == 0


async def test_entry_past_the_delivery_limit_is_not_handled_again(bus: Bus, prefix: str) -> None:
    """Consumers that die mid-handler also count: a claim past the limit dead-letters."""
    stream = f"{prefix}:video"
    await bus.publish(stream, {"frames": b"x" * 1000})
    for attempt in range(2):
        started = asyncio.Event()

        async def stuck(entry: Entry, started: asyncio.Event = started) -> None:
            started.set()
            await asyncio.Event().wait()

        task = asyncio.create_task(bus.consume([stream], options(f"d{attempt}"), stuck))
        await asyncio.wait_for(started.wait(), 5)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    handled: list[Entry] = []
    rejected: list[Rejected] = []

    async def on_reject(entry: Entry, error: Rejected) -> None:
        rejected.append(error)

    async def handler(entry: Entry) -> None:
        handled.append(entry)

    opts = options("d9", max_deliveries=2)
    consumer = Consumer(bus, [stream], opts, handler, on_reject=on_reject)
    await eventually(lambda: len(rejected) == 1)
    await consumer.stop()
    assert handled == []
    (dead,) = await bus.entries(dead_letter_stream(stream))
    assert dead.fields["dead_deliveries"] == b"3"
    assert dead.fields["frames"] == b"x" * 1000


async def test_rejected_entry_is_dead_lettered_once_and_the_next_goes_on(
    bus: Bus, prefix: str
) -> None:
    stream = f"{prefix}:behavior"
    calls: list[bytes] = []
    rejected: list[tuple[Entry, Rejected]] = []

    async def handler(entry: Entry) -> None:
        calls.append(entry.fields["duration"])
        if entry.fields["duration"].startswith(b"-"):
            raise Rejected("must be positive", field="duration")

    async def on_reject(entry: Entry, error: Rejected) -> None:
        rejected.append((entry, error))

    bad_id = await bus.publish(stream, {"text": "waves", "duration": "-2"})
    await bus.publish(stream, {"text": "nods", "duration": "1"})
    consumer = Consumer(bus, [stream], options(), handler, on_reject=on_reject)
    await eventually(lambda: len(calls) == 2 and len(rejected) == 1)
    await asyncio.sleep(0.4)  # two claim_idle_ms: a retry would show up by now
    await consumer.stop()

    assert calls == [b"-2", b"1"]
    entry, error = rejected[0]
    assert (entry.id, error.field, error.reason) == (bad_id, "duration", "must be positive")
    (dead,) = await bus.entries(dead_letter_stream(stream))
    assert dead.fields["text"] == b"waves"
    assert dead.fields["dead_field"] == b"duration"
    assert dead.fields["dead_reason"] == b"must be positive"
    assert dead.fields["dead_deliveries"] == b"1"
    assert await bus.pending(stream, "g") == 0


async def test_failed_handler_is_retried_and_then_acknowledged(bus: Bus, prefix: str) -> None:
    stream = f"{prefix}:control"
    deliveries: list[int] = []

    async def flaky(entry: Entry) -> None:
        deliveries.append(entry.deliveries)
        if len(deliveries) == 1:
            raise ConnectionResetError("downstream hiccup")

    await bus.publish(stream, {"type": "interrupt"})
    consumer = Consumer(bus, [stream], options(), flaky)
    await eventually(lambda: len(deliveries) == 2)
    await eventually(lambda: _pending_is(bus, stream, 0))
    await consumer.stop()
    assert deliveries == [1, 2]
    assert await bus.length(dead_letter_stream(stream)) == 0


async def test_long_handler_keeps_its_claim(bus: Bus, prefix: str) -> None:
    stream = f"{prefix}:video"
    calls: list[tuple[str, Entry]] = []
    done = asyncio.Event()

    def handler_of(name: str):
        async def handler(entry: Entry) -> None:
            calls.append((name, entry))
            await asyncio.sleep(0.8)  # four times claim_idle_ms
            done.set()

        return handler

    await bus.publish(stream, {"index": 0})
    first = Consumer(bus, [stream], options("c1"), handler_of("c1"))
    await eventually(lambda: len(calls) == 1)
    second = Consumer(bus, [stream], options("c2"), handler_of("c2"))
    await asyncio.wait_for(done.wait(), 5)
    await eventually(lambda: _pending_is(bus, stream, 0))
    await asyncio.gather(first.stop(), second.stop())
    assert [(name, e.deliveries) for name, e in calls] == [("c1", 1)]


async def test_retried_publish_with_dedupe_key_is_stored_once(bus: Bus, prefix: str) -> None:
    audio, behavior = f"{prefix}:audio", f"{prefix}:behavior"
    first = await bus.publish(audio, {"seq": 7, "pcm": b"\x01\x02"}, dedupe="s1:7")
    again = await bus.publish(audio, {"seq": 7, "pcm": b"\x01\x02"}, dedupe="s1:7")
    other = await bus.publish(audio, {"seq": 8, "pcm": b"\x03\x04"}, dedupe="s1:8")
    elsewhere = await bus.publish(behavior, {"seq": 7, "text": "nod"}, dedupe="s1:7")
    assert again == first
    assert other != first
    assert [e.id for e in await bus.entries(audio)] == [first, other]
    assert [e.id for e in await bus.entries(behavior)] == [elsewhere]


async def test_maxlen_trims_the_oldest(bus: Bus, prefix: str) -> None:
    stream = f"{prefix}:video"
    ids = [await bus.publish(stream, {"index": i}, maxlen=10) for i in range(300)]
    length = await bus.length(stream)
    # Approximate trimming: Redis drops whole internal nodes (100 small entries each).
    assert 10 <= length <= 110
    kept = await bus.entries(stream)
    assert [e.id for e in kept] == ids[-length:]


async def test_maxlen_of_large_entries_is_close_to_exact(bus: Bus, prefix: str) -> None:
    stream = f"{prefix}:video"
    for i in range(12):
        await bus.publish(stream, {"index": i, "frames": b"j" * 20_000}, maxlen=4)
    assert 4 <= await bus.length(stream) <= 5


async def test_entries_published_before_the_group_existed_are_consumed(
    bus: Bus, prefix: str
) -> None:
    audio, control = f"{prefix}:audio", f"{prefix}:control"
    early = [await bus.publish(audio, {"seq": i}) for i in range(3)]
    early.append(await bus.publish(control, {"type": "start"}))
    seen: list[str] = []

    async def handler(entry: Entry) -> None:
        seen.append(entry.id)

    consumer = Consumer(bus, [audio, control], options(), handler)
    await eventually(lambda: len(seen) == 4)
    late = await bus.publish(control, {"type": "stop"})
    await eventually(lambda: len(seen) == 5)
    await consumer.stop()
    assert sorted(seen) == sorted([*early, late])


async def test_read_tails_and_entries_ranges(bus: Bus, prefix: str) -> None:
    stream = f"{prefix}:events"
    old = await bus.publish(stream, {"n": 0})
    assert await bus.read(stream, "$", block_ms=20) == []  # only what comes after the call
    tail = asyncio.create_task(bus.read(stream, "$", block_ms=2000))
    await asyncio.sleep(0.05)
    new = await bus.publish(stream, {"n": 1})
    (got,) = await asyncio.wait_for(tail, 5)
    assert (got.id, got.fields, got.deliveries) == (new, {"n": b"1"}, 0)
    assert [e.id for e in await bus.read(stream, "0", block_ms=0)] == [old, new]
    assert [e.id for e in await bus.entries(stream, f"({old}")] == [new]
    assert [e.id for e in await bus.entries(stream, "-", "+", count=1)] == [old]
    assert await bus.entries(f"{prefix}:missing") == []


async def test_last_id_lets_a_tail_read_in_turns_without_losing_entries(
    bus: Bus, prefix: str
) -> None:
    stream = f"{prefix}:video"
    assert await bus.last_id(stream) == "0-0"  # no stream yet: everything that comes is new
    await bus.publish(stream, {"n": 0})
    newest = await bus.publish(stream, {"n": 1})
    start = await bus.last_id(stream)
    assert start == newest
    assert await bus.read(stream, start, block_ms=10) == []  # one turn of a tail times out
    between = await bus.publish(stream, {"n": 2})  # lands between two of the tail's reads
    assert [e.id for e in await bus.read(stream, start, block_ms=10)] == [between]


async def test_stop_returns_promptly_and_leaves_nothing_pending(bus: Bus, prefix: str) -> None:
    stream = f"{prefix}:audio"

    async def handler(entry: Entry) -> None:
        pass

    consumer = Consumer(bus, [stream], options(block_ms=1000), handler)
    await asyncio.sleep(0.1)
    started = time.monotonic()
    await consumer.stop()
    assert time.monotonic() - started < 0.5
    assert await bus.pending(stream, "g") == 0


async def test_publish_rejects_values_it_cannot_store(bus: Bus, prefix: str) -> None:
    with pytest.raises(TypeError, match="bool"):
        await bus.publish(f"{prefix}:x", {"flag": True})
    with pytest.raises(ValueError):
        await bus.publish(f"{prefix}:x", {})


def test_open_bus_by_url() -> None:
    assert open_bus("memory://t-reg") is open_bus("memory://t-reg")
    assert open_bus("memory://t-reg") is not open_bus("memory://t-other")
    assert isinstance(open_bus("redis://127.0.0.1:6379/0"), RedisStreamsBus)
    assert isinstance(open_bus("unix:///tmp/redis.sock"), RedisStreamsBus)
    with pytest.raises(ValueError, match="kafka"):
        open_bus("kafka://broker:9092")


def test_block_time_must_stay_below_the_socket_timeout() -> None:
    bus = RedisStreamsBus(REDIS_URL, socket_timeout_s=2.0)
    with pytest.raises(ValueError, match="socket"):
        asyncio.run(bus.read("s", block_ms=1500))


@pytest.mark.parametrize("republish_at_once", [False, True])
async def test_consumer_recreates_a_group_that_vanished(
    bus: Bus, prefix: str, republish_at_once: bool
) -> None:
    """A server that restarted empty, or a deleted stream, answers NOGROUP: start over."""
    stream = f"{prefix}:control"
    seen: list[bytes] = []

    async def handler(entry: Entry) -> None:
        seen.append(entry.fields["type"])

    consumer = Consumer(bus, [stream], options(block_ms=200), handler)
    await bus.publish(stream, {"type": "start"})
    await eventually(lambda: seen == [b"start"])
    await asyncio.sleep(0.05)  # the consumer is blocked in its next read
    with structlog.testing.capture_logs() as logs:
        await bus.delete([stream])
        if not republish_at_once:
            await asyncio.sleep(0.3)
        await bus.publish(stream, {"type": "stop"})
        await eventually(lambda: seen == [b"start", b"stop"])
    await consumer.stop()
    if not republish_at_once:
        assert "bus.consumer.group_missing" in {e["event"] for e in logs}


async def test_slow_batch_is_not_handled_twice(bus: Bus, prefix: str) -> None:
    """Entries waiting in a batch behind slow handlers are not handled twice by two consumers."""
    stream = f"{prefix}:audio"
    ids = [await bus.publish(stream, {"seq": i}) for i in range(4)]
    calls: list[tuple[str, str]] = []

    def slow(name: str):
        async def handler(entry: Entry) -> None:
            calls.append((name, entry.id))
            await asyncio.sleep(0.15)  # the batch's last entry waits 0.45 s > claim_idle_ms

        return handler

    first = Consumer(bus, [stream], options("c1"), slow("c1"))
    await eventually(lambda: len(calls) == 1)
    second = Consumer(bus, [stream], options("c2"), slow("c2"))
    await eventually(lambda: _pending_is(bus, stream, 0))
    await asyncio.gather(first.stop(), second.stop())
    assert sorted(entry_id for _, entry_id in calls) == ids
