"""Open a bus by URL: the one place that maps configuration to an implementation.

- `memory://` or `memory://name`: a process-wide `MemoryBus` per name (the one-process default;
  every component that opens the same URL shares the streams).
- `redis://host:port/db`, `rediss://...` (TLS), `unix:///path/to/redis.sock`: `RedisStreamsBus`.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from flowact.bus.base import Bus
from flowact.bus.memory import MemoryBus

REDIS_SCHEMES = ("redis", "rediss", "unix")
_memory_buses: dict[str, MemoryBus] = {}


def open_bus(url: str, **options: Any) -> Bus:
    """The bus behind `url`. `options` go to the implementation's constructor.

    Raises ValueError for a scheme no implementation serves.
    """
    scheme = urlsplit(url).scheme.lower()
    if scheme == "memory":
        name = url.split("://", 1)[1].strip("/") or "default"
        if name not in _memory_buses:
            _memory_buses[name] = MemoryBus(**options)
        return _memory_buses[name]
    if scheme in REDIS_SCHEMES:
        from flowact.bus.redis import RedisStreamsBus  # only loaded where Redis is used

        return RedisStreamsBus(url, **options)
    known = ", ".join(f"{s}://" for s in ("memory", *REDIS_SCHEMES))
    raise ValueError(f"unknown bus URL scheme {scheme or '(none)'!r} in {url!r}; use {known}")


def forget_memory_bus(name: str = "default") -> None:
    """Drop a named in-process bus and its streams (tests, or a process that restarts a run)."""
    _memory_buses.pop(name, None)
