"""Shared fixtures: the real Redis server on loopback for tests whose subject is the bus."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import AsyncIterator

import pytest
import redis
import redis.asyncio as aioredis

REDIS_URL = os.environ.get("FLOWACT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _redis_up() -> bool:
    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The Redis URL; `make test` sets FLOWACT_REQUIRE_REDIS=1 so a missing server fails."""
    if not _redis_up():
        if os.environ.get("FLOWACT_REQUIRE_REDIS") == "1":
            pytest.fail(f"no Redis server at {REDIS_URL}; `make test` starts one")
        pytest.skip(f"no Redis server at {REDIS_URL}")
    return REDIS_URL


@pytest.fixture(scope="session")
def redis_cli(redis_url: str) -> str:
    path = shutil.which("redis-cli")
    if path is None:
        pytest.fail("redis-cli is not installed; `make test` installs Debian's redis-tools")
    return path


@pytest.fixture
async def session_id(redis_url: str) -> AsyncIterator[str]:
    """A fresh session id; its streams are deleted afterwards."""
    sid = f"t{uuid.uuid4().hex[:10]}"
    yield sid
    client = aioredis.Redis.from_url(redis_url)
    keys = [k async for k in client.scan_iter(match=f"flowact:{sid}:*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()
