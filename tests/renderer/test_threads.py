"""PrimedPool: every thread has run its prime before it takes work; a failed prime is raised."""

from __future__ import annotations

import asyncio
import threading

import pytest

from flowact.renderer.threads import PrimedPool


def test_every_thread_is_primed_once_before_it_takes_work() -> None:
    primed: list[int] = []
    lock = threading.Lock()

    def prime() -> None:
        with lock:
            primed.append(threading.get_ident())

    pool = PrimedPool(4, prime)
    assert len(primed) == 4 and len(set(primed)) == 4  # four threads, one prime each

    async def work() -> list[int]:
        def ident() -> int:
            threading.Event().wait(0.005)  # long enough that several threads take the calls
            return threading.get_ident()

        return await asyncio.gather(*(pool.run(ident) for _ in range(32)))

    try:
        served = asyncio.run(work())
    finally:
        pool.close()
    assert set(served) <= set(primed)
    assert len(set(served)) > 1
    assert len(primed) == 4  # work never primed again


def test_a_failing_prime_is_raised() -> None:
    calls: list[int] = []

    def prime() -> None:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("no GPU memory for the warm-up decode")

    with pytest.raises(RuntimeError, match="warm-up decode"):
        PrimedPool(3, prime)


def test_the_call_runs_in_the_callers_context_and_returns_its_value() -> None:
    pool = PrimedPool(2)

    async def body() -> tuple[int, str]:
        return await pool.run(divmod, 7, 2), await pool.run(str.upper, "ok")

    try:
        assert asyncio.run(body()) == ((3, 1), "OK")
    finally:
        pool.close()


def test_a_pool_needs_a_thread() -> None:
    with pytest.raises(ValueError, match="at least one thread"):
        PrimedPool(0)
