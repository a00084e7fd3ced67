"""`RedisStreamsBus`: the `Bus` on Redis Streams (redis-py asyncio).

One client with a connection pool; a consumer blocked in XREADGROUP holds one connection for up
to `block_ms`, publishers use others. redis-py's own retries are off: every transport failure
surfaces here as `TransportError` and one backoff policy decides what happens next (the consumer
loop retries forever, single calls for `retry_for_s`). A publish without `dedupe` retried after a
timeout may be stored twice; with `dedupe` it is not.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import redis.asyncio as aioredis
import structlog
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from flowact.bus import replies
from flowact.bus.base import (
    ConsumerOptions,
    Entry,
    FieldValue,
    Handler,
    RejectHandler,
    dead_letter_fields,
    dead_letter_stream,
    encode_fields,
)
from flowact.bus.consumer import Backoff, GroupMissing, TransportError, run_consumer

log = structlog.get_logger(__name__)
T = TypeVar("T")

DEDUPE_PREFIX = "flowact:dedupe:"
# Commands whose replies `replies` decodes; redis-py's callbacks would reshape them.
RAW_COMMANDS = (
    "XADD", "XREAD", "XREADGROUP", "XRANGE", "XREVRANGE", "XAUTOCLAIM", "XPENDING", "XLEN", "XACK"
)  # fmt: skip
BLOCK_MARGIN_S = 1.0  # a blocked read must return well before the socket timeout fires

# KEYS: stream, dedupe key. ARGV: ttl ms, maxlen (0: none), field, value, ...
# Check and append in one script so that two racing retries cannot both append.
DEDUPE_XADD = """
local id = redis.call('GET', KEYS[2])
if id then return id end
local cmd = {'XADD', KEYS[1]}
if tonumber(ARGV[2]) > 0 then
  cmd[#cmd + 1] = 'MAXLEN'; cmd[#cmd + 1] = '~'; cmd[#cmd + 1] = ARGV[2]
end
cmd[#cmd + 1] = '*'
for i = 3, #ARGV do cmd[#cmd + 1] = ARGV[i] end
id = redis.call(unpack(cmd))
redis.call('SET', KEYS[2], id, 'PX', ARGV[1])
return id
"""

# KEYS: stream. ARGV: group, consumer, id. Renew only while we still own the entry; a plain
# XCLAIM would take it back from a consumer that already reclaimed it.
RENEW_CLAIM = """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1, ARGV[2])
if #p == 0 then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1
"""


def _raw_reply(response: Any, **_options: Any) -> Any:
    return response


class RedisStreamsBus:
    """The `Bus` on a Redis server (`redis://`, `rediss://` or `unix://` URL).

    `socket_timeout_s` bounds every reply; blocking reads must ask for at least
    `BLOCK_MARGIN_S` less. Dedupe keys live `dedupe_ttl_ms` under `flowact:dedupe:{stream}:{key}`.
    Dead-letter streams are trimmed to about `dead_maxlen` entries. Every running consumer holds
    one connection of the pool (`max_connections`) while it blocks; other calls share the rest.
    """

    def __init__(
        self,
        url: str,
        *,
        socket_timeout_s: float = 5.0,
        connect_timeout_s: float = 2.0,
        dedupe_ttl_ms: int = 600_000,
        dead_maxlen: int | None = 10_000,
        retry_for_s: float = 10.0,
        backoff: Backoff | None = None,
        max_connections: int = 2048,
    ) -> None:
        self.url = url
        self.socket_timeout_s = socket_timeout_s
        self.dedupe_ttl_ms = dedupe_ttl_ms
        self.dead_maxlen = dead_maxlen
        self.retry_for_s = retry_for_s
        self.backoff = backoff or Backoff()
        self.redis = aioredis.Redis.from_url(
            url,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=connect_timeout_s,
            retry=Retry(NoBackoff(), 0),
            protocol=2,
            decode_responses=False,
            max_connections=max_connections,
        )
        for command in RAW_COMMANDS:
            self.redis.set_response_callback(command, _raw_reply)
        self._dedupe_xadd = self.redis.register_script(DEDUPE_XADD)
        self._renew_claim = self.redis.register_script(RENEW_CLAIM)
        self._ops = _RedisGroupOps(self)

    async def publish(
        self,
        stream: str,
        fields: Mapping[str, FieldValue],
        *,
        dedupe: str | None = None,
        maxlen: int | None = None,
    ) -> str:
        flat: list[Any] = []
        for name, value in encode_fields(fields).items():
            flat += (name, value)
        if dedupe is None:
            trim = ["MAXLEN", "~", maxlen] if maxlen else []
            raw = await self.retrying(lambda: self.call("XADD", stream, *trim, "*", *flat))
        else:
            keys = [stream, f"{DEDUPE_PREFIX}{stream}:{dedupe}"]
            args = [self.dedupe_ttl_ms, maxlen or 0, *flat]
            raw = await self.retrying(lambda: self.guard(self._dedupe_xadd(keys, args)))
        return replies.stream_id(raw)

    async def consume(
        self,
        streams: Sequence[str],
        options: ConsumerOptions,
        handler: Handler,
        *,
        on_reject: RejectHandler | None = None,
        stop: asyncio.Event | None = None,
    ) -> None:
        self._check_block(options.block_ms)
        await run_consumer(
            self._ops,
            streams,
            options,
            handler,
            on_reject=on_reject,
            stop=stop,
            backoff=self.backoff,
        )

    async def read(
        self, stream: str, after: str = "$", *, count: int = 100, block_ms: int = 1000
    ) -> list[Entry]:
        self._check_block(block_ms)
        block = ["BLOCK", block_ms] if block_ms > 0 else []
        args = ("XREAD", "COUNT", count, *block, "STREAMS", stream, after)
        raw = await self.retrying(lambda: self.call(*args))
        return replies.read_reply(raw, deliveries=0)

    async def entries(
        self, stream: str, start: str = "-", end: str = "+", count: int | None = None
    ) -> list[Entry]:
        limit = ["COUNT", count] if count is not None else []
        raw = await self.retrying(lambda: self.call("XRANGE", stream, start, end, *limit))
        return replies.entries(stream, raw, deliveries=0)

    async def last_id(self, stream: str) -> str:
        raw = await self.retrying(lambda: self.call("XREVRANGE", stream, "+", "-", "COUNT", 1))
        newest = replies.entries(stream, raw, deliveries=0)
        return newest[0].id if newest else "0-0"

    async def length(self, stream: str) -> int:
        return int(await self.retrying(lambda: self.call("XLEN", stream)))

    async def pending(self, stream: str, group: str) -> int:
        try:
            raw = await self.retrying(lambda: self.call("XPENDING", stream, group))
        except GroupMissing:
            return 0
        return replies.pending_summary_count(raw)

    async def delete(self, streams: Sequence[str]) -> None:
        if streams:
            await self.retrying(lambda: self.call("DEL", *streams))

    async def close(self) -> None:
        await self.redis.aclose()

    # -- plumbing shared with the group operations ------------------------------------------

    async def call(self, *args: Any) -> Any:
        return await self.guard(self.redis.execute_command(*args))

    async def guard(self, pending: Awaitable[T]) -> T:
        """Await a redis-py call with its failures translated into the bus's own errors."""
        try:
            return await pending
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise TransportError(f"{type(exc).__name__}: {exc}") from exc
        except ResponseError as exc:
            # UNBLOCKED: the stream of a blocked XREADGROUP was deleted (or its group destroyed).
            if str(exc).startswith(("NOGROUP", "UNBLOCKED")):
                raise GroupMissing(str(exc)) from exc
            raise

    async def retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run `call`, retrying transport failures with backoff for up to `retry_for_s`."""
        deadline = time.monotonic() + self.retry_for_s
        attempt = 0
        while True:
            try:
                return await call()
            except TransportError as exc:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise
                delay = min(left, self.backoff.delay(attempt))
                attempt += 1
                log.warning("bus.redis.retry", error=str(exc), retry_in_s=round(delay, 3))
                await asyncio.sleep(delay)

    def _check_block(self, block_ms: int) -> None:
        if block_ms / 1000 > self.socket_timeout_s - BLOCK_MARGIN_S:
            raise ValueError(
                f"block_ms={block_ms} needs a socket timeout above {block_ms / 1000 + 1:g} s; "
                f"this bus has socket_timeout_s={self.socket_timeout_s:g}"
            )


class _RedisGroupOps:
    """`GroupOps` for the consumer loop, one Redis command (or script) each."""

    def __init__(self, bus: RedisStreamsBus) -> None:
        self.bus = bus

    async def ensure_group(self, stream: str, group: str) -> None:
        try:
            await self.bus.call("XGROUP", "CREATE", stream, group, "0", "MKSTREAM")
        except ResponseError as exc:
            if not str(exc).startswith("BUSYGROUP"):
                raise

    async def read_group(
        self, streams: Sequence[str], group: str, consumer: str, count: int, block_ms: int
    ) -> list[Entry]:
        raw = await self.bus.call(
            "XREADGROUP", "GROUP", group, consumer, "COUNT", count, "BLOCK", block_ms,
            "STREAMS", *streams, *(">" for _ in streams),
        )  # fmt: skip
        return replies.read_reply(raw, deliveries=1)

    async def autoclaim(
        self, stream: str, group: str, consumer: str, min_idle_ms: int, cursor: str, count: int
    ) -> tuple[str, list[Entry]]:
        raw = await self.bus.call(
            "XAUTOCLAIM", stream, group, consumer, min_idle_ms, cursor, "COUNT", count
        )
        cursor, claimed = replies.autoclaim_reply(stream, raw)
        if not claimed:
            return cursor, []
        # XAUTOCLAIM does not say how often each entry was delivered; XPENDING does.
        pipe = self.bus.redis.pipeline(transaction=False)
        for entry in claimed:
            pipe.execute_command("XPENDING", stream, group, entry.id, entry.id, 1, consumer)
        rows = await self.bus.guard(pipe.execute())
        pending = [replies.pending_reply(r) for r in rows]
        return cursor, replies.with_deliveries(claimed, pending, consumer)

    async def renew(self, entry: Entry, group: str, consumer: str) -> bool:
        keys = [entry.stream]
        owned = await self.bus.guard(self.bus._renew_claim(keys, [group, consumer, entry.id]))
        return bool(owned)

    async def ack(self, entry: Entry, group: str) -> None:
        await self.bus.retrying(lambda: self.bus.call("XACK", entry.stream, group, entry.id))

    async def dead_letter(
        self, entry: Entry, group: str, reason: str, field: str | None, error: str | None
    ) -> None:
        flat: list[Any] = []
        for name, value in dead_letter_fields(entry, reason, field, error).items():
            flat += (name, value)
        trim = ["MAXLEN", "~", self.bus.dead_maxlen] if self.bus.dead_maxlen else []

        async def copy_and_ack() -> None:
            pipe = self.bus.redis.pipeline(transaction=True)
            pipe.execute_command("XADD", dead_letter_stream(entry.stream), *trim, "*", *flat)
            pipe.execute_command("XACK", entry.stream, group, entry.id)
            await self.bus.guard(pipe.execute())

        await self.bus.retrying(copy_and_ack)
