"""The message bus: flat field maps over streams, on Redis Streams or in-process.

The public surface: `Bus`, `Entry`, `Rejected`, `ConsumerOptions`, `Handler`, `RejectHandler`,
`dead_letter_stream`, `open_bus`, and the two implementations `MemoryBus` and
`RedisStreamsBus` (imported lazily, so that the in-process bus does not load redis-py).
"""

from typing import TYPE_CHECKING, Any

from flowact.bus.base import (
    Bus,
    ConsumerOptions,
    Entry,
    FieldValue,
    Handler,
    Rejected,
    RejectHandler,
    dead_letter_stream,
)
from flowact.bus.consumer import TransportError
from flowact.bus.memory import MemoryBus
from flowact.bus.registry import open_bus

if TYPE_CHECKING:
    from flowact.bus.redis import RedisStreamsBus

__all__ = [
    "Bus",
    "ConsumerOptions",
    "Entry",
    "FieldValue",
    "Handler",
    "MemoryBus",
    "RedisStreamsBus",
    "RejectHandler",
    "Rejected",
    "TransportError",
    "dead_letter_stream",
    "open_bus",
]


def __getattr__(name: str) -> Any:
    if name == "RedisStreamsBus":
        from flowact.bus.redis import RedisStreamsBus

        return RedisStreamsBus
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
